"""Deliberate bugs for proving the simulator's checkers can fail (mutation testing)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from kvstore.raft.log import RaftLog
from kvstore.raft.raft import RaftNode
from kvstore.raft.types import Message


def _commit_any_term(self: RaftLog, index: int, term: int) -> bool:
    # BUG (on purpose): counts replicas of entries from older terms (Raft paper, figure 8).
    if index > self.committed and self.term(index) is not None:
        self.commit_to(index)
        return True
    return False


def _read_without_quorum(self: RaftNode, m: Message) -> bool:
    # BUG (on purpose): answers a read index without confirming leadership, so a
    # deposed leader that does not know it yet serves stale reads.
    self._answer_read(m, self.log.committed)
    return True


MUTANTS: dict[str, tuple[type, str, Callable[..., object]]] = {
    "commit-any-term": (RaftLog, "maybe_commit", _commit_any_term),
    "read-without-quorum": (RaftNode, "_leader_read_index", _read_without_quorum),
}


@contextmanager
def mutant(name: str) -> Iterator[None]:
    """Temporarily install the named bug."""
    cls, attr, fn = MUTANTS[name]
    orig = getattr(cls, attr)
    setattr(cls, attr, fn)
    try:
        yield
    finally:
        setattr(cls, attr, orig)
