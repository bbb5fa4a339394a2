"""Run by test_auth_matrix: the aetcd client logs in to one endpoint; prints what it saw (JSON)."""

from __future__ import annotations

import asyncio
import json
import sys

import aetcd
import aetcd.exceptions


async def main(endpoint: str) -> dict[str, str]:
    host, port = endpoint.rsplit(":", 1)
    seen: dict[str, str] = {}
    async with aetcd.Client(host, int(port), username="readwrite-prefix", password="pw") as c:
        await c.put(b"/m/p/third", b"party")
        got = await c.get(b"/m/p/third")
        seen["get"] = got.value.decode() if got is not None else ""
        await c.delete(b"/m/p/third")
        seen["after delete"] = repr(await c.get(b"/m/p/third"))
        for label, key in (("put outside", b"/m/z"), ("get outside", b"/m/k")):
            try:
                if label.startswith("put"):
                    await c.put(key, b"no")
                else:
                    await c.get(key)
                seen[label] = "ok"
            except aetcd.exceptions.ClientError as error:
                seen[label] = f"{type(error).__name__}: {error}"
    try:
        async with aetcd.Client(host, int(port), username="readwrite-prefix", password="x") as c:
            await c.get(b"/m/p/x")
        seen["wrong password"] = "accepted"
    except aetcd.exceptions.ClientError as error:
        seen["wrong password"] = f"{type(error).__name__}: {error}"
    return seen


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1]))))
