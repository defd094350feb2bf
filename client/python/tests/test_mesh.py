"""The Python caller and worker against a real Redis: the behaviours a Go
replica and caller have, checked on the wire."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any, TypedDict

import pytest
from conftest import eventually, redis_url, run, unique

import fnmesh
from fnmesh import Context, FieldViolation, FnmeshError, Function, RetryPolicy

FAST = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05)


@dataclass
class AddIn:
    a: float
    b: float


class Point(TypedDict):
    x: int
    y: int


def add(args: AddIn, ctx: Context) -> dict[str, Any]:
    return {"sum": args.a + args.b, "replica": ctx.replica, "caller": ctx.caller, "deadline": ctx.deadline}


async def serve(service: str, fns: dict[str, Any], **opts: Any) -> fnmesh.Replica:
    opts.setdefault("url", redis_url())
    if "auth" not in opts:
        opts.setdefault("allow_unauthenticated", True)
    return await fnmesh.serve(service, fns, **opts)


def test_call_returns_result_and_who_answered() -> None:
    async def main() -> None:
        svc = unique("math")
        r = await serve(svc, {"add": add})
        c = await fnmesh.connect(url=redis_url(), name="py-test")
        try:
            before = time.time()
            out, info = await c.call_with_info(f"{svc}.add", {"a": 2, "b": 3}, timeout=5)
            assert out["sum"] == 5
            assert out["replica"] == r.id == info.replica
            assert out["caller"] == "py-test"
            assert before + 5 <= out["deadline"] + 0.002 and out["deadline"] <= time.time() + 5
            assert info.id.startswith(c.inbox + "-")
        finally:
            await c.close()
            await r.close()

    run(main())


def test_inbox_named_after_the_redis_user() -> None:
    """§6: fnmesh:reply:{USER:RANDOM} for an ACL user of the URL, else RANDOM."""
    from fnmesh.protocol import inbox_id

    assert inbox_id("redis://web:pw@127.0.0.1:6379", "abc") == "web:abc"
    assert inbox_id("redis://default:pw@127.0.0.1:6379", "abc") == "abc"
    assert inbox_id("redis://127.0.0.1:6379", "abc") == "abc"
    with pytest.raises(FnmeshError) as e:
        inbox_id("redis://we%7Bb:pw@127.0.0.1:6379", "abc")
    assert e.value.code == "invalid_argument"


def test_errors_carry_code_message_and_fields() -> None:
    def fail(a: dict[str, str]) -> None:
        raise FnmeshError(a["code"], a["message"])

    def boom() -> None:
        raise RuntimeError("boom from python")

    def bad_code() -> None:
        raise FnmeshError("Not A Code", "x")

    def check(a: Point) -> list[FieldViolation] | None:
        return [FieldViolation("y", "gte", "0")] if a["y"] < 0 else None

    async def main() -> None:
        svc = unique("errs")
        r = await serve(svc, {
            "fail": fail, "boom": boom, "bad": bad_code, "add": add,
            "point": Function(lambda p: p["x"] + p["y"], validate=check), "typed": _typed_point,
        })
        c = await fnmesh.connect(url=redis_url())
        try:
            with pytest.raises(FnmeshError) as e:
                await c.call(f"{svc}.fail", {"code": "out_of_stock", "message": "no more widgets"})
            assert (e.value.code, e.value.message, e.value.replica) == ("out_of_stock", "no more widgets", r.id)
            with pytest.raises(FnmeshError) as e:
                await c.call(f"{svc}.boom")
            assert e.value.code == fnmesh.INTERNAL and "boom from python" in e.value.message
            with pytest.raises(FnmeshError) as e:
                await c.call(f"{svc}.bad")
            assert e.value.code == fnmesh.INTERNAL
            with pytest.raises(FnmeshError) as e:
                await c.call(f"{svc}.nosuch")
            assert e.value.code == fnmesh.NOT_FOUND
            with pytest.raises(FnmeshError) as e:
                await c.call(f"{svc}.add", {"a": 1})
            assert e.value.code == fnmesh.INVALID_ARGUMENT and e.value.fields == [FieldViolation("b", "required")]
            with pytest.raises(FnmeshError) as e:
                await c.call(f"{svc}.point", {"x": 1, "y": -1})
            assert e.value.code == fnmesh.INVALID_ARGUMENT and e.value.fields == [FieldViolation("y", "gte", "0")]
            assert await c.call(f"{svc}.typed", {"x": 1, "y": 2}) == 3
            with pytest.raises(FnmeshError) as e:
                await c.call(f"{svc}.typed", {"x": 1})
            assert e.value.fields == [FieldViolation("y", "required")]
            with pytest.raises(FnmeshError) as e:
                await c.call("nosvc" + unique("x") + ".f", timeout=0.2)
            assert e.value.code == fnmesh.NOT_FOUND  # no replica ever: NOMKSTREAM refuses it
            with pytest.raises(FnmeshError) as e:
                await c.call("no-dot")
            assert e.value.code == fnmesh.INVALID_ARGUMENT
        finally:
            await c.close()
            await r.close()

    run(main())


def test_a_functions_bug_reaches_callers_without_its_text(caplog: pytest.LogCaptureFixture) -> None:
    def lookup(a: dict[str, Any]) -> Any:
        return {"card": "4111-SECRET"}[a["k"]]  # KeyError: its text is the caller's key

    async def concat(a: dict[str, Any]) -> Any:
        await asyncio.sleep(0)
        return "token=SECRET-abc " + a["n"]  # TypeError: can only concatenate str (not "int") to str

    async def main() -> None:
        svc = unique("bug")
        r = await serve(svc, {"lookup": lookup, "concat": concat})
        c = await fnmesh.connect(url=redis_url())
        try:
            for fn, args, kind in (("lookup", {"k": "user-SECRET-key"}, "KeyError"), ("concat", {"n": 1}, "TypeError")):
                with pytest.raises(FnmeshError) as e:
                    await c.call(f"{svc}.{fn}", args)
                assert e.value.code == fnmesh.INTERNAL
                assert "SECRET" not in e.value.message and "concatenate" not in e.value.message
                assert e.value.message.startswith(f"{svc}.{fn} raised a {kind}; its worker logged it under request id ")
                rid = e.value.message.rsplit(" ", 1)[1]
                logged = [rec for rec in caplog.records if rid in rec.getMessage()]
                assert logged and logged[0].exc_info is not None and logged[0].exc_info[0].__name__ == kind
        finally:
            await c.close()
            await r.close()

    with caplog.at_level("ERROR", logger="fnmesh"):
        run(main())


def _typed_point(p: Point) -> int:
    return p["x"] + p["y"]


def test_concurrency_bound_and_deadline() -> None:
    async def main() -> None:
        svc = unique("conc")
        running = 0
        peak = 0
        gate = asyncio.Event()

        async def wait() -> str:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await gate.wait()
            running -= 1
            return "done"

        async def slow(a: dict[str, float]) -> str:
            await asyncio.sleep(a["s"])
            return "late"

        r = await serve(svc, {"wait": wait, "slow": slow}, concurrency=3)
        c = await fnmesh.connect(url=redis_url())
        try:
            calls = [asyncio.ensure_future(c.call(f"{svc}.wait", timeout=10)) for _ in range(8)]
            await eventually("3 running", lambda: running == 3)
            await asyncio.sleep(0.2)  # no fourth starts while three run
            assert peak == 3
            gate.set()
            assert await asyncio.gather(*calls) == ["done"] * 8
            assert peak == 3
            t = time.monotonic()
            with pytest.raises(FnmeshError) as e:
                await c.call(f"{svc}.slow", {"s": 5}, timeout=0.3)
            assert e.value.code == fnmesh.DEADLINE_EXCEEDED and time.monotonic() - t < 4
        finally:
            await c.close()
            await r.close()

    run(main())


def test_sync_functions_run_off_the_event_loop() -> None:
    async def main() -> None:
        svc = unique("sync")

        def block(a: dict[str, float]) -> str:
            time.sleep(a["s"])
            return "slept"

        r = await serve(svc, {"block": block, "add": add})
        c = await fnmesh.connect(url=redis_url())
        try:
            slow = asyncio.ensure_future(c.call(f"{svc}.block", {"s": 3}))
            await eventually("the blocking function started", lambda: r.running == 1)
            assert (await c.call(f"{svc}.add", {"a": 1, "b": 1}))["sum"] == 2
            assert not slow.done(), "a blocking function held up another call"
            assert await slow == "slept"
        finally:
            await c.close()
            await r.close()

    run(main())


def test_sends_run_retry_and_dead_letter(raw: Any) -> None:
    async def main() -> None:
        svc = unique("sends")
        runs: dict[str, int] = {}
        attempts: list[int] = []

        def record(a: dict[str, str]) -> None:
            runs[a["key"]] = runs.get(a["key"], 0) + 1

        def flaky(a: None, ctx: Context) -> None:
            attempts.append(ctx.attempt)
            raise RuntimeError("always fails")

        def denied() -> None:
            raise FnmeshError(fnmesh.PERMISSION_DENIED, "no")

        r = await serve(svc, {"record": record, "flaky": flaky, "denied": denied}, retry=FAST)
        c = await fnmesh.connect(url=redis_url())
        try:
            for i in range(20):
                await c.send(f"{svc}.record", {"key": f"k{i}"})
            await eventually("20 sends run", lambda: len(runs) == 20)
            assert set(runs.values()) == {1}
            rid = await c.send(f"{svc}.flaky")
            await c.send(f"{svc}.denied")
            dead = f"fnmesh:{{{svc}}}:dead"
            await eventually("2 dead letters", lambda: raw.xlen(dead) == 2)
            letters = {f["fn"]: f for _, f in raw.xrange(dead)}
            assert attempts == [1, 2, 3]
            d = letters["flaky"]
            assert (d["code"], d["attempts"], d["by"], d["id"]) == ("internal", "3", r.id, rid)
            assert d["entry"] and d["reason"] == "always fails" and int(d["at"]) > 0
            assert (letters["denied"]["code"], letters["denied"]["attempts"]) == ("permission_denied", "1")
            await eventually("all acked", lambda: raw.xpending(f"fnmesh:{{{svc}}}:req", "fnmesh")["pending"] == 0)
        finally:
            await c.close()
            await r.close()

    run(main())


def test_malformed_entries_are_answered_and_dead_lettered(raw: Any) -> None:
    async def main() -> None:
        svc = unique("bad")
        r = await serve(svc, {"add": add})
        c = await fnmesh.connect(url=redis_url())
        key = f"fnmesh:{{{svc}}}:req"
        try:
            inbox = c.reply_key
            cases = {
                "v2": {"v": "2", "id": "m1", "fn": "add", "rt": inbox},
                "dl": {"id": "m2", "fn": "add", "rt": inbox, "dl": "soon"},
                "json": {"id": "m3", "fn": "add", "rt": inbox, "p": "{nope"},
                "noid": {"fn": "add", "rt": inbox},
                "rt": {"id": "m5", "fn": "add", "rt": "elsewhere"},
                "big": {"id": "m6", "fn": "add", "rt": inbox, "p": json.dumps({"a": "x" * (1 << 20)})},
            }
            # Read the answers straight from the inbox.
            start = raw.xrevrange(inbox, count=1)[0][0]
            for f in cases.values():
                raw.xadd(key, f)
            dead = f"fnmesh:{{{svc}}}:dead"
            await eventually("6 dead letters", lambda: raw.xlen(dead) == 6)
            answers = {f["id"]: f for _, f in raw.xrange(inbox, min="(" + start) if "id" in f}
            assert set(answers) == {"m1", "m2", "m3", "m6"}  # no id, or no valid inbox: nobody to answer
            for a in answers.values():
                assert a["code"] == "invalid_argument" and a["by"] == r.id
            assert "protocol version" in answers["m1"]["msg"]
            assert all(f["code"] == "invalid_argument" and f["attempts"] == "0" for _, f in raw.xrange(dead))
            await eventually("all acked", lambda: raw.xpending(key, "fnmesh")["pending"] == 0)
            # Still serving.
            assert (await c.call(f"{svc}.add", {"a": 1, "b": 2}))["sum"] == 3
        finally:
            await c.close()
            await r.close()

    run(main())


def test_expired_requests_never_run(raw: Any) -> None:
    async def main() -> None:
        svc = unique("exp")
        ran: list[str] = []
        r = await serve(svc, {"f": lambda a: ran.append(a["k"])})
        c = await fnmesh.connect(url=redis_url())
        try:
            key = f"fnmesh:{{{svc}}}:req"
            past = str(int(time.time() * 1000) - 1000)
            raw.xadd(key, {"id": "s1", "fn": "f", "dl": past, "p": '{"k":"send"}'})
            raw.xadd(key, {"id": "c1", "fn": "f", "dl": past, "rt": c.reply_key, "p": '{"k":"call"}'})
            await c.send(f"{svc}.f", {"k": "ok"})
            await eventually("the live send ran", lambda: ran == ["ok"])
            dead = f"fnmesh:{{{svc}}}:dead"
            await eventually("the expired send dead-lettered", lambda: raw.xlen(dead) == 1)
            assert raw.xrange(dead)[0][1]["code"] == "deadline_exceeded"
            await eventually("all acked", lambda: raw.xpending(key, "fnmesh")["pending"] == 0)
            assert ran == ["ok"]
        finally:
            await c.close()
            await r.close()

    run(main())
