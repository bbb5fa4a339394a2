"""Shared setup of the process tests: flags with short timings, objects, predicates."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from controllers.objects import Obj, new_object
from tests.controllers.harness import History

LEASE, RENEW, RETRY = 2.0, 1.5, 0.4


@dataclass(frozen=True)
class Names:
    """A test's own key prefix and lock namespace on the shared etcd."""

    prefix: str
    lock_namespace: str

    @classmethod
    def fresh(cls) -> Names:
        tag = uuid.uuid4().hex[:10]
        return cls(prefix=f"/t-{tag}/registry", lock_namespace=f"t-{tag}")


def election_flags(names: Names) -> list[str]:
    return [
        "--etcd-prefix",
        names.prefix,
        "--leader-elect-resource-namespace",
        names.lock_namespace,
        "--leader-elect-lease-duration",
        f"{LEASE}s",
        "--leader-elect-renew-deadline",
        f"{RENEW}s",
        "--leader-elect-retry-period",
        f"{RETRY}s",
    ]


def controller_manager_flags(names: Names) -> list[str]:
    return [
        *election_flags(names),
        "--node-monitor-period",
        "0.5s",
        "--node-monitor-grace-period",
        "3s",
        "--pod-eviction-timeout",
        "3s",
        "--resync-period",
        "5s",
    ]


def node_flags(names: Names, node: str, cpu: str = "2", memory: str = "4Gi") -> list[str]:
    return [
        "--etcd-prefix",
        names.prefix,
        "--node-name",
        node,
        "--cpu",
        cpu,
        "--memory",
        memory,
        "--lease-renew-interval",
        "0.5s",
    ]


def replicaset(name: str, replicas: int, namespace: str = "default") -> Obj:
    labels = {"app": name}
    return new_object(
        "replicasets",
        name,
        namespace,
        labels=labels,
        spec={
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "image": "example/app:1",
                            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                        }
                    ]
                },
            },
        },
    )


def running_pods(history: History, namespace: str = "default") -> dict[str, Obj]:
    return {
        key: pod
        for key, pod in history.of("pods").items()
        if key.startswith(f"{namespace}/") and (pod.get("status") or {}).get("phase") == "Running"
    }


def pods_per_node(pods: dict[str, Obj]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for pod in pods.values():
        node = pod["spec"].get("nodeName", "")
        counts[node] = counts.get(node, 0) + 1
    return counts
