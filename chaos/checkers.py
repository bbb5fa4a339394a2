"""Checkers for watches, leases, locks and durability.

Every checker is a pure function over recorded data and returns a list of
violations (human-readable strings); an empty list means the property held.

The *reference* history is the list of committed events the store itself
reports after the run: a fresh watch from revision 1 over the whole chaos
prefix with ``prev_kv``, taken once the cluster is healed (no compaction is
ever done, so it is the complete write history). It is itself checked
against the acknowledged writes (:func:`check_reference`) before the watch,
lock and durability checks rely on it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from chaos.history import OK, Op


@dataclass(frozen=True)
class Event:
    """One watch event: ``type`` is ``put`` or ``delete``; ``prev_*`` from prev_kv."""

    type: str
    key: str
    value: str
    revision: int  # mod_revision of the event (the revision of the delete for deletes)
    create_revision: int = 0
    prev_value: str | None = None
    prev_mod_revision: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


@dataclass
class Batch:
    """One delivered watch response (``events`` empty = progress notification)."""

    received: float
    revision: int
    events: list[Event]


@dataclass
class WatcherLog:
    """Everything one watcher saw, in delivery order."""

    name: str
    prefix: str
    start_revision: int
    batches: list[Batch] = field(default_factory=list)
    error: str | None = None

    @property
    def events(self) -> list[Event]:
        return [e for b in self.batches for e in b.events]

    @property
    def seen_up_to(self) -> int:
        """The highest revision up to which this watcher has received everything.

        Conservative: an event batch vouches only for its own last event (etcd
        stamps catch-up batches with the current revision even when more
        events follow); a progress notification vouches for its revision.
        """
        return max(
            (b.events[-1].revision if b.events else b.revision for b in self.batches),
            default=self.start_revision - 1,
        )


def _fmt(e: Event) -> str:
    return f"{e.type} {e.key}={e.value!r}@{e.revision}"


# ---------------------------------------------------------------------------- reference


def check_reference(reference: Sequence[Event], ops: Iterable[Op]) -> list[str]:
    """The committed history must contain every acknowledged write, and be well-formed.

    Checks: revisions non-decreasing; every acknowledged put / successful CAS /
    effective delete / multi-key transaction (all its keys) appears at the
    revision it was acknowledged with (so no acknowledged write was lost, even
    if a later write superseded it); each event's prev_kv is the key's
    previous event.
    """
    violations: list[str] = []
    by_rev_key: dict[tuple[int, str], Event] = {}
    last_rev = 0
    last_of_key: dict[str, Event] = {}
    for e in reference:
        if e.revision < last_rev:
            violations.append(f"reference not in revision order at {_fmt(e)}")
        last_rev = max(last_rev, e.revision)
        by_rev_key[(e.revision, e.key)] = e
        prev = last_of_key.get(e.key)
        if prev is not None and prev.type == "put":
            if (e.prev_value, e.prev_mod_revision) != (prev.value, prev.revision):
                violations.append(
                    f"prev_kv of {_fmt(e)} is {e.prev_value!r}@{e.prev_mod_revision}, "
                    f"expected {_fmt(prev)}"
                )
        elif e.prev_mod_revision is not None:
            violations.append(f"{_fmt(e)} has prev_kv but the key did not exist before")
        last_of_key[e.key] = e
    for op in ops:
        if op.status != OK or op.revision is None:
            continue
        found = by_rev_key.get((op.revision, op.key))
        if op.kind == "put" or (op.kind == "cas" and op.output[0]):
            if found is None or found.type != "put" or found.value != op.value:
                violations.append(
                    f"acknowledged write lost: op {op.id} {op.kind} {op.key}={op.value!r} "
                    f"acked at revision {op.revision}, history has {found and _fmt(found)}"
                )
        elif op.kind == "multi":
            for key in op.extra.get("keys", []):
                part = by_rev_key.get((op.revision, key))
                if part is None or part.type != "put" or part.value != op.value:
                    violations.append(
                        f"acknowledged transaction lost: op {op.id} {key}={op.value!r} "
                        f"at revision {op.revision}"
                    )
        elif op.kind == "delete" and op.output and (found is None or found.type != "delete"):
            violations.append(
                f"acknowledged delete lost: op {op.id} {op.key} at revision {op.revision}"
            )
    return violations


# ---------------------------------------------------------------------------- watch


def check_watch(
    watcher: WatcherLog, reference: Sequence[Event], *, progress_may_lag: bool = False
) -> list[str]:
    """Ordered, unique, reliable, atomic, prev_kv-correct, progress-monotonic watch delivery.

    The watcher's events must be exactly the reference events under its
    prefix from its start revision up to the last revision it acknowledged
    having seen (the last batch or progress-notify revision).
    ``progress_may_lag`` excuses progress notifications below what the watch
    already delivered (see :func:`lagging_progress_notifies`); events after a
    progress notification must still be newer than it.
    """
    v: list[str] = []
    name = watcher.name
    last_event_rev = 0
    last_progress = 0
    seen: set[tuple[int, str]] = set()
    batch_of_rev: dict[int, int] = {}
    for n, batch in enumerate(watcher.batches):
        if not batch.events:
            if progress_may_lag:
                pass
            elif batch.revision < last_progress:
                v.append(f"{name}: progress notify went back to {batch.revision}")
            elif batch.revision < last_event_rev:
                v.append(
                    f"{name}: progress notify at {batch.revision} after event at {last_event_rev}"
                )
            last_progress = max(last_progress, batch.revision)
            continue
        for e in batch.events:
            if e.revision < last_event_rev:
                v.append(f"{name}: {_fmt(e)} delivered after revision {last_event_rev}")
            if e.revision <= last_progress:
                v.append(f"{name}: {_fmt(e)} delivered after progress notify at {last_progress}")
            if (e.revision, e.key) in seen:
                v.append(f"{name}: duplicate event {_fmt(e)}")
            seen.add((e.revision, e.key))
            owner = batch_of_rev.setdefault(e.revision, n)
            if owner != n:
                v.append(f"{name}: revision {e.revision} split across batches {owner} and {n}")
            if not e.key.startswith(watcher.prefix):
                v.append(f"{name}: {_fmt(e)} outside prefix {watcher.prefix!r}")
            last_event_rev = max(last_event_rev, e.revision)
    upto = watcher.seen_up_to
    expected = [
        e
        for e in reference
        if e.key.startswith(watcher.prefix) and watcher.start_revision <= e.revision <= upto
    ]
    got = watcher.events
    if [(e.type, e.key, e.value, e.revision) for e in got] != [
        (e.type, e.key, e.value, e.revision) for e in expected
    ]:
        exp_set = {(e.revision, e.key) for e in expected}
        got_set = {(e.revision, e.key) for e in got}
        missing = sorted(exp_set - got_set)[:5]
        extra = sorted(got_set - exp_set)[:5]
        v.append(
            f"{name}: events from {watcher.start_revision} to {upto} differ from the committed "
            f"history ({len(got)} vs {len(expected)}; missing {missing}, unexpected {extra})"
        )
    else:
        for g, e in zip(got, expected, strict=True):
            if (g.prev_value, g.prev_mod_revision) != (e.prev_value, e.prev_mod_revision):
                v.append(
                    f"{name}: prev_kv of {_fmt(g)} is {g.prev_value!r}@{g.prev_mod_revision}, "
                    f"committed history says {e.prev_value!r}@{e.prev_mod_revision}"
                )
    return v


def check_resume(
    start_revision: int, prefix: str, replay: Sequence[Event], reference: Sequence[Event]
) -> list[str]:
    """A watch opened from ``start_revision`` replays exactly the committed events >= it."""
    expected = [
        (e.type, e.key, e.value, e.revision)
        for e in reference
        if e.key.startswith(prefix) and e.revision >= start_revision
    ]
    got = [(e.type, e.key, e.value, e.revision) for e in replay]
    if got == expected:
        return []
    diff = next(
        (i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
        min(len(got), len(expected)),
    )
    return [
        f"watch resumed from {start_revision} replayed {len(got)} events, committed "
        f"history has {len(expected)} (first difference at position {diff})"
    ]


# ---------------------------------------------------------------------------- leases


@dataclass
class LeaseLog:
    """The life of one lease as a client saw it (monotonic times).

    ``renewals``: (send time, TTL granted) of every acknowledged grant or
    keepalive (TTL > 0). ``gone``: (receive time, how) of every observation
    that the lease no longer exists (TimeToLive == -1, a keepalive answering
    TTL 0, or a delete event of an attached key). ``key_reads_after_gone``:
    (invoke time, key, found) of reads of attached keys.
    """

    lease_id: int
    ttl: int
    keys: list[str] = field(default_factory=list)
    renewals: list[tuple[float, int]] = field(default_factory=list)
    gone: list[tuple[float, str]] = field(default_factory=list)
    key_reads: list[tuple[float, str, bool]] = field(default_factory=list)
    revoked: bool = False
    stopped_renewing: float | None = None


COMMITTED_EVIDENCE = "delete event"


def check_lease(
    lease: LeaseLog, expiry_bound: float | None = None, *, trust_lease_reads: bool = True
) -> list[str]:
    """No early expiry; keys gone once the lease is gone; expiry within a bound.

    Early: an observation that the lease is gone, *received* at time t, proves
    it expired before t; if some acknowledged renewal was *sent* at s with TTL
    T and t < s + T, the lease expired early. Keys: a read invoked after an
    observation of the lease being gone must not find an attached key.
    Bound (optional): the lease must be seen gone by stopped_renewing + TTL +
    bound.

    With ``trust_lease_reads=False`` only committed evidence (a delete event
    of an attached key) counts for the first two checks: etcd before
    etcd-io/etcd#13690 answers TimeToLive and keepalive from the leader's
    lessor without waiting for it to apply the log, so a leader that has just
    been elected with an apply backlog can report a live lease as not found.
    """
    v: list[str] = []
    if lease.revoked:
        return v
    tag = f"lease {lease.lease_id:x}"
    evidence = [
        (t, how) for t, how in lease.gone if trust_lease_reads or how.startswith(COMMITTED_EVIDENCE)
    ]
    if evidence:
        first_gone, how = min(evidence)
        for sent, ttl in lease.renewals:
            if sent < first_gone < sent + ttl:
                v.append(
                    f"{tag}: seen gone ({how}) {sent + ttl - first_gone:.3f}s before its TTL "
                    f"{ttl}s from the renewal sent at {sent:.3f} ran out"
                )
                break
        for invoked, key, found in lease.key_reads:
            if invoked > first_gone and found:
                v.append(
                    f"{tag}: attached key {key} still readable {invoked - first_gone:.3f}s "
                    f"after the lease was seen gone ({how})"
                )
    if expiry_bound is not None and lease.stopped_renewing is not None:
        deadline = lease.stopped_renewing + lease.ttl + expiry_bound
        first = min(lease.gone)[0] if lease.gone else None
        if first is None or first > deadline:
            v.append(f"{tag}: not expired within TTL + {expiry_bound}s after renewals stopped")
    return v


def lagging_progress_notifies(watcher: WatcherLog) -> int:
    """Progress notifications below a revision the watch had already delivered.

    etcd before etcd-io/etcd#20229 sends them to a watch whose start revision
    is ahead of the member's own revision (a watch resumed on a member that
    lags behind the one it was on), at the member's revision.
    """
    lagging, high = 0, 0
    for batch in watcher.batches:
        if not batch.events and batch.revision < high:
            lagging += 1
        high = max(high, batch.revision)
    return lagging


def unconfirmed_lease_reads(lease: LeaseLog) -> int:
    """How many "gone" answers from lease reads a later read of an attached key contradicted."""
    return sum(
        1
        for t, how in lease.gone
        if not how.startswith(COMMITTED_EVIDENCE)
        and any(invoked > t and found for invoked, _, found in lease.key_reads)
    )


# ---------------------------------------------------------------------------- locks


def check_locks(
    lock_key: str,
    data_key: str,
    reference: Sequence[Event],
    acquisitions: Sequence[tuple[str, int]] = (),
    guarded_acks: Sequence[tuple[str, int, int]] = (),
    *,
    tokens_are_create_revisions: bool = True,
) -> list[str]:
    """Fencing: tokens increase, one holder at a time, guarded writes inside tenures.

    Judged from the committed history (events of ``lock_key`` and
    ``data_key`` in revision order). A tenure, and its fencing token, is

    * with ``tokens_are_create_revisions`` (a lease lock): the life of
      ``lock_key``, whose create revision is the token; the key must not be
      created while it exists;
    * otherwise (a fencing key, as the ``election`` package keeps): from a
      put of a non-empty value, whose revision is the token, to the next put
      or a delete; an empty value means released.

    The value of ``lock_key`` names the holder. Every write to ``data_key``
    carries ``{"token": t, "who": name}`` and is legal only during tenure
    ``t`` of that holder. ``acquisitions`` are (contender, token) the clients
    believed they got; ``guarded_acks`` (contender, token, revision) are
    guarded writes the store acknowledged. Both must be backed by the
    committed history.
    """
    v: list[str] = []
    holder: int | None = None  # the current tenure's token
    owners: dict[int, str] = {}  # token -> holder named by the lock key
    tokens: list[int] = []
    data_writes: dict[int, int] = {}
    for e in reference:
        if e.key == lock_key:
            if e.type == "delete" or (not tokens_are_create_revisions and not e.value):
                holder = None
                continue
            if tokens_are_create_revisions and e.create_revision != e.revision:
                holder = e.create_revision  # the holder rewrote its own key
                continue
            if tokens_are_create_revisions and holder is not None:
                v.append(f"lock taken at {e.revision} while held by token {holder}")
            if tokens and e.revision <= tokens[-1]:
                v.append(f"fencing token {e.revision} not above {tokens[-1]}")
            tokens.append(e.revision)
            owners[e.revision] = e.value
            holder = e.revision
        elif e.key == data_key and e.type == "put":
            try:
                write = json.loads(e.value)
                token = int(write["token"])
            except (ValueError, KeyError, TypeError):
                v.append(f"guarded write {_fmt(e)} has no token")
                continue
            data_writes[e.revision] = token
            if token != holder:
                v.append(
                    f"guarded write with token {token} accepted at revision {e.revision} "
                    f"while the holder's token was {holder}"
                )
            elif "who" in write and write["who"] != owners[token]:
                v.append(
                    f"guarded write by {write['who']} accepted at revision {e.revision} "
                    f"under {owners[token]}'s token {token}"
                )
    for who, token in acquisitions:
        if token not in owners:
            v.append(f"{who} believed it acquired token {token}, absent from history")
        elif owners[token] != who:
            v.append(f"{who} believed it acquired token {token}, which is {owners[token]}'s")
    for who, token, revision in guarded_acks:
        if data_writes.get(revision) != token:
            v.append(f"{who}'s guarded write (token {token}) acked at {revision} is not committed")
    return v


# ---------------------------------------------------------------------------- durability


def check_durability(
    reference: Sequence[Event],
    final_values: dict[str, str | None],
    hashes: dict[str, tuple[int, int]],
    members: Sequence[str] = (),
) -> list[str]:
    """After healing, every member agrees and the final state is the committed history's end.

    ``final_values``: key -> value read after the run (None = absent), for the
    keys of the workload. ``hashes``: member -> (revision, HashKV) at one
    common revision; each of ``members`` (the members at the end) must have one.
    """
    v: list[str] = [f"{m} gave no HashKV after healing" for m in members if m not in hashes]
    last: dict[str, Event] = {}
    for e in reference:
        last[e.key] = e
    for key, value in final_values.items():
        end = last.get(key)
        expected = end.value if end is not None and end.type == "put" else None
        if value != expected:
            v.append(f"final value of {key} is {value!r}, committed history ends with {expected!r}")
    revs = {rev for rev, _ in hashes.values()}
    values = {h for _, h in hashes.values()}
    if len(revs) > 1:
        v.append(f"HashKV taken at different revisions: {hashes}")
    elif len(values) > 1:
        v.append(f"members disagree: HashKV at revision {revs.pop()}: {hashes}")
    return v


def group_by_revision(events: Iterable[Event]) -> dict[int, list[Event]]:
    out: dict[int, list[Event]] = defaultdict(list)
    for e in events:
        out[e.revision].append(e)
    return out
