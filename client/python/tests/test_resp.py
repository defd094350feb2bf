"""The replica's own RESP reading (fnmesh.redisconn): every value, cut
anywhere, and a reader whose connection is killed."""

from __future__ import annotations

import random
from typing import Any

import pytest
from conftest import eventually, redis_url, run, unique

import fnmesh
from fnmesh.redisconn import ResponseError, _Incomplete, _parse


def encode(v: Any) -> bytes:
    if v is None:
        return b"$-1\r\n"
    if isinstance(v, int):
        return b":%d\r\n" % v
    if isinstance(v, str):
        b = v.encode()
        return b"$%d\r\n%s\r\n" % (len(b), b)
    return b"*%d\r\n" % len(v) + b"".join(encode(x) for x in v)


def value(rng: random.Random, depth: int = 0) -> Any:
    k = rng.randrange(5 if depth < 3 else 3)
    if k == 0:
        return None
    if k == 1:
        return rng.randrange(-10**6, 10**6)
    if k == 2:
        return "".join(rng.choice("ab\r\n$*:é-") for _ in range(rng.randrange(12)))
    return [value(rng, depth + 1) for _ in range(rng.randrange(5))]


def test_parse_every_value_cut_anywhere() -> None:
    rng = random.Random(7)
    for _ in range(300):
        v = value(rng)
        b = encode(v)
        assert _parse(b, 0) == (v, len(b))
        for cut in range(len(b)):
            with pytest.raises(_Incomplete):
                _parse(b[:cut], 0)
    err, pos = _parse(b"-NOGROUP no such key\r\n+OK\r\n", 0)
    assert isinstance(err, ResponseError) and str(err) == "NOGROUP no such key"
    assert _parse(b"-NOGROUP no such key\r\n+OK\r\n", pos) == ("OK", 27)
    assert _parse(b"*-1\r\n", 0) == (None, 5)


def test_replica_reads_again_after_its_connection_is_killed(raw: Any) -> None:
    async def main() -> None:
        svc = unique("kill")
        r = await fnmesh.serve(svc, {"f": lambda a: a}, url=redis_url(), allow_unauthenticated=True, block_ms=200)
        c = await fnmesh.connect(url=redis_url())
        try:
            assert await c.call(f"{svc}.f", 1) == 1
            # Kill this replica's read connection (named after the replica).
            name = f"fnmesh-replica-{r.id}"
            await eventually("the reader connected", lambda: any(x.get("name") == name for x in raw.client_list()))
            killed = 0
            for x in raw.client_list():
                if x.get("name") == name:
                    killed += raw.execute_command("CLIENT", "KILL", "ID", x["id"])
            assert killed >= 1
            for i in range(5):
                assert await c.call(f"{svc}.f", i, timeout=10) == i
        finally:
            await c.close()
            await r.close()

    run(main())
