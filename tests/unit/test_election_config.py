"""Elector configuration and record encoding (no server needed)."""

from __future__ import annotations

import re

import pytest

from election import ConfigError, ElectionConfig, LeaderElectionRecord, default_identity
from election.record import fence_key, record_key


def test_defaults_are_client_go_s() -> None:
    config = ElectionConfig(name="kube-controller-manager", namespace="kube-system")
    assert (config.lease_duration, config.renew_deadline, config.retry_period) == (15, 10, 2)
    assert record_key("kube-system", "kube-controller-manager") == (
        "/registry/leases/kube-system/kube-controller-manager"
    )
    assert fence_key("ns", "x") == "/registry/fencing/ns/x"


def test_identity_is_hostname_and_uuid() -> None:
    identity = default_identity()
    assert re.fullmatch(
        r".+_[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", identity
    )
    assert default_identity() != identity


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lease_duration": 10, "renew_deadline": 10}, "lease_duration .* must be greater than"),
        ({"renew_deadline": 2.4, "retry_period": 2}, r"renew_deadline .* greater than 1.2 x"),
        ({"retry_period": 0}, "retry_period must be greater than zero"),
        ({"lease_duration": -1}, "lease_duration must be greater than zero"),
        ({"name": ""}, "lock name must not be empty"),
        ({"name": "a/b"}, "must not contain '/'"),
        ({"identity": ""}, "identity must not be empty"),
    ],
)
def test_bad_configuration_is_refused_clearly(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"name": "lock", **kwargs}
    with pytest.raises(ConfigError, match=message):
        ElectionConfig(**args)  # type: ignore[arg-type]


def test_record_round_trip_and_field_names() -> None:
    record = LeaderElectionRecord(
        "me", 15, "2026-01-01T00:00:00.000000Z", "2026-01-01T00:00:10.000000Z", 3
    )
    raw = record.encode()
    assert b'"holderIdentity":"me"' in raw and b'"leaderTransitions":3' in raw
    assert b'"leaseDurationSeconds":15' in raw and b'"acquireTime"' in raw and b'"renewTime"' in raw
    assert LeaderElectionRecord.decode(raw) == record
    with pytest.raises(ValueError, match="malformed"):
        LeaderElectionRecord.decode(b'{"holderIdentity": "x"}')
