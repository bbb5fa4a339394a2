"""The Deployment controller's arithmetic, and the taint-eviction controller's tolerations."""

from __future__ import annotations

import math
from typing import Any

import pytest

from controllers import deploymentutil as du
from controllers.objects import Obj, new_object
from controllers.tainteviction import effective_tolerations, toleration_time


def deployment(replicas: int, surge: int | str = "25%", unavailable: int | str = "25%") -> Obj:
    d = new_object(
        "deployments",
        "web",
        spec={
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": []}},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable},
            },
        },
    )
    return du.with_defaults(d)


def replicaset(name: str, replicas: int, **annotations: str) -> Obj:
    rs = new_object("replicasets", name, spec={"replicas": replicas})
    rs["metadata"]["annotations"] = dict(annotations)
    return rs


@pytest.mark.parametrize(
    ("surge", "unavailable", "desired", "expected"),
    [
        ("25%", "25%", 10, (3, 2)),  # surge rounds up, unavailability down
        ("25%", "25%", 6, (2, 1)),
        ("25%", "25%", 1, (1, 0)),
        (3, 2, 10, (3, 2)),
        ("0%", "1%", 2, (0, 1)),  # both round to zero: one may be unavailable
        ("1%", "25%", 2, (1, 0)),
        (0, "100%", 5, (0, 5)),
    ],
)
def test_resolve_fenceposts(
    surge: int | str, unavailable: int | str, desired: int, expected: tuple[int, int]
) -> None:
    assert du.resolve_fenceposts(surge, unavailable, desired) == expected


def test_defaults_and_validation() -> None:
    d = du.with_defaults(new_object("deployments", "web", spec={"selector": {}}))
    assert d["spec"]["replicas"] == 1
    assert d["spec"]["revisionHistoryLimit"] == 10
    assert d["spec"]["progressDeadlineSeconds"] == 600
    assert d["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"},
    }
    assert du.validate(d) == ["spec.selector: Required value"]
    assert du.validate(deployment(3)) == []
    assert du.validate(deployment(3, 0, 0)) == [
        "spec.strategy.rollingUpdate.maxUnavailable: may not be 0 when maxSurge is 0"
    ]
    assert "invalid value '25'" in du.validate(deployment(3, "25"))[0]
    wrong = deployment(3)
    wrong["spec"]["template"]["metadata"]["labels"] = {"app": "db"}
    assert "`selector` does not match" in du.validate(wrong)[0]
    with pytest.raises(ValueError):
        du.scaled_value("abc%", 10, round_up=True)


def test_max_surge_and_unavailable() -> None:
    assert (du.max_surge(deployment(6)), du.max_unavailable(deployment(6))) == (2, 1)
    assert du.max_unavailable(deployment(0)) == 0
    assert du.max_unavailable(deployment(2, 0, 5)) == 2  # never more than replicas
    recreate = deployment(4)
    recreate["spec"]["strategy"] = {"type": "Recreate"}
    assert (du.max_surge(recreate), du.max_unavailable(recreate)) == (0, 0)


def test_new_replica_set_replicas() -> None:
    d = deployment(10, 3, 2)
    old, new = replicaset("old", 10), replicaset("new", 0)
    assert du.new_rs_replicas(d, [old, new], new) == 3  # up to replicas + maxSurge
    old, new = replicaset("old", 8), replicaset("new", 5)
    assert du.new_rs_replicas(d, [old, new], new) == 5  # 13 pods already
    old, new = replicaset("old", 0), replicaset("new", 9)
    assert du.new_rs_replicas(d, [old, new], new) == 10  # never past replicas


def test_pod_template_hash() -> None:
    # FNV-1a test vectors, and the safe alphabet ("1" -> "5", "2" -> "6", "3" -> "7").
    assert du.fnv32a(b"") == 0x811C9DC5
    assert du.fnv32a(b"a") == 0xE40C292C
    assert du.fnv32a(b"foobar") == 0xBF9CF968
    assert du.safe_encode("123") == "567"
    template = deployment(3)["spec"]["template"]
    first = du.compute_hash(template, None)
    assert first == du.compute_hash(dict(reversed(list(template.items()))), None)
    assert set(first) <= set("bcdfghjklmnpqrstvwxz2456789")
    assert du.compute_hash(template, 1) not in (first, du.compute_hash(template, 2))
    other = {**template, "spec": {"containers": [{"name": "c", "image": "example/app:2"}]}}
    assert du.compute_hash(other, None) != first


def test_templates_compare_without_the_hash_label() -> None:
    template = deployment(3)["spec"]["template"]
    hashed = {
        "metadata": {"labels": {"app": "web", "pod-template-hash": "abc"}},
        "spec": template["spec"],
    }
    assert du.equal_ignore_hash(template, hashed)
    assert not du.equal_ignore_hash(template, {**hashed, "spec": {"containers": [{"name": "x"}]}})


def test_revision_annotations() -> None:
    d = deployment(3)
    d["metadata"]["annotations"] = {"team": "web", du.REVISION: "9"}
    rs = replicaset("web-abc", 0)
    assert du.set_new_rs_annotations(d, rs, 1, exists=False)
    annotations = rs["metadata"]["annotations"]
    assert annotations == {
        "team": "web",  # copied; the Deployment's own revision is not
        du.REVISION: "1",
        du.DESIRED_REPLICAS: "3",
        du.MAX_REPLICAS: "4",
    }
    assert not du.set_new_rs_annotations(d, rs, 1, exists=True)
    # A rollback reuses this ReplicaSet with a higher revision: the old one goes to history.
    assert du.set_new_rs_annotations(d, rs, 3, exists=True)
    assert (annotations[du.REVISION], annotations[du.REVISION_HISTORY]) == ("3", "1")
    du.set_new_rs_annotations(d, rs, 5, exists=True)
    assert annotations[du.REVISION_HISTORY] == "1,3"
    revisions = [replicaset(f"r{i}", 0, **{du.REVISION: str(i)}) for i in (1, 4, 2)]
    assert (du.max_revision(revisions), du.last_revision(revisions)) == (4, 2)


def test_proportional_scale_shares() -> None:
    # A rollout in progress (annotated for 10 replicas + 3 surge) scaled to 15 (+4 surge).
    d = deployment(15, "25%", "25%")
    old = replicaset("old", 8, **{du.MAX_REPLICAS: "13"})
    new = replicaset("new", 5, **{du.MAX_REPLICAS: "13"})
    to_add = 15 + 4 - 13
    first = du.proportion(old, d, to_add, 0)
    second = du.proportion(new, d, to_add, first)
    assert (first, second) == (4, 2)  # 8 * 19 / 13 = 11.7 -> 12; 5 * 19 / 13 = 7.3 -> 7
    assert du.proportion(old, deployment(0), -8, 0) == -8


def test_status_and_conditions() -> None:
    d = deployment(6)
    d["metadata"]["generation"] = 4
    old = replicaset("old", 2)
    old["status"] = {"replicas": 3, "readyReplicas": 3, "availableReplicas": 3}
    new = replicaset("new", 4)
    new["status"] = {"replicas": 4, "readyReplicas": 3, "availableReplicas": 2}
    status = du.calculate_status([old, new], new, d)
    assert {k: v for k, v in status.items() if k != "conditions"} == {
        "observedGeneration": 4,
        "replicas": 7,
        "updatedReplicas": 4,
        "readyReplicas": 6,
        "availableReplicas": 5,
        "unavailableReplicas": 1,
    }
    available = du.condition_of(status, "Available")
    assert available is not None and available["reason"] == "MinimumReplicasAvailable"
    assert not du.complete(d, status)
    assert du.progressing(d, status)  # from an empty status
    new["status"]["availableReplicas"] = 0
    old["status"]["availableReplicas"] = 1
    unavailable = du.condition_of(du.calculate_status([old, new], new, d), "Available")
    assert unavailable is not None and unavailable["status"] == "False"


def test_set_condition_keeps_times_as_kubernetes() -> None:
    status: dict[str, Any] = {}
    first = du.new_condition("Progressing", "True", du.NEW_RS_CREATED, "created")
    first["lastTransitionTime"] = first["lastUpdateTime"] = "t0"
    du.set_condition(status, first)
    du.set_condition(status, du.new_condition("Progressing", "True", du.NEW_RS_CREATED, "again"))
    assert status["conditions"][0]["message"] == "created"  # same status and reason: kept
    du.set_condition(status, du.new_condition("Progressing", "True", du.RS_UPDATED, "moving"))
    cond = status["conditions"][0]
    assert (cond["reason"], cond["lastTransitionTime"]) == (du.RS_UPDATED, "t0")
    du.set_condition(status, du.new_condition("Progressing", "False", du.TIMED_OUT, "late"))
    assert status["conditions"][0]["lastTransitionTime"] != "t0"


UNREACHABLE = {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}
DRAIN = {"key": "drain", "value": "now", "effect": "NoExecute"}


@pytest.mark.parametrize(
    ("tolerations", "taints", "expected"),
    [
        ([], [DRAIN], None),  # not tolerated: evicted at once
        ([{"key": "drain", "operator": "Exists"}], [DRAIN], math.inf),
        ([{"key": "drain", "operator": "Exists", "tolerationSeconds": 30}], [DRAIN], 30),
        ([{"key": "drain", "operator": "Exists", "tolerationSeconds": -5}], [DRAIN], 0),
        ([], [UNREACHABLE], 300),  # the default toleration, as admission adds it
        ([{"operator": "Exists"}], [UNREACHABLE], math.inf),  # tolerates everything, forever
        (
            [
                {
                    "key": "node.kubernetes.io/unreachable",
                    "operator": "Exists",
                    "tolerationSeconds": 5,
                }
            ],
            [UNREACHABLE, DRAIN],
            None,
        ),
        (
            [
                {
                    "key": "node.kubernetes.io/unreachable",
                    "operator": "Exists",
                    "tolerationSeconds": 50,
                },
                {"key": "drain", "value": "now", "tolerationSeconds": 20},
            ],
            [UNREACHABLE, DRAIN],
            20,
        ),
    ],
)
def test_toleration_time(
    tolerations: list[dict[str, Any]], taints: list[dict[str, str]], expected: float | None
) -> None:
    pod = new_object("pods", "p", spec={"tolerations": tolerations})
    assert toleration_time(effective_tolerations(pod, 300.0), taints) == expected


def test_progress_deadline_by_our_own_clock() -> None:
    d = deployment(2)
    d["spec"]["progressDeadlineSeconds"] = 30
    new = replicaset("new", 2)
    new["status"] = {"replicas": 2, "readyReplicas": 0, "availableReplicas": 0}
    created = du.new_condition("Progressing", "True", du.NEW_RS_CREATED, "created")
    d["status"] = {"replicas": 2, "updatedReplicas": 2, "conditions": [created]}
    # Nothing moved since t=100: at 110 look again when the deadline passes, at 131 time out.
    stuck = du.rollout_status(d, [new], new, 110.0, 100.0)
    assert stuck.last_progress == 100.0
    assert stuck.check_again_in == pytest.approx(20.1)
    late = du.rollout_status(d, [new], new, 131.0, 100.0)
    cond = du.condition_of(late.status, "Progressing")
    assert cond is not None and (cond["status"], cond["reason"]) == ("False", du.TIMED_OUT)
    # A pod became ready: progress, seen now.
    new["status"]["readyReplicas"] = 1
    moving = du.rollout_status(d, [new], new, 131.0, 100.0)
    assert moving.last_progress == 131.0
    assert (du.condition_of(moving.status, "Progressing") or {})["reason"] == du.RS_UPDATED
    # Every replica updated and available: done.
    new["status"].update(readyReplicas=2, availableReplicas=2)
    done = du.rollout_status(d, [new], new, 140.0, 131.0)
    assert done.last_progress is None
    assert (du.condition_of(done.status, "Progressing") or {})["message"] == (
        'ReplicaSet "new" has successfully progressed.'
    )
    d["spec"]["progressDeadlineSeconds"] = du.NO_DEADLINE
    assert du.condition_of(du.rollout_status(d, [new], new, 1.0, 0.0).status, "Progressing") is None
