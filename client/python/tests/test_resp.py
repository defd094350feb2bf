"""The replica's own RESP reading (fnmesh.redisconn): every value, cut
anywhere, and a reader whose connection is killed."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest
from conftest import eventually, redis_url, run, unique

import fnmesh
from fnmesh.protocol import dead_letter_key
from fnmesh.redisconn import TOO_LARGE_PREFIX, ResponseError, _BoundedReader, _Cut, _entry_fields, _Incomplete, _parse


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


def feed(b: bytes, step: int) -> asyncio.StreamReader:
    r = asyncio.StreamReader()
    for i in range(0, len(b), step):
        r.feed_data(b[i : i + step])
    r.feed_eof()
    return r


def test_bounded_reader_reads_what_parse_reads() -> None:
    async def main() -> None:
        rng = random.Random(11)
        for _ in range(200):
            v = value(rng)
            b = encode(v) + b"+NEXT\r\n"
            br = _BoundedReader(feed(b, rng.randrange(1, 9)), b"", 1 << 20)
            assert await br.value() == v
            assert not br.cut
            assert await br.value() == "NEXT"

    asyncio.run(main())


def test_bounded_reader_cuts_a_long_bulk_string_to_its_prefix() -> None:
    async def main() -> None:
        big = b"x" * (3 * TOO_LARGE_PREFIX)
        reply = b"*2\r\n$3\r\n1-1\r\n*4\r\n$2\r\nid\r\n$1\r\na\r\n$1\r\np\r\n$%d\r\n%s\r\n" % (len(big), big)
        for step in (1, 7, 4096, len(reply)):
            br = _BoundedReader(feed(reply + b":5\r\n", step), b"", 100)
            v = await br.value()
            assert br.cut and v[0] == "1-1"
            cut = v[1][3]
            assert isinstance(cut, _Cut) and cut.size == len(big) and cut.prefix == big[:TOO_LARGE_PREFIX]
            assert _entry_fields(v[1]) == {"id": "a", "p": "x" * TOO_LARGE_PREFIX, "too_large": f"p {len(big)}"}
            assert await br.value() == 5
        # A field at the limit is read whole; the entry's own too_large
        # never hides the reader's.
        br = _BoundedReader(feed(encode(["p", "y" * 100, "too_large", "", "q", "z" * 101]), 13), b"", 100)
        v = await br.value()
        assert _entry_fields(v) == {"p": "y" * 100, "too_large": "q 101", "q": "z" * 101}
        # A character cut in two at the prefix's end is dropped.
        s = ("é" * TOO_LARGE_PREFIX).encode()
        br = _BoundedReader(feed(b"$%d\r\n%s\r\n" % (len(s), s[1:] + b"."), 1000), b"", 10)
        t = (await br.value()).text()
        assert len(t.encode()) <= TOO_LARGE_PREFIX and t.endswith("é")

    asyncio.run(main())


def test_replica_refuses_a_field_above_its_limit_as_a_go_replica_does(raw: Any) -> None:
    async def main() -> None:
        svc = unique("big")
        r = await fnmesh.serve(svc, {"f": lambda a: a}, url=redis_url(), allow_unauthenticated=True, max_payload_bytes=1000)
        c = await fnmesh.connect(url=redis_url())
        try:
            big = "z" * 10_000
            size = len(json.dumps(big))
            reason = f"malformed entry: field \"p\" of {size} bytes exceeds the replica's limit"
            with pytest.raises(fnmesh.FnmeshError) as e:
                await c.call(f"{svc}.f", big, timeout=10)
            assert (e.value.code, e.value.message) == ("invalid_argument", reason)
            await eventually("dead-lettered", lambda: raw.xlen(dead_letter_key(svc)) > 0)
            dead = raw.xrange(dead_letter_key(svc))
            assert len(dead) == 1
            d = dead[0][1]
            assert (d["code"], d["reason"], d["too_large"]) == ("invalid_argument", reason, f"p {size}")
            assert d["p"] == json.dumps(big)[:TOO_LARGE_PREFIX]
            assert await c.call(f"{svc}.f", [2], timeout=10) == [2]
        finally:
            await c.close()
            await r.close()

    run(main())


def test_replica_takes_over_an_oversized_entry_and_refuses_it_from_its_header(raw: Any) -> None:
    async def main() -> None:
        svc = unique("bigclaim")
        key = f"fnmesh:{{{svc}}}:req"
        raw.xgroup_create(key, "fnmesh", "0", mkstream=True)
        # Delivered to a replica that died before running it: pending, taken
        # over by XAUTOCLAIM only.
        size = 200_000
        raw.eval("""redis.call('XADD', KEYS[1], '*', 'v', '1', 'id', 'big-1', 'fn', 'f', 'p', string.rep('z', tonumber(ARGV[1])))
            return redis.call('XREADGROUP', 'GROUP', 'fnmesh', 'dead', 'COUNT', '1', 'STREAMS', KEYS[1], '>') and 1""", 1, key, size)
        r = await fnmesh.serve(svc, {"f": lambda a: a}, url=redis_url(), allow_unauthenticated=True, announce=False,
                               max_payload_bytes=1000, claim_idle=0.05, claim_interval=0.02)
        try:
            await eventually("dead-lettered", lambda: raw.xlen(dead_letter_key(svc)) > 0)
            dead = raw.xrange(dead_letter_key(svc))
            assert len(dead) == 1
            d = dead[0][1]
            reason = f"malformed entry: field \"p\" of {size} bytes exceeds the replica's limit"
            assert (d["code"], d["reason"], d["too_large"]) == ("invalid_argument", reason, f"p {size}")
            assert d["p"] == "z" * TOO_LARGE_PREFIX
            await eventually("acked", lambda: raw.xpending(key, "fnmesh")["pending"] == 0)
        finally:
            await r.close()
            raw.delete(key, dead_letter_key(svc))

    run(main())


def test_caller_fails_a_call_whose_reply_field_is_above_max_reply_bytes(raw: Any) -> None:
    def fail(a: Any) -> None:
        raise fnmesh.FnmeshError("app_error", a["msg"])

    async def main() -> None:
        svc = unique("bigreply")
        r = await fnmesh.serve(svc, {"echo": lambda a: a, "fail": fail}, url=redis_url(), allow_unauthenticated=True, announce=False)
        c = await fnmesh.connect(url=redis_url(), max_reply_bytes=1000)
        try:
            big = "z" * 5000
            with pytest.raises(fnmesh.FnmeshError) as e:
                await c.call(f"{svc}.echo", big, timeout=10)
            assert (e.value.code, e.value.message) == (
                "resource_exhausted", f"the reply's field \"p\" of {len(json.dumps(big))} bytes exceeds this client's limit of 1000 (max_reply_bytes)")
            with pytest.raises(fnmesh.FnmeshError) as e:
                await c.call(f"{svc}.fail", {"msg": big}, timeout=10)
            assert e.value.code == "resource_exhausted" and e.value.message.startswith("the reply's field \"msg\" of 5000 bytes exceeds")
            # At the limit, read whole; the client keeps working.
            fits = "y" * 998
            assert await c.call(f"{svc}.echo", fits, timeout=10) == fits
            with pytest.raises(fnmesh.FnmeshError) as e:
                await c.call(f"{svc}.fail", {"msg": "small"}, timeout=10)
            assert e.value.code == "app_error"
        finally:
            await c.close()
            await r.close()

    run(main())
