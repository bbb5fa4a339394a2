"""Leader election on any etcd v3 store.

- :class:`LeaderElector` with a lease lock: Kubernetes (client-go) semantics,
  watch-driven takeover, and fencing tokens with guarded writes.
- :mod:`election.concurrency`: etcd's own election and mutex recipes.
"""

from election.candidate import CANDIDATE_PREFIX, announce_candidate, candidate_key
from election.config import ElectionConfig, default_identity
from election.elector import Callbacks, LeaderElector, Leadership
from election.errors import ConfigError, ElectionError, LeadershipLost
from election.record import LeaderElectionRecord, fence_key, record_key

__all__ = [
    "CANDIDATE_PREFIX",
    "Callbacks",
    "ConfigError",
    "ElectionConfig",
    "ElectionError",
    "LeaderElectionRecord",
    "LeaderElector",
    "Leadership",
    "LeadershipLost",
    "announce_candidate",
    "candidate_key",
    "default_identity",
    "fence_key",
    "record_key",
]
