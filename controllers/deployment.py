"""The Deployment controller: ReplicaSets by pod template, rolling updates, rollbacks.

As Kubernetes' (pkg/controller/deployment), level-driven over informers, for
``apps/v1`` Deployments:

- it owns ReplicaSets named ``<deployment>-<pod-template-hash>``, the hash
  also added to their selector and pod labels (adopting orphans its
  selector matches, releasing those it no longer matches);
- the ReplicaSet whose template is the Deployment's is the *new* one; a
  changed template makes a new one, with the next revision
  (``deployment.kubernetes.io/revision``), and rolls pods over to it:
  ``RollingUpdate`` keeps at most ``replicas + maxSurge`` pods and at least
  ``replicas - maxUnavailable`` available ones (both 25 % by default),
  ``Recreate`` scales the old ones to zero and waits for their pods to go;
- a change of ``replicas`` alone is a scale, shared out in proportion among
  the ReplicaSets that have pods; ``paused`` stops rollouts but not scales;
- a rollback (the ``deprecated.deployment.rollback.to`` annotation, 0 for the
  previous revision) puts that revision's template back: its ReplicaSet
  becomes the new one again and gets the next revision number;
- old ReplicaSets past ``revisionHistoryLimit`` are deleted once empty;
- ``status``: replicas, updated, ready, available and unavailable counts, the
  Available condition and the Progressing one (ProgressDeadlineExceeded
  after ``progressDeadlineSeconds`` without progress, timed by this
  controller's own clock).

Two guards beyond Kubernetes', because availability decides what may be
deleted: it acts only on a cache that holds its own latest writes, and it
scales old ReplicaSets down only while every ReplicaSet's status is current
(``observedGeneration``); otherwise it waits for the events that bring both.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import anyio

from controllers import deploymentutil as du
from controllers.events import emit
from controllers.informer import Handlers, Informers, wait_synced
from controllers.objects import (
    Obj,
    annotations_of,
    bump_generation,
    controller_ref,
    labels_of,
    meta,
    name_of,
    namespace_of,
    new_object,
    object_key,
    owner_reference,
    pod_is_active,
    resource_version,
    selector_matches,
    uid_of,
    with_spec_change,
)
from controllers.ownwrites import OwnWrites
from controllers.runtime import Retry, run_workers
from controllers.store import ConflictError, Store, Writer
from controllers.workqueue import ExponentialBackoff, WorkQueue


class DeploymentController:
    def __init__(
        self, store: Store, writer: Writer, informers: Informers, *, workers: int = 5
    ) -> None:
        self.store = store
        self.writer = writer
        self.workers = workers
        self.deployments = informers.get("deployments")
        self.replicasets = informers.get("replicasets")
        self.pods = informers.get("pods")
        self.queue: WorkQueue[str] = WorkQueue(ExponentialBackoff(0.005, 10.0))
        self.own_deployments = OwnWrites(self.deployments)
        self.own_replicasets = OwnWrites(self.replicasets)
        self.progress_seen: dict[str, float] = {}  # deployment -> last progress (monotonic)
        self.invalid: dict[str, str] = {}  # deployment -> why, reported once per spec
        self.deployments.add_handlers(
            Handlers(
                on_add=self._deployment_changed,
                on_update=lambda old, new: self._deployment_changed(new),
                on_delete=self._deployment_deleted,
            )
        )
        self.replicasets.add_handlers(
            Handlers(
                on_add=lambda rs: self._rs_changed(None, rs),
                on_update=self._rs_changed,
                on_delete=self._rs_deleted,
            )
        )
        self.pods.add_handlers(Handlers(on_delete=self._pod_deleted))

    # ---- event handlers ----

    def _deployment_changed(self, d: Obj) -> None:
        self.queue.add(object_key(d))

    def _deployment_deleted(self, d: Obj) -> None:
        key = object_key(d)
        self.progress_seen.pop(key, None)
        self.invalid.pop(key, None)

    def _owner(self, rs: Obj) -> str | None:
        ref = controller_ref(rs)
        if ref is None or ref.get("kind") != "Deployment":
            return None
        key = f"{namespace_of(rs)}/{ref['name']}"
        d = self.deployments.get(key)
        return key if d is not None and uid_of(d) == ref.get("uid") else None

    def _enqueue_for(self, rs: Obj) -> None:
        owner = self._owner(rs)
        if owner is not None:
            self.queue.add(owner)
        elif controller_ref(rs) is None:  # an orphan: a Deployment may adopt it
            for d in self.deployments.list():
                if namespace_of(d) == namespace_of(rs) and selector_matches(
                    d["spec"].get("selector"), labels_of(rs)
                ):
                    self.queue.add(object_key(d))

    def _rs_changed(self, old: Obj | None, rs: Obj) -> None:
        if old is not None and (controller_ref(old) or {}).get("uid") != (
            controller_ref(rs) or {}
        ).get("uid"):
            self._enqueue_for(old)
        self._enqueue_for(rs)

    def _rs_deleted(self, rs: Obj) -> None:
        self._enqueue_for(rs)

    def _pod_deleted(self, pod: Obj) -> None:
        """Recreate waits for the old pods to be gone."""
        ref = controller_ref(pod)
        if ref is None or ref.get("kind") != "ReplicaSet":
            return
        rs = self.replicasets.get(f"{namespace_of(pod)}/{ref['name']}")
        owner = self._owner(rs) if rs is not None else None
        d = self.deployments.get(owner) if owner is not None else None
        if d is not None and (d["spec"].get("strategy") or {}).get("type") == du.RECREATE:
            self.queue.add(object_key(d))

    # ---- writes ----

    async def _update_rs(self, rs: Obj) -> Obj:
        written = await self.store.update(self.writer, "replicasets", rs)
        self.own_replicasets.wrote(written)
        return written

    async def _update_deployment(self, d: Obj) -> Obj:
        written = await self.store.update(self.writer, "deployments", d)
        self.own_deployments.wrote(written)
        return written

    async def _scale(self, d: Obj, rs: Obj, replicas: int) -> tuple[bool, Obj]:
        """Set a ReplicaSet's replicas (and the desired/max annotations)."""
        most = du.replicas_of(d) + du.max_surge(d)
        resize = du.replicas_of(rs) != replicas
        if not resize and not du.replicas_annotations_need_update(rs, du.replicas_of(d), most):
            return False, rs
        before = du.replicas_of(rs)

        def change(copy_: Obj) -> None:
            copy_["spec"]["replicas"] = replicas
            du.set_replicas_annotations(copy_, du.replicas_of(d), most)

        updated = await self._update_rs(with_spec_change(rs, change))
        if resize:
            emit(
                "replicaset_scaled",
                deployment=object_key(d),
                replicaset=name_of(rs),
                replicas=replicas,
                was=before,
                revision=resource_version(updated),
            )
        return resize, updated

    # ---- sync ----

    async def run(self) -> None:
        await wait_synced(self.deployments, self.replicasets, self.pods)
        emit("controller_synced", controller="deployment")
        await run_workers("deployment", self.queue, self.sync, self.workers)

    async def sync(self, key: str) -> None:
        raw = self.deployments.get(key)
        if raw is None:
            return
        if self.own_deployments.pending(key) or self.own_replicasets.any_pending(namespace_of(raw)):
            return  # the informer event that brings our write requeues this
        d = du.with_defaults(raw)
        errors = du.validate(d)
        if errors:
            if self.invalid.get(key) != str(errors):
                self.invalid[key] = str(errors)
                emit("deployment_invalid", deployment=key, errors=errors)
            return
        self.invalid.pop(key, None)
        rs_list = await self._claim(d)
        if d["metadata"].get("deletionTimestamp"):
            await self._sync_status(d, rs_list)
            return
        d = await self._check_paused(d)
        if d["spec"].get("paused"):
            await self._scale_and_status(d, rs_list)
        elif self._rollback_to(d) is not None:
            await self._rollback(d, rs_list)
        elif self._scaling_event(d, rs_list):
            await self._scale_and_status(d, rs_list)
        elif d["spec"]["strategy"]["type"] == du.RECREATE:
            await self._rollout_recreate(d, rs_list)
        else:
            await self._rollout_rolling(d, rs_list)

    async def _claim(self, d: Obj) -> list[Obj]:
        """The ReplicaSets this Deployment controls, adopting and releasing by selector."""
        selector, uid, namespace = d["spec"]["selector"], uid_of(d), namespace_of(d)
        owned = []
        for rs in self.replicasets.list():
            if namespace_of(rs) != namespace:
                continue
            ref = controller_ref(rs)
            matches = selector_matches(selector, labels_of(rs))
            if ref is not None and ref.get("uid") == uid:
                if matches or d["metadata"].get("deletionTimestamp"):
                    owned.append(rs)
                    continue
                released = copy.deepcopy(rs)
                meta(released)["ownerReferences"] = [
                    r for r in meta(rs).get("ownerReferences") or [] if not r.get("controller")
                ]
                await self._update_rs(released)
                emit("replicaset_released", deployment=object_key(d), replicaset=name_of(rs))
            elif ref is None and matches and not d["metadata"].get("deletionTimestamp"):
                adopted = copy.deepcopy(rs)
                meta(adopted)["ownerReferences"] = [
                    *(meta(rs).get("ownerReferences") or []),
                    owner_reference(d),
                ]
                owned.append(await self._update_rs(adopted))
                emit("replicaset_adopted", deployment=object_key(d), replicaset=name_of(rs))
        return owned

    def _rollback_to(self, d: Obj) -> int | None:
        value = annotations_of(d).get(du.ROLLBACK_TO)
        if value is None:
            return None
        try:
            return int(value)
        except ValueError:
            return None

    def _scaling_event(self, d: Obj, rs_list: list[Obj]) -> bool:
        for rs in du.active(rs_list):
            desired = annotations_of(rs).get(du.DESIRED_REPLICAS)
            if desired is not None and desired.isdigit() and int(desired) != du.replicas_of(d):
                return True
        return False

    async def _new_and_old(
        self, d: Obj, rs_list: list[Obj], *, create: bool
    ) -> tuple[Obj | None, list[Obj], Obj]:
        """(new ReplicaSet, old ones, the Deployment as last written), the new one's
        revision synced (and created, with ``create``, when there is none)."""
        new_rs = du.find_new(d, rs_list)
        old = [rs for rs in rs_list if new_rs is None or uid_of(rs) != uid_of(new_rs)]
        new_revision = du.max_revision(old) + 1
        if new_rs is not None:
            rs_copy = copy.deepcopy(new_rs)
            changed = du.set_new_rs_annotations(d, rs_copy, new_revision, exists=True)
            min_ready = d["spec"]["minReadySeconds"]
            if changed or rs_copy["spec"].get("minReadySeconds", 0) != min_ready:
                rs_copy["spec"]["minReadySeconds"] = min_ready
                bump_generation(new_rs, rs_copy)
                return await self._update_rs(rs_copy), old, d
            d_copy = copy.deepcopy(d)
            needs_update = self._set_revision(d_copy, annotations_of(rs_copy).get(du.REVISION, ""))
            status = d_copy.setdefault("status", {})
            if du.condition_of(status, "Progressing") is None:
                message = f'Found new replica set "{name_of(rs_copy)}"'
                du.set_condition(
                    status, du.new_condition("Progressing", "True", du.FOUND_NEW_RS, message)
                )
                needs_update = True
            if needs_update:
                d = await self._update_deployment(d_copy)
            return rs_copy, old, d
        if not create:
            return None, old, d
        return await self._create_new(d, old, new_revision)

    def _set_revision(self, d: Obj, value: str) -> bool:
        annotations = meta(d).setdefault("annotations", {})
        if annotations.get(du.REVISION) == value:
            return False
        annotations[du.REVISION] = value
        return True

    async def _create_new(
        self, d: Obj, old: list[Obj], new_revision: int
    ) -> tuple[Obj | None, list[Obj], Obj]:
        collisions = (d.get("status") or {}).get("collisionCount")
        template = copy.deepcopy(du.template_of(d))
        pod_hash = du.compute_hash(template, collisions)
        template.setdefault("metadata", {})
        template["metadata"]["labels"] = {
            **(template["metadata"].get("labels") or {}),
            du.POD_TEMPLATE_HASH: pod_hash,
        }
        selector = copy.deepcopy(d["spec"]["selector"])
        selector["matchLabels"] = {
            **(selector.get("matchLabels") or {}),
            du.POD_TEMPLATE_HASH: pod_hash,
        }
        rs = new_object(
            "replicasets",
            f"{name_of(d)}-{pod_hash}",
            namespace_of(d),
            labels=template["metadata"]["labels"],
            spec={
                "replicas": 0,
                "minReadySeconds": d["spec"]["minReadySeconds"],
                "selector": selector,
                "template": template,
            },
        )
        meta(rs)["ownerReferences"] = [owner_reference(d)]
        rs["spec"]["replicas"] = du.new_rs_replicas(d, [*old, rs], rs)
        du.set_new_rs_annotations(d, rs, new_revision, exists=False)
        try:
            created = await self.store.create(self.writer, "replicasets", rs)
        except ConflictError:
            existing = await self.store.get("replicasets", name_of(rs), namespace_of(rs))
            if (
                existing is not None
                and (controller_ref(existing) or {}).get("uid") == uid_of(d)
                and du.equal_ignore_hash(du.template_of(existing), du.template_of(d))
            ):
                return existing, old, d  # ours already (a slow cache)
            d_copy = copy.deepcopy(d)
            d_copy.setdefault("status", {})["collisionCount"] = (collisions or 0) + 1
            await self._update_deployment(d_copy)
            raise Retry(f"{object_key(d)}: hash collision on {name_of(rs)}") from None
        self.own_replicasets.wrote(created)
        self.progress_seen[object_key(d)] = anyio.current_time()
        emit(
            "replicaset_created",
            deployment=object_key(d),
            replicaset=name_of(created),
            replicas=du.replicas_of(created),
            revision=new_revision,
        )
        d_copy = copy.deepcopy(d)
        self._set_revision(d_copy, str(new_revision))
        message = f'Created new replica set "{name_of(created)}"'
        du.set_condition(
            d_copy.setdefault("status", {}),
            du.new_condition("Progressing", "True", du.NEW_RS_CREATED, message),
        )
        return created, old, await self._update_deployment(d_copy)

    # ---- rolling update ----

    async def _rollout_rolling(self, d: Obj, rs_list: list[Obj]) -> None:
        new_rs, old, d = await self._new_and_old(d, rs_list, create=True)
        assert new_rs is not None
        all_rss = [*old, new_rs]
        scaled, new_rs = await self._reconcile_new(d, all_rss, new_rs)
        if not scaled:
            scaled = await self._reconcile_old(d, old, new_rs)
        all_rss = [*self._current(old), new_rs]
        if not scaled and du.complete(d, d.get("status") or {}):
            await self._cleanup(d, old)
        await self._sync_rollout_status(d, all_rss, new_rs)

    def _current(self, rss: list[Obj]) -> list[Obj]:
        return [self.own_replicasets.latest(rs) for rs in rss]

    async def _reconcile_new(self, d: Obj, all_rss: list[Obj], new_rs: Obj) -> tuple[bool, Obj]:
        wanted = du.replicas_of(d)
        if du.replicas_of(new_rs) == wanted:
            return False, new_rs
        if du.replicas_of(new_rs) > wanted:
            return await self._scale(d, new_rs, wanted)
        return await self._scale(d, new_rs, du.new_rs_replicas(d, all_rss, new_rs))

    async def _reconcile_old(self, d: Obj, old: list[Obj], new_rs: Obj) -> bool:
        """Scale old ReplicaSets down as far as availability allows: their unhealthy
        pods first, then available ones down to replicas - maxUnavailable."""
        old_active = du.active(old)
        if du.total_replicas(old_active) == 0:
            return False
        if not all(du.status_current(rs) for rs in [*old, new_rs]):
            return False  # a status is behind its spec: wait for it
        all_rss = [*old, new_rs]
        min_available = du.replicas_of(d) - du.max_unavailable(d)
        new_unavailable = du.replicas_of(new_rs) - du.status_sum([new_rs], "availableReplicas")
        most_down = du.total_replicas(all_rss) - min_available - new_unavailable
        if most_down <= 0:
            return False
        scaled_down = 0
        old_active.sort(key=du.by_creation)
        for i, rs in enumerate(old_active):  # unhealthy replicas first
            if scaled_down >= most_down:
                break
            unhealthy = du.replicas_of(rs) - du.status_sum([rs], "availableReplicas")
            if unhealthy <= 0:
                continue
            down = min(most_down - scaled_down, unhealthy)
            _, old_active[i] = await self._scale(d, rs, du.replicas_of(rs) - down)
            scaled_down += down
        available = du.status_sum([*old_active, new_rs], "availableReplicas")
        allowed = available - min_available
        for rs in old_active:
            if allowed <= 0:
                break
            if du.replicas_of(rs) == 0:
                continue
            down = min(du.replicas_of(rs), allowed)
            await self._scale(d, rs, du.replicas_of(rs) - down)
            allowed -= down
            scaled_down += down
        return scaled_down > 0

    # ---- recreate ----

    async def _rollout_recreate(self, d: Obj, rs_list: list[Obj]) -> None:
        new_rs, old, d = await self._new_and_old(d, rs_list, create=False)
        scaled = False
        for i, rs in enumerate(old):
            if du.replicas_of(rs) > 0:
                _, old[i] = await self._scale(d, rs, 0)
                scaled = True
        if scaled or self._old_pods_running(new_rs, old):
            await self._sync_rollout_status(d, [*old, *([new_rs] if new_rs else [])], new_rs)
            return
        if new_rs is None:
            new_rs, old, d = await self._new_and_old(d, rs_list, create=True)
            assert new_rs is not None
        _, new_rs = await self._scale(d, new_rs, du.replicas_of(d))
        if du.complete(d, d.get("status") or {}):
            await self._cleanup(d, old)
        await self._sync_rollout_status(d, [*old, new_rs], new_rs)

    def _old_pods_running(self, new_rs: Obj | None, old: list[Obj]) -> bool:
        if du.status_sum(old, "replicas") > 0:
            return True
        old_uids = {uid_of(rs) for rs in old}
        return any(
            (controller_ref(pod) or {}).get("uid") in old_uids and pod_is_active(pod)
            for pod in self.pods.list()
        )

    # ---- scaling (and paused Deployments) ----

    async def _scale_and_status(self, d: Obj, rs_list: list[Obj]) -> None:
        new_rs, old, d = await self._new_and_old(d, rs_list, create=False)
        await self._proportional_scale(d, new_rs, old)
        if d["spec"].get("paused") and self._rollback_to(d) is None:
            await self._cleanup(d, self._current(old))
        current_new = self._current([new_rs])[0] if new_rs is not None else None
        await self._sync_status(d, [*self._current(old), current_new], current_new)

    async def _proportional_scale(self, d: Obj, new_rs: Obj | None, old: list[Obj]) -> None:
        candidates = [new_rs, *old] if new_rs is not None else list(old)
        live = du.active(candidates)
        if len(live) <= 1:  # one (or no) ReplicaSet with pods: it takes them all
            target = (
                live[0] if live else (new_rs or (max(old, key=du.by_creation) if old else None))
            )
            if target is not None and du.replicas_of(target) != du.replicas_of(d):
                await self._scale(d, target, du.replicas_of(d))
            return
        if new_rs is not None and self._saturated(d, new_rs):
            for rs in du.active(old):
                await self._scale(d, rs, 0)
            return
        if not du.is_rolling(d):
            return
        allowed = du.replicas_of(d) + du.max_surge(d) if du.replicas_of(d) > 0 else 0
        to_add = allowed - du.total_replicas(live)
        # Larger first; among equals the newer first when growing, the older when shrinking.
        live.sort(key=du.by_creation, reverse=to_add > 0)
        live.sort(key=du.replicas_of, reverse=True)  # stable: keeps that order among equals
        sizes, added = {}, 0
        for rs in live:
            share = du.proportion(rs, d, to_add, added) if to_add else 0
            sizes[name_of(rs)] = du.replicas_of(rs) + share
            added += share
        for i, rs in enumerate(live):
            size = sizes[name_of(rs)]
            if i == 0 and to_add:
                size = max(size + to_add - added, 0)  # leftovers to the largest
            await self._scale(d, rs, size)

    def _saturated(self, d: Obj, rs: Obj) -> bool:
        desired = annotations_of(rs).get(du.DESIRED_REPLICAS, "")
        return (
            desired.isdigit()
            and int(desired) == du.replicas_of(d)
            and du.replicas_of(rs) == du.replicas_of(d)
            and du.status_sum([rs], "availableReplicas") == du.replicas_of(d)
        )

    async def _check_paused(self, d: Obj) -> Obj:
        status = d.get("status") or {}
        cond = du.condition_of(status, "Progressing")
        if cond is not None and cond.get("reason") == du.TIMED_OUT:
            return d
        paused_cond = cond is not None and cond.get("reason") == du.PAUSED
        if d["spec"].get("paused") and not paused_cond:
            new = du.new_condition("Progressing", "Unknown", du.PAUSED, "Deployment is paused")
        elif not d["spec"].get("paused") and paused_cond:
            new = du.new_condition("Progressing", "Unknown", du.RESUMED, "Deployment is resumed")
            self.progress_seen[object_key(d)] = anyio.current_time()
        else:
            return d
        d_copy = copy.deepcopy(d)
        du.set_condition(d_copy.setdefault("status", {}), new)
        return await self._update_deployment(d_copy)

    # ---- rollback ----

    async def _rollback(self, d: Obj, rs_list: list[Obj]) -> None:
        new_rs, old, d = await self._new_and_old(d, rs_list, create=True)
        all_rss = [*old, *([new_rs] if new_rs else [])]
        to = self._rollback_to(d) or du.last_revision(all_rss)
        target = next((rs for rs in all_rss if to and du.revision(rs) == to), None)
        rolled = copy.deepcopy(d)
        meta(rolled)["annotations"].pop(du.ROLLBACK_TO, None)
        if target is None:
            emit("rollback_revision_not_found", deployment=object_key(d), revision=to)
        elif du.equal_ignore_hash(du.template_of(d), du.template_of(target)):
            emit("rollback_template_unchanged", deployment=object_key(d), revision=to)
        else:
            template = copy.deepcopy(du.template_of(target))
            template.get("metadata", {}).get("labels", {}).pop(du.POD_TEMPLATE_HASH, None)
            rolled["spec"]["template"] = template
            kept = {k: v for k, v in annotations_of(d).items() if k in du.NOT_COPIED}
            copied = {k: v for k, v in annotations_of(target).items() if k not in du.NOT_COPIED}
            kept.pop(du.ROLLBACK_TO, None)
            meta(rolled)["annotations"] = {**kept, **copied}
            emit("deployment_rolled_back", deployment=object_key(d), revision=to)
        bump_generation(d, rolled)
        await self._update_deployment(rolled)

    # ---- old ReplicaSets ----

    async def _cleanup(self, d: Obj, old: list[Obj]) -> None:
        """Delete the oldest empty ReplicaSets beyond revisionHistoryLimit."""
        limit = int(d["spec"]["revisionHistoryLimit"])
        alive = [rs for rs in old if not rs["metadata"].get("deletionTimestamp")]
        excess = len(alive) - limit
        if excess <= 0:
            return
        for rs in sorted(alive, key=lambda r: (du.revision(r), du.by_creation(r)))[:excess]:
            if du.status_sum([rs], "replicas") or du.replicas_of(rs) or not du.status_current(rs):
                continue
            try:
                revision = await self.store.delete(self.writer, "replicasets", rs)
            except ConflictError:
                continue  # changed meanwhile; a later sync looks again
            self.own_replicasets.deleted(rs, revision)
            emit("replicaset_deleted", deployment=object_key(d), replicaset=name_of(rs))

    # ---- status ----

    async def _sync_status(
        self, d: Obj, all_rss: Sequence[Obj | None], new_rs: Obj | None = None
    ) -> None:
        new_status = du.calculate_status(all_rss, new_rs, d)
        if new_status != (d.get("status") or {}):
            await self._write_status(d, new_status)

    async def _sync_rollout_status(self, d: Obj, all_rss: list[Obj], new_rs: Obj | None) -> None:
        key, now = object_key(d), anyio.current_time()
        rollout = du.rollout_status(d, all_rss, new_rs, now, self.progress_seen.get(key, now))
        if rollout.last_progress is None:
            self.progress_seen.pop(key, None)
        else:
            self.progress_seen[key] = rollout.last_progress
        if rollout.check_again_in is not None:
            self.queue.add_after(key, rollout.check_again_in)
        if rollout.status != (d.get("status") or {}):
            await self._write_status(d, rollout.status)

    async def _write_status(self, d: Obj, status: dict[str, object]) -> None:
        d_copy = copy.deepcopy(d)
        d_copy["status"] = status
        await self._update_deployment(d_copy)
        emit(
            "deployment_status",
            deployment=object_key(d),
            replicas=status.get("replicas"),
            updated=status.get("updatedReplicas"),
            ready=status.get("readyReplicas"),
            available=status.get("availableReplicas"),
        )
