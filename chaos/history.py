"""Operation histories recorded by the chaos workloads.

Every operation is recorded when it is invoked and again when it returns.
Times come from :func:`time.monotonic`. An operation ends in one of three
states, following Jepsen's vocabulary:

* ``ok``   -- the store acknowledged it; ``output`` holds what it returned.
* ``fail`` -- it definitely did not take effect (e.g. rejected before sending).
* ``info`` -- ambiguous: it timed out or its connection broke, so it may or may
  not have been applied. Checkers treat its return time as infinity.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

OK = "ok"
FAIL = "fail"
INFO = "info"


@dataclass
class Op:
    """One operation of a history.

    ``kind`` is one of ``put``, ``get``, ``cas``, ``delete`` for the register
    workload (other workloads use their own kinds and keep them out of the
    linearizability check). For ``cas``, ``expect`` is the value compared
    against (a compare on mod_revision is recorded with the value that was read
    at that mod_revision: values are unique, so the two are equivalent).
    ``output`` for ``get`` is the value read (``None`` = absent); for ``cas``
    it is ``[succeeded, current_value_if_failed]``.
    """

    id: int
    process: str
    kind: str
    key: str
    value: str | None = None
    expect: str | None = None
    invoke: float = 0.0
    ret: float | None = None
    status: str = INFO
    output: Any = None
    revision: int | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def return_time(self) -> float:
        """The return time, infinite for ambiguous or unfinished operations."""
        if self.status == INFO or self.ret is None:
            return math.inf
        return self.ret

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> Op:
        return cls(**json.loads(line))


class History:
    """A thread-safe append-only list of :class:`Op` with invoke/complete helpers."""

    def __init__(self) -> None:
        self._ops: list[Op] = []
        self._lock = threading.Lock()

    def invoke(self, process: str, kind: str, key: str, **fields: Any) -> Op:
        """Record the invocation of an operation now and return it for completion."""
        with self._lock:
            op = Op(id=len(self._ops), process=process, kind=kind, key=key, **fields)
            op.invoke = time.monotonic()
            self._ops.append(op)
        return op

    @staticmethod
    def complete(
        op: Op,
        status: str,
        output: Any = None,
        revision: int | None = None,
        error: str | None = None,
    ) -> None:
        """Record the return of ``op`` now with its outcome."""
        op.ret = time.monotonic()
        op.status = status
        op.output = output
        op.revision = revision
        op.error = error

    @property
    def ops(self) -> list[Op]:
        with self._lock:
            return list(self._ops)

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops)

    def __len__(self) -> int:
        return len(self._ops)

    def dump(self, path: Path) -> None:
        """Write the history as JSON lines."""
        with path.open("w") as f:
            for op in self.ops:
                f.write(op.to_json() + "\n")

    @staticmethod
    def load(path: Path) -> list[Op]:
        return [Op.from_json(line) for line in path.read_text().splitlines() if line.strip()]

    @staticmethod
    def counts(ops: Iterable[Op]) -> dict[str, dict[str, int]]:
        """Operation counts by kind and outcome: ``{kind: {status: n}}``."""
        out: dict[str, dict[str, int]] = {}
        for op in ops:
            per = out.setdefault(op.kind, {})
            per[op.status] = per.get(op.status, 0) + 1
        return out
