"""A web dashboard for the store and the control plane on it.

``dashboard --endpoints ...`` serves one page (static assets in
``dashboard/static``, nothing fetched from elsewhere) and a small JSON API:

- **Store**: each member's role, term, indexes, DB size, health and alarms,
  the leader changes seen, and request rates from the members' ``/metrics``;
- **Control plane**: the lease locks under ``/registry/leases/``, their
  holders and standbys (``/registry/leasecandidates/``);
- **Workloads**: nodes, ReplicaSets and pods, with optimistic actions (scale,
  delete, create, cordon);
- **Keys**: a key browser with values, revisions and history, and a live tail.

Changes reach the browser over Server-Sent Events, driven by watches; only
member status and metrics (which have no watch) are polled.

Layering: dashboard -> controllers -> election -> kvstore.client.
"""
