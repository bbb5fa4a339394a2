"""The dashboard's reading of members' metrics: where they are, the counters, the rates."""

from __future__ import annotations

from dashboard.members import MemberMonitor, MetricsSource, metrics_candidates, parse_counters

EXPOSITION = """# HELP etcd_mvcc_put_total Total number of puts seen by this member.
# TYPE etcd_mvcc_put_total counter
etcd_mvcc_put_total 12
# TYPE etcd_mvcc_range_total counter
etcd_mvcc_range_total 40
grpc_server_handled_total{grpc_code="OK",grpc_method="Range"} 99
"""


def test_counters_are_read_by_name_and_labelled_samples_ignored() -> None:
    found = parse_counters(EXPOSITION, ("etcd_mvcc_put_total", "etcd_mvcc_range_total", "nope"))
    assert found == {"etcd_mvcc_put_total": 12.0, "etcd_mvcc_range_total": 40.0}
    assert parse_counters(EXPOSITION, ("grpc_server_handled_total",)) == {}


def test_metrics_are_looked_for_on_the_client_url_then_two_ports_up() -> None:
    assert metrics_candidates("http://127.0.0.1:2379") == [
        "http://127.0.0.1:2379/metrics",
        "http://127.0.0.1:2381/metrics",
    ]
    assert metrics_candidates("https://[::1]:12379")[1] == "https://[::1]:12381/metrics"


def test_rates_from_two_samples_and_none_after_a_counter_reset() -> None:
    source = MetricsSource()
    counters = {"etcd_mvcc_put_total": 10.0, "etcd_mvcc_delete_total": 0.0}
    MemberMonitor._sample(source, {**counters, "etcd_mvcc_range_total": 5.0})
    assert source.rates is None  # one sample: no rate yet
    assert source.sample is not None
    then = source.sample[0]
    source.sample = (then - 2.0, *source.sample[1:])  # as if taken two seconds earlier
    MemberMonitor._sample(
        source, {**counters, "etcd_mvcc_put_total": 30.0, "etcd_mvcc_range_total": 9.0}
    )
    assert source.rates is not None
    assert 9.0 < source.rates["writes"] <= 10.0 and 1.8 < source.rates["reads"] <= 2.0
    MemberMonitor._sample(source, {**counters, "etcd_mvcc_range_total": 0.0})
    assert source.rates is None  # the member restarted: its counters began again
