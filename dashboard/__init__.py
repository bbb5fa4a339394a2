"""A web dashboard for the store and the control plane on it.

``dashboard --endpoints ...`` serves one page (static assets in
``dashboard/static``, nothing fetched from elsewhere) and a small JSON API:

- **Store**: each member's role, term, indexes, DB size, health and alarms,
  the leader changes seen, and request rates from the members' ``/metrics``;
- **Control plane**: the lease locks under ``/registry/leases/``, their
  holders and standbys (``/registry/leasecandidates/``);
- **Workloads**: nodes, Deployments (with the ReplicaSets they own),
  ReplicaSets and pods, with optimistic actions (scale a Deployment or a
  ReplicaSet, delete a pod, create a ReplicaSet, cordon a node);
- **Keys**: a key browser with values, revisions and history, and a live tail.

Changes reach the browser over Server-Sent Events, driven by watches; only
member status and metrics (which have no watch) are polled.

Layering: dashboard -> controllers -> election -> kvstore.client.
"""
