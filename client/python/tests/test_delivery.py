"""Delivery on a Python replica: take-over of a dead replica's entries,
hand-back when it stops, the delivery limit, idempotency keys, the
backlog bound, versioned functions and the registry."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import eventually, redis_url, run, unique

import fnmesh
from fnmesh import Context, FnmeshError
from fnmesh.protocol import args_hash, idempotency_scope

HERE = Path(__file__).resolve().parent


def test_takes_over_entries_a_dead_replica_left(raw: Any) -> None:
    async def main() -> None:
        svc = unique("take")
        key = f"fnmesh:{{{svc}}}:req"
        raw.xgroup_create(key, "fnmesh", id="0", mkstream=True)
        c = await fnmesh.connect(url=redis_url())
        for i in range(5):
            await c.send(f"{svc}.f", {"k": i})
        # A replica that read them and died.
        assert len(raw.xreadgroup("fnmesh", "dead-one", {key: ">"}, count=10)[0][1]) == 5
        ran: list[tuple[int, int]] = []
        r = await fnmesh.serve(svc, {"f": lambda a, ctx: ran.append((a["k"], ctx.attempt))}, url=redis_url(),
                               allow_unauthenticated=True, claim_idle=0.3, claim_interval=0.1)
        try:
            await eventually("5 taken over", lambda: len(ran) == 5)
            assert sorted(ran) == [(i, 2) for i in range(5)]  # the second delivery of each
            await eventually("all acked", lambda: raw.xpending(key, "fnmesh")["pending"] == 0)
        finally:
            await c.close()
            await r.close()

    run(main())


def test_close_hands_back_what_did_not_finish(raw: Any) -> None:
    async def main() -> None:
        svc = unique("hand")
        key = f"fnmesh:{{{svc}}}:req"
        started = asyncio.Event()
        ran_by: list[str] = []

        async def slow(_: None, ctx: Context) -> None:
            if ctx.replica == "first":
                started.set()
                await asyncio.sleep(60)
            ran_by.append(f"{ctx.replica} {ctx.attempt}")

        first = await fnmesh.serve(svc, {"slow": slow}, url=redis_url(), allow_unauthenticated=True, replica_id="first", drain_timeout=0.2)
        c = await fnmesh.connect(url=redis_url())
        await c.send(f"{svc}.slow")
        await started.wait()
        t = time.monotonic()
        await first.close()
        assert time.monotonic() - t < 5
        # Handed back: idle for a day; the hand-back takes back its delivery,
        # so the next replica's run counts as the first.
        (row,) = raw.xpending_range(key, "fnmesh", "-", "+", 10)
        assert row["consumer"] == "first" and row["time_since_delivered"] >= 86_400_000 - 60_000 and row["times_delivered"] == 0
        second = await fnmesh.serve(svc, {"slow": slow}, url=redis_url(), allow_unauthenticated=True, replica_id="second", claim_interval=0.1)
        try:
            await eventually("taken over at once", lambda: ran_by == ["second 1"], 5)
        finally:
            await c.close()
            await second.close()

    run(main())


def test_sigterm_hands_back_and_exits(raw: Any) -> None:
    async def main() -> None:
        svc = unique("term")
        env = {**os.environ, "REDIS_URL": redis_url()}
        p = subprocess.Popen([sys.executable, str(HERE / "interop.py"), "serve", svc, "py-term"], stdout=subprocess.PIPE, env=env, text=True)
        try:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == "ready py-term"
            c = await fnmesh.connect(url=redis_url())
            assert await c.call(f"{svc}.who") == "py-term"
            await c.close()
            p.send_signal(signal.SIGTERM)
            assert p.wait(20) == 0
            assert p.stdout.readline().strip() == "stopped py-term"
            # It left the registry at once.
            assert raw.hget(f"fnmesh:{{{svc}}}:replicas", "py-term") is None
        finally:
            if p.poll() is None:
                p.kill()

    run(main())


def test_delivery_limit(raw: Any) -> None:
    async def main() -> None:
        svc = unique("poison")
        key = f"fnmesh:{{{svc}}}:req"
        raw.xgroup_create(key, "fnmesh", id="0", mkstream=True)
        c = await fnmesh.connect(url=redis_url())
        call = asyncio.ensure_future(c.call(f"{svc}.f", timeout=10))
        await eventually("request queued", lambda: raw.xlen(key) == 1)
        # Three replicas died on it: delivered three times.
        raw.xreadgroup("fnmesh", "dead-0", {key: ">"}, count=1)
        eid = raw.xrange(key)[0][0]
        raw.xclaim(key, "fnmesh", "dead-1", 0, [eid])
        raw.xclaim(key, "fnmesh", "dead-2", 0, [eid])
        ran: list[int] = []
        r = await fnmesh.serve(svc, {"f": lambda: ran.append(1)}, url=redis_url(), allow_unauthenticated=True,
                               claim_idle=0.2, claim_interval=0.1, max_deliveries=3)
        try:
            with pytest.raises(FnmeshError) as e:
                await call
            assert e.value.code == fnmesh.INTERNAL and "delivered" in e.value.message
            dead = f"fnmesh:{{{svc}}}:dead"
            await eventually("dead-lettered", lambda: raw.xlen(dead) == 1)
            assert raw.xrange(dead)[0][1]["attempts"] == "3"
            assert ran == []
        finally:
            await c.close()
            await r.close()

    run(main())


def test_idempotency_keys(raw: Any) -> None:
    async def main() -> None:
        svc = unique("idem")
        runs: list[int] = []

        def charge(a: dict[str, int]) -> dict[str, int]:
            runs.append(a["n"])
            return {"charged": a["n"], "run": len(runs)}

        r = await fnmesh.serve(svc, {"charge": charge}, url=redis_url(), allow_unauthenticated=True)
        c = await fnmesh.connect(url=redis_url())
        try:
            first = await c.call(f"{svc}.charge", {"n": 5}, idempotency_key="order-1")
            again = await c.call(f"{svc}.charge", {"n": 5}, idempotency_key="order-1")
            assert first == again == {"charged": 5, "run": 1}
            for _ in range(3):
                await c.send(f"{svc}.charge", {"n": 7}, idempotency_key="order-2")
            await c.call(f"{svc}.charge", {"n": 9})  # after the sends, on the same stream
            await eventually("sends settled", lambda: raw.xpending(f"fnmesh:{{{svc}}}:req", "fnmesh")["pending"] == 0)
            assert runs == [5, 7, 9]
            stored = f"fnmesh:{{{svc}}}:idem:{idempotency_scope('charge', '', 'order-1')}"
            assert raw.get(stored).split("|", 3)[2:] == [args_hash('{"n":5}'), '{"charged":5,"run":1}']
            assert 0 < raw.pttl(stored) <= 86_400_000
            assert raw.exists(f"fnmesh:{{{svc}}}:idem:order-1") == 0
        finally:
            await c.close()
            await r.close()

    run(main())


def test_idempotency_key_names_match_go_and_typescript() -> None:
    # The same vectors are in handlers/idempotency_test.go and client/js/test/security.test.ts.
    assert idempotency_scope("pay@v2", "alice", "k-1") == "e0ea0eb467b0fbaa4dddf8a6c8e493d207084bf9b84c9a3fdbdf31e6a934e1f7"
    assert args_hash('{"a":1}') == "015abd7f5cc57a2dd94b7590f04ad8084273905ee33ec5cebeae62276a97f862"
    # The subject's length keeps subject and key apart.
    assert idempotency_scope("f", "a", "bc") != idempotency_scope("f", "ab", "c")


def test_idempotency_key_is_scoped_to_the_function(raw: Any) -> None:
    async def main() -> None:
        svc = unique("idemfn")
        runs: list[str] = []

        def a(_: Any) -> str:
            runs.append("a")
            return "from a"

        def b(_: Any) -> str:
            runs.append("b")
            return "from b"

        def b2(_: Any) -> str:
            runs.append("b@v2")
            return "from b@v2"

        r = await fnmesh.serve(svc, {"a": a, "b": b, "b@v2": b2}, url=redis_url(), allow_unauthenticated=True)
        c = await fnmesh.connect(url=redis_url())
        try:
            assert await c.call(f"{svc}.a", {"x": 1}, idempotency_key="k") == "from a"
            assert await c.call(f"{svc}.b", {"x": 1}, idempotency_key="k") == "from b"
            assert await c.call(f"{svc}.b@v2", {"x": 1}, idempotency_key="k") == "from b@v2"
            assert await c.call(f"{svc}.b", {"x": 1}, idempotency_key="k") == "from b"
            assert runs == ["a", "b", "b@v2"]
        finally:
            await c.close()
            await r.close()

    run(main())


def test_idempotency_key_reused_with_other_arguments(raw: Any) -> None:
    async def main() -> None:
        svc = unique("idemargs")
        runs: list[int] = []

        def charge(a: dict[str, int]) -> int:
            runs.append(a["n"])
            return a["n"]

        r = await fnmesh.serve(svc, {"charge": charge}, url=redis_url(), allow_unauthenticated=True)
        c = await fnmesh.connect(url=redis_url())
        try:
            assert await c.call(f"{svc}.charge", {"n": 5}, idempotency_key="pay-7") == 5
            with pytest.raises(FnmeshError) as e:
                await c.call(f"{svc}.charge", {"n": 500}, idempotency_key="pay-7")
            assert e.value.code == fnmesh.INVALID_ARGUMENT
            assert e.value.message == f'idempotency key "pay-7" was already used with different arguments for {svc}.charge: use a new key for new arguments'
            await c.send(f"{svc}.charge", {"n": 600}, idempotency_key="pay-7")
            dead = f"fnmesh:{{{svc}}}:dead"
            await eventually("the send is dead-lettered", lambda: raw.xlen(dead) == 1)
            _, f = raw.xrange(dead)[0]
            assert f["code"] == fnmesh.INVALID_ARGUMENT and "different arguments" in f["reason"] and f["ik"] == "pay-7"
            assert await c.call(f"{svc}.charge", {"n": 5}, idempotency_key="pay-7") == 5
            assert runs == [5]
        finally:
            await c.close()
            await r.close()

    run(main())


def test_backlog_bound(raw: Any) -> None:
    async def main() -> None:
        svc = unique("bound")
        gate = asyncio.Event()

        async def wait() -> None:
            await gate.wait()

        r = await fnmesh.serve(svc, {"wait": wait}, url=redis_url(), allow_unauthenticated=True, concurrency=1, max_backlog=3)
        assert raw.hget(f"fnmesh:{{{svc}}}:limits", "max_backlog") == "3"
        c = await fnmesh.connect(url=redis_url(), admission_interval=0.01)
        try:
            await c.send(f"{svc}.wait")  # taken by the replica
            await eventually("running", lambda: r.running == 1)
            refused = 0
            for _ in range(6):
                try:
                    await c.send(f"{svc}.wait")
                except FnmeshError as e:
                    assert e.code == fnmesh.RESOURCE_EXHAUSTED
                    refused += 1
            # The bound is approximate by what was added since the last read
            # of the backlog (the running one may still count): never more
            # than 3 waiting, and the rest refused.
            (g,) = raw.xinfo_groups(f"fnmesh:{{{svc}}}:req")
            assert g["lag"] <= 3 and refused == 6 - g["lag"], f"{refused} of 6 refused, {g['lag']} waiting"
        finally:
            gate.set()
            await c.close()
            await r.close()

    run(main())


def test_versioned_functions_have_their_own_stream(raw: Any) -> None:
    async def main() -> None:
        svc = unique("ver")
        old = await fnmesh.serve(svc, {"add": lambda a: a["a"] + a["b"]}, url=redis_url(), allow_unauthenticated=True, replica_id="old")
        new = await fnmesh.serve(svc, {"add": lambda a: a["a"] + a["b"], "add@v2": lambda a: 10 * (a["a"] + a["b"])},
                                 url=redis_url(), allow_unauthenticated=True, replica_id="new")
        assert new.streams == [f"fnmesh:{{{svc}}}:req", f"fnmesh:{{{svc}}}:req:add@v2"]
        c = await fnmesh.connect(url=redis_url())
        try:
            for _ in range(20):
                out, info = await c.call_with_info(f"{svc}.add@v2", {"a": 1, "b": 2})
                assert (out, info.replica) == (30, "new")  # never the old build
            assert raw.xlen(f"fnmesh:{{{svc}}}:req:add@v2") >= 1
        finally:
            await c.close()
            await old.close()
            await new.close()

    run(main())


@dataclass
class Order:
    item: str
    qty: int = 1


def test_registry_record_with_schemas(raw: Any) -> None:
    def place(o: Order) -> dict[str, int]:
        return {"total": o.qty}

    async def main() -> None:
        svc = unique("reg")
        r = await fnmesh.serve(svc, {"place": place, "ping": fnmesh.Function(lambda: "pong", public=True)}, url=redis_url(),
                               auth=fnmesh.JWTAuth(hmac_secret="x" * 32), version="1.2.3", heartbeat=0.1)
        try:
            rec = json.loads(raw.hget(f"fnmesh:{{{svc}}}:replicas", r.id))
            assert rec["service"] == svc and rec["version"] == "1.2.3" and rec["pid"] == os.getpid()
            fns = {f["name"]: f for f in rec["functions"]}
            assert fns["place"]["access"] == "token" and fns["ping"]["access"] == "public"
            req = fns["place"]["request"]
            assert req["title"] == "Order" and req["required"] == ["item"]
            assert req["properties"] == {"item": {"type": "string"}, "qty": {"type": "integer"}}
            assert fns["place"]["response"]["type"] == "object"
            assert raw.zscore("fnmesh:services", svc) is not None
            assert set(raw.hkeys(f"fnmesh:{{{svc}}}:known")) == {"place", "ping"}
            assert float(raw.zscore(f"fnmesh:{{{svc}}}:beats", r.id)) > time.time() * 1000
            await eventually("stats heartbeat", lambda: raw.hget(f"fnmesh:{{{svc}}}:stats", r.id) is not None, 5)
        finally:
            await r.close()
        assert raw.hget(f"fnmesh:{{{svc}}}:replicas", r.id) is None

    run(main())


def test_leases_keep_a_long_run_from_being_taken_over(raw: Any) -> None:
    async def main() -> None:
        svc = unique("lease")
        runs: list[str] = []

        async def long(_: None, ctx: Context) -> str:
            runs.append(ctx.replica)
            await asyncio.sleep(2.0)  # more than three times the claim time
            return ctx.replica

        opts: dict[str, Any] = {"url": redis_url(), "allow_unauthenticated": True, "claim_idle": 0.5, "claim_interval": 0.05}
        a = await fnmesh.serve(svc, {"long": long}, replica_id="a", **opts)
        c = await fnmesh.connect(url=redis_url())
        try:
            call = asyncio.ensure_future(c.call(f"{svc}.long", timeout=10))
            await eventually("running on a", lambda: runs == ["a"])
            b = await fnmesh.serve(svc, {"long": long}, replica_id="b", **opts)
            try:
                assert await call == "a"
                assert runs == ["a"], "taken over while its replica was running it"
            finally:
                await b.close()
        finally:
            await c.close()
            await a.close()

    run(main())
