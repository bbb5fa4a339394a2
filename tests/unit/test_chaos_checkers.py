"""Unit tests of the chaos checkers: each accepts valid histories and rejects broken ones."""

from __future__ import annotations

import json
import random

from chaos import linearizability as lin
from chaos.checkers import (
    Batch,
    Event,
    LeaseLog,
    WatcherLog,
    check_durability,
    check_lease,
    check_locks,
    check_reference,
    check_resume,
    check_watch,
    lagging_progress_notifies,
    unconfirmed_lease_reads,
)
from chaos.history import FAIL, INFO, OK, Op

_ids = iter(range(1_000_000))


def op(
    kind: str,
    t0: float,
    t1: float | None,
    *,
    key: str = "k",
    value: str | None = None,
    expect: str | None = None,
    out: object = None,
    status: str = OK,
    rev: int | None = None,
    proc: str = "p",
) -> Op:
    return Op(
        id=next(_ids),
        process=proc,
        kind=kind,
        key=key,
        value=value,
        expect=expect,
        invoke=t0,
        ret=t1,
        status=status if t1 is not None else INFO,
        output=out,
        revision=rev,
    )


# ---------------------------------------------------------------- linearizability


def test_sequential_history_is_linearizable() -> None:
    h = [
        op("put", 0, 1, value="a"),
        op("get", 2, 3, out="a"),
        op("cas", 4, 5, expect="a", value="b", out=[True, None]),
        op("cas", 6, 7, expect="a", value="c", out=[False, "b"]),
        op("get", 8, 9, out="b"),
        op("delete", 10, 11, out=1),
        op("get", 12, 13, out=None),
    ]
    assert lin.check(h).ok


def test_concurrent_reads_may_see_either_value() -> None:
    h = [
        op("put", 0, 1, value="a"),
        op("put", 2, 10, value="b"),
        op("get", 3, 4, out="b"),
        op("get", 5, 6, out="b"),  # once b was seen, a later read must not go back
        op("get", 3, 11, out="b"),
    ]
    assert lin.check(h).ok
    h2 = [
        op("put", 0, 1, value="a"),
        op("put", 2, 10, value="b"),
        op("get", 3, 4, out="a"),
        op("get", 5, 6, out="b"),
    ]
    assert lin.check(h2).ok


def test_stale_read_is_rejected() -> None:
    h = [
        op("put", 0, 1, value="a"),
        op("put", 2, 3, value="b"),
        op("get", 4, 5, out="a"),  # b was acknowledged before this read began
    ]
    result = lin.check(h)
    assert not result.ok
    assert "k" in result.failures


def test_read_going_back_in_time_is_rejected() -> None:
    h = [
        op("put", 0, 1, value="a"),
        op("put", 2, 10, value="b"),
        op("get", 3, 4, out="b"),
        op("get", 5, 6, out="a"),
    ]
    assert not lin.check(h).ok


def test_lost_write_is_rejected() -> None:
    h = [
        op("put", 0, 1, value="a"),
        op("put", 2, 3, value="b"),
        op("get", 4, 5, out="a"),
        op("get", 6, 7, out="a"),
    ]
    assert not lin.check(h).ok
    # Lost write seen as a CAS failure against the old value.
    h2 = [
        op("put", 0, 1, value="a"),
        op("put", 2, 3, value="b"),
        op("cas", 4, 5, expect="b", value="c", out=[False, "a"]),
    ]
    assert not lin.check(h2).ok


def test_cas_succeeding_twice_is_rejected() -> None:
    h = [
        op("put", 0, 1, value="a"),
        op("cas", 2, 5, expect="a", value="b", out=[True, None], proc="p1"),
        op("cas", 2, 5, expect="a", value="c", out=[True, None], proc="p2"),
    ]
    assert not lin.check(h).ok
    ok = [
        op("put", 0, 1, value="a"),
        op("cas", 2, 5, expect="a", value="b", out=[True, None], proc="p1"),
        op("cas", 2, 5, expect="a", value="c", out=[False, "b"], proc="p2"),
    ]
    assert lin.check(ok).ok


def test_ambiguous_write_may_or_may_not_apply() -> None:
    applied = [
        op("put", 0, 1, value="a"),
        op("put", 2, None, value="b"),  # timed out
        op("get", 50, 51, out="b"),
        op("get", 52, 53, out="b"),
    ]
    assert lin.check(applied).ok
    not_applied = [
        op("put", 0, 1, value="a"),
        op("put", 2, None, value="b"),
        op("get", 50, 51, out="a"),
    ]
    assert lin.check(not_applied).ok
    # ...but it cannot apply before it was invoked.
    too_early = [
        op("put", 0, 1, value="a"),
        op("get", 2, 3, out="b"),
        op("put", 4, None, value="b"),
    ]
    assert not lin.check(too_early).ok
    # ...nor flip-flop.
    flip = [
        op("put", 0, 1, value="a"),
        op("put", 2, None, value="b"),
        op("get", 3, 4, out="b"),
        op("get", 5, 6, out="a"),
    ]
    assert not lin.check(flip).ok


def test_definite_failures_are_ignored() -> None:
    h = [
        op("put", 0, 1, value="a"),
        op("put", 2, 3, value="b", status=FAIL),
        op("get", 4, 5, out="a"),
    ]
    assert lin.check(h).ok


def test_keys_are_checked_independently() -> None:
    h = [
        op("put", 0, 1, key="x", value="a"),
        op("put", 0, 1, key="y", value="b"),
        op("get", 2, 3, key="x", out="a"),
        op("get", 2, 3, key="y", out="a"),
    ]
    result = lin.check(h)
    assert not result.ok
    assert list(result.failures) == ["y"]


def test_large_random_linearizable_history_is_accepted() -> None:
    rng = random.Random(7)
    # Simulate a real register with concurrent clients; effects apply at a random
    # instant inside each operation's interval.
    events = []
    t = 0.0
    for n in range(600):
        t += rng.random()
        start = t
        at = start + rng.random() * 2
        end = at + rng.random() * 2
        kind = rng.choice(["put", "get", "cas"])
        events.append((at, n, kind, start, end))
    events.sort()
    state: str | None = None
    h = []
    for at, n, kind, start, end in events:
        timed_out = rng.random() < 0.05
        ret = None if timed_out else end
        if kind == "put":
            state = f"v{n}"
            h.append(op("put", start, ret, value=state))
        elif kind == "get":
            if not timed_out:
                h.append(op("get", start, ret, out=state))
        else:
            expect = state if rng.random() < 0.5 else "nope"
            if expect == state:
                h.append(op("cas", start, ret, expect=expect, value=f"v{n}", out=[True, None]))
                state = f"v{n}"
            else:
                h.append(op("cas", start, ret, expect=expect, value=f"v{n}", out=[False, state]))
        _ = at
    assert lin.check(h).ok


def test_revision_order_rejects_an_older_revision_after_a_newer_one() -> None:
    h = [
        op("put", 0, 1, key="x", value="a", rev=10),
        op("get", 2, 3, key="y", out=None, rev=9),
    ]
    assert lin.check_revision_order(h)
    assert not lin.check_revision_order([h[0], op("get", 0.5, 3, key="y", out=None, rev=9)])


# ---------------------------------------------------------------- reference / durability


def ev(
    t: str,
    key: str,
    value: str,
    rev: int,
    create: int = 0,
    pv: str | None = None,
    pr: int | None = None,
) -> Event:
    return Event(t, key, value, rev, create or rev, pv, pr)


REF = [
    ev("put", "/c/a", "1", 2),
    ev("put", "/c/b", "2", 3),
    ev("put", "/c/a", "3", 4, create=2, pv="1", pr=2),
    ev("delete", "/c/b", "", 5, create=0, pv="2", pr=3),
    ev("put", "/c/a", "4", 6, create=2, pv="3", pr=4),
    ev("put", "/c/b", "5", 6),
]


def test_reference_accepts_acked_writes() -> None:
    acked = [op("put", 0, 1, key="/c/a", value="3", rev=4)]
    assert check_reference(REF, acked) == []


def test_reference_rejects_a_lost_acknowledged_write() -> None:
    acked = [op("put", 0, 1, key="/c/a", value="9", rev=7)]
    assert check_reference(REF, acked)
    cas = [op("cas", 0, 1, key="/c/b", expect="x", value="7", out=[True, None], rev=5)]
    assert check_reference(REF, cas)


def test_reference_checks_every_key_of_an_acknowledged_transaction() -> None:
    both = [ev("put", "/m/a", "x", 7), ev("put", "/m/b", "x", 7)]
    multi = op("multi", 0, 1, key="/m/", value="x", rev=7)
    multi.extra = {"keys": ["/m/a", "/m/b"]}
    assert check_reference(both, [multi]) == []
    assert check_reference(both[:1], [multi])


def test_reference_rejects_wrong_prev_kv() -> None:
    bad = [*REF[:2], ev("put", "/c/a", "3", 4, create=2, pv="0", pr=1)]
    assert check_reference(bad, [])


def test_durability() -> None:
    hashes = {"m0": (6, 111), "m1": (6, 111), "m2": (6, 111)}
    assert check_durability(REF, {"/c/a": "4", "/c/b": "5"}, hashes) == []
    assert check_durability(REF, {"/c/a": "3"}, hashes)
    assert check_durability(REF, {}, {"m0": (6, 111), "m1": (6, 112)})
    # Every member present at the end must have answered HashKV (one replaced m1 here).
    members = ["m0", "m2", "m3"]
    assert check_durability(REF, {}, {**hashes, "m3": (6, 111)}, members) == []
    assert check_durability(REF, {}, hashes, members) == ["m3 gave no HashKV after healing"]


# ---------------------------------------------------------------- watch


def watcher(batches: list[list[Event]], start: int = 1, progress: int | None = None) -> WatcherLog:
    w = WatcherLog("w", "/c/", start)
    for i, events in enumerate(batches):
        w.batches.append(Batch(float(i), max(e.revision for e in events), events))
    if progress is not None:
        w.batches.append(Batch(99.0, progress, []))
    return w


def test_watch_accepts_exact_delivery() -> None:
    w = watcher([[REF[0]], [REF[1], REF[2]], [REF[3]], [REF[4], REF[5]]], progress=6)
    assert check_watch(w, REF) == []
    partial = watcher([[REF[2]], [REF[3]]], start=4)
    assert check_watch(partial, REF) == []


def test_watch_rejects_a_gap() -> None:
    w = watcher([[REF[0]], [REF[2]], [REF[3]]])
    assert any("differ" in x for x in check_watch(w, REF))


def test_watch_rejects_reordering_and_duplicates() -> None:
    w = watcher([[REF[0]], [REF[2]], [REF[1]]])
    assert check_watch(w, REF)
    dup = watcher([[REF[0]], [REF[0]], [REF[1]]])
    assert any("duplicate" in x for x in check_watch(dup, REF))


def test_watch_rejects_a_split_revision() -> None:
    w = watcher([[REF[0]], [REF[1]], [REF[2]], [REF[3]], [REF[4]], [REF[5]]])
    assert any("split" in x for x in check_watch(w, REF))


def test_watch_rejects_wrong_prev_kv() -> None:
    wrong = Event("put", "/c/a", "3", 4, 2, "1", 1)
    w = watcher([[REF[0]], [REF[1]], [wrong]])
    assert any("prev_kv" in x for x in check_watch(w, REF))


def test_watch_rejects_event_after_progress_and_progress_going_back() -> None:
    w = WatcherLog("w", "/c/", 1)
    w.batches = [Batch(0, 2, [REF[0]]), Batch(1, 3, []), Batch(2, 3, [REF[1]])]
    assert any("progress" in x for x in check_watch(w, REF))
    w2 = WatcherLog("w", "/c/", 1)
    w2.batches = [Batch(0, 2, [REF[0]]), Batch(1, 3, [REF[1]]), Batch(2, 2, [])]
    assert any("progress" in x for x in check_watch(w2, REF))
    # etcd-io/etcd#20221 excused: a lagging notification is counted, not reported;
    # an event at or below an earlier notification still is.
    assert check_watch(w2, REF, progress_may_lag=True) == []
    assert (lagging_progress_notifies(w2), lagging_progress_notifies(w)) == (1, 0)
    assert any("progress" in x for x in check_watch(w, REF, progress_may_lag=True))


def test_resume() -> None:
    assert check_resume(4, "/c/", REF[2:], REF) == []
    assert check_resume(4, "/c/", REF[3:], REF)
    assert check_resume(4, "/c/", REF[2:5], REF)


# ---------------------------------------------------------------- leases


def test_lease_expiring_after_ttl_is_fine() -> None:
    lease = LeaseLog(1, ttl=2, renewals=[(0.0, 2), (1.0, 2)], gone=[(3.5, "ttl")])
    lease.key_reads = [(4.0, "/l/k", False)]
    assert check_lease(lease) == []


def test_lease_expiring_early_is_rejected() -> None:
    lease = LeaseLog(1, ttl=2, renewals=[(0.0, 2), (1.0, 2)], gone=[(2.5, "ttl")])
    assert any("before its TTL" in x for x in check_lease(lease))


def test_lease_key_surviving_expiry_is_rejected() -> None:
    lease = LeaseLog(1, ttl=2, renewals=[(0.0, 2)], gone=[(3.0, "ttl")])
    lease.key_reads = [(3.5, "/l/k", True)]
    assert any("still readable" in x for x in check_lease(lease))


def test_untrusted_lease_reads_count_only_committed_evidence() -> None:
    # A lagging new leader said "not found", but the key was still there: with
    # trust_lease_reads=False that answer is not evidence (etcd 3.5.1 semantics).
    lease = LeaseLog(1, ttl=2, renewals=[(0.0, 2)], gone=[(1.0, "time_to_live")])
    lease.key_reads = [(1.5, "/l/k", True)]
    assert check_lease(lease)  # strict: both early expiry and a readable key
    assert check_lease(lease, trust_lease_reads=False) == []
    assert unconfirmed_lease_reads(lease) == 1
    # A committed delete is always evidence.
    lease.gone.append((1.2, "delete event (w)"))
    assert check_lease(lease, trust_lease_reads=False)


def test_lease_not_expiring_within_bound_is_rejected() -> None:
    lease = LeaseLog(1, ttl=2, renewals=[(0.0, 2)], gone=[(30.0, "ttl")], stopped_renewing=0.5)
    assert check_lease(lease, expiry_bound=5.0)
    lease.gone = [(4.0, "ttl")]
    assert check_lease(lease, expiry_bound=5.0) == []


# ---------------------------------------------------------------- locks


def data(token: int) -> str:
    return json.dumps({"token": token})


def test_locks_accept_fenced_writes() -> None:
    ref = [
        ev("put", "/lk", "a", 2),
        ev("put", "/d", data(2), 3),
        ev("delete", "/lk", "", 4),
        ev("put", "/lk", "b", 5),
        ev("put", "/d", data(5), 6),
    ]
    assert check_locks("/lk", "/d", ref, [("a", 2), ("b", 5)], [("b", 5, 6)]) == []


def test_locks_reject_write_outside_tenure() -> None:
    ref = [
        ev("put", "/lk", "a", 2),
        ev("delete", "/lk", "", 3),
        ev("put", "/lk", "b", 4),
        ev("put", "/d", data(2), 5),  # a's write after b took over
    ]
    assert any("while the holder" in x for x in check_locks("/lk", "/d", ref))


def test_locks_reject_two_holders() -> None:
    ref = [ev("put", "/lk", "a", 2), ev("put", "/lk", "b", 3)]
    assert check_locks("/lk", "/d", ref)


def test_locks_reject_unbacked_acquisition() -> None:
    ref = [ev("put", "/lk", "a", 2)]
    assert check_locks("/lk", "/d", ref, [("b", 3)])


def test_locks_reject_acquisition_of_someone_elses_token() -> None:
    ref = [ev("put", "/lk", "a", 2)]
    assert any("which is a's" in x for x in check_locks("/lk", "/d", ref, [("b", 2)]))


# The election package's model: every put of a non-empty holder on the fencing key starts a
# tenure (token = its revision); takeover needs no delete; an empty value is a release.


def fenced(token: int, who: str) -> str:
    return json.dumps({"token": token, "who": who, "seq": 1})


def elector_locks(ref: list[Event], *args: object) -> list[str]:
    return check_locks("/f", "/d", ref, *args, tokens_are_create_revisions=False)  # type: ignore[arg-type]


def test_fencing_key_tenures_accept_fenced_writes_and_takeovers() -> None:
    ref = [
        ev("put", "/f", "a", 2),
        ev("put", "/d", fenced(2, "a"), 3),
        ev("put", "/f", "b", 4),  # b took over after a's lease ran out: no delete needed
        ev("put", "/d", fenced(4, "b"), 5),
        ev("put", "/f", "", 6),  # b released
        ev("put", "/f", "a", 7),
        ev("put", "/d", fenced(7, "a"), 8),
    ]
    assert elector_locks(ref, [("a", 2), ("b", 4), ("a", 7)], [("b", 4, 5), ("a", 7, 8)]) == []


def test_fencing_key_tenures_reject_a_paused_holders_late_write() -> None:
    ref = [
        ev("put", "/f", "a", 2),
        ev("put", "/f", "b", 3),
        ev("put", "/d", fenced(2, "a"), 4),  # a's write, delivered after b took over
    ]
    assert any("while the holder's token was 3" in x for x in elector_locks(ref))


def test_fencing_key_tenures_reject_a_write_after_release() -> None:
    ref = [ev("put", "/f", "a", 2), ev("put", "/f", "", 3), ev("put", "/d", fenced(2, "a"), 4)]
    assert any("while the holder's token was None" in x for x in elector_locks(ref))


def test_fencing_key_tenures_reject_a_write_by_another_contender() -> None:
    ref = [ev("put", "/f", "a", 2), ev("put", "/d", fenced(2, "b"), 3)]
    assert any("under a's token 2" in x for x in elector_locks(ref))


def test_fencing_key_tenures_reject_unbacked_acks() -> None:
    ref = [ev("put", "/f", "a", 2), ev("put", "/d", fenced(2, "a"), 3)]
    assert elector_locks(ref, [("a", 5)], [])
    assert elector_locks(ref, [("a", 2)], [("a", 2, 4)])  # acked at a revision not committed


def test_empty_inputs() -> None:
    assert lin.check([]).ok
    assert check_reference([], []) == []
    assert check_watch(WatcherLog("w", "/", 1), []) == []
