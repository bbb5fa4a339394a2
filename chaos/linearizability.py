"""Linearizability checking of register histories.

The algorithm is Wing & Gong's search for a legal sequential order, with
Lowe's "just-in-time" refinement and memoisation of visited configurations
(the set of linearized operations plus the model state), and with the history
partitioned per key (a history is linearizable iff each key's sub-history
is, since every operation touches one key), as porcupine does.

The search walks a doubly linked list of call/return events in time order.
An operation may be linearized next only if its call comes before the first
remaining return event (no pending operation has already returned before it
was invoked). Linearizing an operation removes both of its events from the
list; backtracking puts them back. Ambiguous operations have no return event
(their return time is infinity): they may be linearized at any point after
their call, or never. The search succeeds once every operation that has a
return event is linearized.

Ambiguous writes whose value nobody ever observed are dropped before the
search. This is sound and complete: values are unique, so if such a write is
part of some linearization, nothing reads the register between it and the
next write, and the linearization without it is legal too.
"""

from __future__ import annotations

import logging
import math
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from chaos.history import FAIL, INFO, OK, Op

log = logging.getLogger(__name__)

KV_KINDS = frozenset({"put", "get", "cas", "delete"})

Value = str | None


@dataclass
class LinearizabilityResult:
    """Outcome of a check: ``ok``, and for each failing key a short explanation."""

    ok: bool
    checked_ops: int = 0
    keys: int = 0
    failures: dict[str, str] = field(default_factory=dict)
    # Keys whose search hit the step budget: neither proven nor refuted.
    unknown: list[str] = field(default_factory=list)


def step(state: Value, op: Op) -> tuple[bool, Value]:
    """The sequential register: apply ``op`` to ``state``; return (legal, new state)."""
    ambiguous = op.status == INFO
    if op.kind == "put":
        return True, op.value
    if op.kind == "delete":
        return True, None
    if op.kind == "get":
        return op.output == state, state
    if op.kind == "cas":
        if ambiguous:
            # Applying it is only possible when the compare holds; "failed" is
            # the same as not linearizing it at all.
            return (True, op.value) if state == op.expect else (False, state)
        succeeded, current = op.output
        if succeeded:
            return (True, op.value) if state == op.expect else (False, state)
        return state != op.expect and state == current, state
    raise ValueError(f"unknown register operation {op.kind!r}")


def _observed_values(ops: Sequence[Op]) -> set[Value]:
    seen: set[Value] = set()
    for op in ops:
        if op.kind == "get" and op.status == OK:
            seen.add(op.output)
        elif op.kind == "cas":
            seen.add(op.expect)
            if op.status == OK and not op.output[0]:
                seen.add(op.output[1])
    return seen


def prepare(ops: Iterable[Op]) -> list[Op]:
    """Keep the operations that matter for the search.

    Definite failures and failed or ambiguous reads have no effect and are
    dropped, as are ambiguous writes whose value nobody observed.
    """
    kept = [
        op
        for op in ops
        if op.kind in KV_KINDS and op.status != FAIL and not (op.kind == "get" and op.status != OK)
    ]
    seen = _observed_values(kept)
    return [
        op
        for op in kept
        if not (op.status == INFO and op.kind in ("put", "cas") and op.value not in seen)
    ]


def check_key(ops: Sequence[Op], initial: Value = None, max_steps: int = 2_000_000) -> str | None:
    """Check one key's history. Returns ``None`` if linearizable, else a reason.

    The search first remembers visited configurations by a 64-bit hash of the
    set of linearized operations (Zobrist hashing: constant time and memory per
    step; a set of bits costs both in proportion to the history). A collision
    could only prune a branch, never accept a history that has no
    linearization, so a failure is confirmed by the exact search.

    Raises :class:`TimeoutError` when the search exceeds ``max_steps``.
    """
    if _search(ops, initial, max_steps, hashed=True) is None:
        return None
    return _search(ops, initial, max_steps, hashed=False)


def _search(ops: Sequence[Op], initial: Value, max_steps: int, *, hashed: bool) -> str | None:
    n = len(ops)
    if n == 0:
        return None
    # Events: (time, is_return, op index). Calls sort before returns at equal times.
    events: list[tuple[float, int, int]] = []
    for i, op in enumerate(ops):
        events.append((op.invoke, 0, i))
        if op.return_time != math.inf:
            events.append((op.return_time, 1, i))
    events.sort()
    m = len(events)
    head = m  # sentinel index
    nxt = [0] * (m + 1)
    prv = [0] * (m + 1)
    order = [head, *range(m)]
    for a, b in zip(order, [*order[1:], head], strict=True):
        nxt[a] = b
        prv[b] = a
    call_of = [0] * n
    ret_of = [-1] * n
    for idx, (_, is_ret, i) in enumerate(events):
        if is_ret:
            ret_of[i] = idx
        else:
            call_of[i] = idx
    remaining = sum(1 for r in ret_of if r >= 0)

    def unlink(e: int) -> None:
        nxt[prv[e]] = nxt[e]
        prv[nxt[e]] = prv[e]

    def relink(e: int) -> None:
        nxt[prv[e]] = e
        prv[nxt[e]] = e

    # Each operation's mark in the set of linearized ones: a bit, or a random 64-bit
    # word XORed into the set's hash.
    rng = random.Random(n)
    marks = [rng.getrandbits(64) if hashed else 1 << i for i in range(n)]
    state: Value = initial
    done = 0
    cache: set[tuple[int, Value]] = {(0, initial)}
    stack: list[tuple[int, Value, int]] = []  # (op index, state before, its call event)
    best: list[int] = []
    best_len, deepest = 0, False
    entry = nxt[head]
    steps = 0
    while True:
        if remaining == 0:
            return None
        steps += 1
        if steps > max_steps:
            raise TimeoutError(f"search exceeded {max_steps} steps on {n} operations")
        if entry != head and events[entry][1] == 0:
            i = events[entry][2]
            legal, new_state = step(state, ops[i])
            if legal:
                new_done = done ^ marks[i]
                if (new_done, new_state) not in cache:
                    cache.add((new_done, new_state))
                    stack.append((i, state, entry))
                    state, done = new_state, new_done
                    unlink(call_of[i])
                    if ret_of[i] >= 0:
                        unlink(ret_of[i])
                        remaining -= 1
                    if len(stack) > best_len:
                        best_len, deepest = len(stack), True
                    entry = nxt[head]
                    continue
            entry = nxt[entry]
            continue
        # A return event (or the end): nothing more can go next here; backtrack.
        if not stack:
            linearized = set(best)
            pending = [ops[j] for j in range(n) if j not in linearized]
            stuck = min(pending, key=lambda o: o.return_time)
            last = ops[best[-1]] if best else None
            return (
                f"no linearization: longest prefix {len(best)}/{n} ops; cannot place "
                f"op {stuck.id} ({_describe(stuck)}) after op "
                f"{last.id if last else '-'} ({_describe(last) if last else 'start'})"
            )
        if deepest:
            # Leaving the longest prefix found so far: kept for the failure's report
            # (copied here rather than at each step deeper, which costs the square).
            best, deepest = [s[0] for s in stack], False
        i, state, entry = stack.pop()
        done ^= marks[i]
        if ret_of[i] >= 0:
            relink(ret_of[i])
            remaining += 1
        relink(call_of[i])
        entry = nxt[entry]


def _describe(op: Op) -> str:
    return (
        f"{op.process} {op.kind} {op.key} value={op.value!r} expect={op.expect!r} "
        f"-> {op.status} {op.output!r} [{op.invoke:.3f}, {op.return_time:.3f}]"
    )


def check(ops: Iterable[Op], max_steps: int = 2_000_000) -> LinearizabilityResult:
    """Check a register history (all keys start absent), partitioned per key."""
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in prepare(ops):
        by_key[op.key].append(op)
    result = LinearizabilityResult(ok=True, keys=len(by_key))
    for key, key_ops in sorted(by_key.items()):
        result.checked_ops += len(key_ops)
        try:
            reason = check_key(key_ops, max_steps=max_steps)
        except TimeoutError as error:
            log.warning("linearizability of %s undecided: %s", key, error)
            result.unknown.append(key)
            continue
        if reason is not None:
            result.ok = False
            result.failures[key] = reason
    return result


def check_revision_order(ops: Iterable[Op]) -> list[str]:
    """Cross-key real-time check on response revisions.

    If operation A returned (acknowledged) before B was invoked, B's header
    revision must not be lower than A's: a linearizable store never shows a
    later client an older state.
    """
    done = sorted(
        (op for op in ops if op.status == OK and op.revision is not None and op.ret is not None),
        key=lambda o: o.invoke,
    )
    by_ret = sorted(done, key=lambda o: o.return_time)
    violations: list[str] = []
    best: Op | None = None
    j = 0
    for op in done:
        while j < len(by_ret) and by_ret[j].return_time < op.invoke:
            cand = by_ret[j]
            if best is None or (cand.revision or 0) > (best.revision or 0):
                best = cand
            j += 1
        if best is not None and (op.revision or 0) < (best.revision or 0):
            violations.append(
                f"op {op.id} ({op.kind} {op.key}) saw revision {op.revision} after op "
                f"{best.id} ({best.kind} {best.key}) had returned revision {best.revision}"
            )
    return violations
