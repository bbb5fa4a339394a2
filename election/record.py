"""The lock record: where it lives in the store and how it is encoded.

A lock named ``name`` in ``namespace`` is two keys:

``/registry/leases/<namespace>/<name>``
    The leader-election record, JSON with client-go's field names::

        {"holderIdentity": "host_5f0c...", "leaseDurationSeconds": 15,
         "acquireTime": "2026-11-25T05:00:00.000000Z",
         "renewTime": "2026-11-25T05:00:10.000000Z", "leaderTransitions": 3}

    The times are wall-clock RFC 3339 stamps for people to read; no
    contender ever compares them with its own clock. ``holderIdentity`` is
    empty once the holder released the lock.

``/registry/fencing/<namespace>/<name>``
    Written only when the lock changes hands (acquired or released), in the
    same transaction as the record. Its mod_revision is the holder's
    **fencing token**: it strictly increases from one holder to the next,
    and a guarded write compares it, so a deposed holder's write cannot
    apply. Renewals leave it alone, so they never race a holder's own
    guarded writes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

RECORD_PREFIX = "/registry/leases/"
FENCE_PREFIX = "/registry/fencing/"


def record_key(namespace: str, name: str) -> str:
    return f"{RECORD_PREFIX}{namespace}/{name}"


def fence_key(namespace: str, name: str) -> str:
    return f"{FENCE_PREFIX}{namespace}/{name}"


def format_time(moment: datetime) -> str:
    """RFC 3339 with microseconds in UTC, as Kubernetes' MicroTime."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class LeaderElectionRecord:
    holderIdentity: str
    leaseDurationSeconds: int
    acquireTime: str
    renewTime: str
    leaderTransitions: int

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> LeaderElectionRecord:
        """Parse a stored record; unknown fields are ignored, missing ones are an error."""
        try:
            data = json.loads(raw)
            return cls(
                holderIdentity=str(data["holderIdentity"]),
                leaseDurationSeconds=int(data["leaseDurationSeconds"]),
                acquireTime=str(data["acquireTime"]),
                renewTime=str(data["renewTime"]),
                leaderTransitions=int(data["leaderTransitions"]),
            )
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"malformed leader-election record {raw[:200]!r}: {error}") from None
