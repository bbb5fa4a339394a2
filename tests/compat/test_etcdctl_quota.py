"""The backend quota, NOSPACE alarms and defragmentation, through the real etcdctl.

Our 3-member cluster and a real 3-member etcd run with the same small
``--quota-backend-bytes``; the same etcdctl session fills the database, hits
the quota, lists the alarm, frees space (delete, compact, defrag), disarms
the alarm and writes again. Outputs must agree after masking member IDs and
URLs. How many large values fit before the quota differs between the two
backends (bbolt and LMDB lay pages out differently), and so does how many
members cross it first (each member judges its own backend and raises its
own alarm), so counts are bounded and alarm lines compared as sets.

As in etcd, the write that crosses a member's quota may still be applied
(every member applies it; the one that is full reports NOSPACE), so the
refused put may or may not be in the store afterwards.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from kvstore.local.etcd import run_etcdctl
from tests.compat.pairs import Server, side_by_side

QUOTA = 1024 * 1024
VALUE = "v" * (120 * 1024)
NOSPACE = "Error: etcdserver: mvcc: database space exceeded"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    with side_by_side(tmp_path_factory, "quota", (f"--quota-backend-bytes={QUOTA}",)) as pair:
        yield pair


def ctl(endpoints: list[str], *args: str, stdin: str | None = None) -> tuple[int, str]:
    """(exit status, stdout plus etcdctl's ``Error:`` line) with IDs and URLs masked."""
    proc = run_etcdctl(endpoints, *args, stdin=stdin)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    out = proc.stdout + "\n".join(errors)
    out = re.sub(r"memberID:\d+", "memberID:<ID>", out)
    return proc.returncode, re.sub(r"member\[[^\]]+\]", "member[<URL>]", out)


def lines(text: str) -> str:
    """Distinct lines, sorted (members raise identical-looking masked alarms)."""
    return "".join(sorted(set(text.splitlines(keepends=True))))


def session(server: Server) -> tuple[int, list[str]]:
    """Fill to the quota and recover; returns (values stored, outputs to compare)."""
    # One endpoint for the writes, so one member judges the quota and raises the alarm.
    first = server.endpoints[:1]
    stored = 0
    while True:
        code, out = ctl(first, "put", f"/quota/{stored}", stdin=VALUE)
        if code != 0:
            break
        assert out == "OK\n"
        stored += 1
        assert stored < 40, "the quota never bit"
    outputs = [out]
    outputs.append(lines(ctl(first, "alarm", "list")[1]))
    outputs.append(ctl(first, "put", "/small", "1")[1])  # refused while the alarm is raised
    outputs.append(ctl(first, "lease", "grant", "10")[1])
    status = json.loads(ctl(first, "endpoint", "status", "-w", "json")[1])
    outputs.append(repr(sorted(set(status[0]["Status"].get("errors", [])))))
    outputs.append(ctl(first, "get", "/quota/0", "--keys-only")[1])  # reads still work
    code, deleted = ctl(first, "del", "/quota/", "--prefix")
    assert code == 0 and int(deleted) in (stored, stored + 1)
    rev = json.loads(ctl(first, "get", "/none", "-w", "json")[1])["header"]["revision"]
    outputs.append(ctl(first, "compaction", "--physical", str(rev))[1].replace(str(rev), "<REV>"))
    outputs.append(ctl(server.endpoints, "defrag")[1])
    outputs.append(lines(ctl(first, "alarm", "disarm")[1]))
    outputs.append(ctl(first, "alarm", "list")[1])
    outputs.append(ctl(first, "put", "/small", "1")[1])
    return stored, outputs


def test_quota_alarm_defrag_disarm_like_etcd(servers: dict[str, Server]) -> None:
    results = {name: session(s) for name, s in servers.items()}
    (etcd_stored, etcd_out), (our_stored, our_out) = results["etcd"], results["kvstore"]
    assert our_out == etcd_out
    assert etcd_out[0] == NOSPACE
    assert etcd_out[1] == "memberID:<ID> alarm:NOSPACE \n"
    assert etcd_out[4] == repr(["memberID:<ID> alarm:NOSPACE "])
    assert etcd_out[-1] == "OK\n"
    # Both stored a few values, as many as ~1 MiB allows.
    assert 3 <= our_stored <= 9 and 3 <= etcd_stored <= 9, (our_stored, etcd_stored)
