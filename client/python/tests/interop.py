"""A Python replica or caller for the Go interop tests
(integration/python_test.go) and this suite's process tests.

  python3 tests/interop.py serve SERVICE REPLICA [--secret S] [--concurrency N] [--claim-idle SECONDS]
    serves who, sleep, add, div, fail, boom, me, admin (role admin), ping
    (public), record and add@v2; prints "ready REPLICA" once in the group,
    and on SIGTERM drains and prints "stopped REPLICA".
  python3 tests/interop.py call FN JSON [--timeout MS] [--token T]
  python3 tests/interop.py send FN JSON [--token T]
    print one JSON line: {"ok":true,"result":...,"replica":...} or
    {"ok":false,"code":...,"message":...,"fields":[...]}, with the peak
    RSS in KB once connected (rss_before_kb) and after (rss_peak_kb).

REDIS_URL names the server.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis.asyncio as aioredis  # noqa: E402

import fnmesh  # noqa: E402
from fnmesh import Context, FieldViolation, FnmeshError, Function  # noqa: E402


def flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


@dataclass
class AddIn:
    a: float
    b: float


@dataclass
class Result:
    value: float
    replica: str


@dataclass
class SleepIn:
    ms: int = 0
    key: str = ""


async def serve(service: str, replica_id: str, args: list[str]) -> None:
    secret = flag(args, "--secret")
    counter = aioredis.Redis.from_url(os.environ["REDIS_URL"], decode_responses=True)

    def who(_: None, ctx: Context) -> str:
        return ctx.replica

    async def sleep(a: SleepIn, ctx: Context) -> str:
        await asyncio.sleep(a.ms / 1000)
        if a.key:
            await counter.hincrby(f"runs:{service}", a.key, 1)
        return ctx.replica

    def add(a: AddIn, ctx: Context) -> Result:
        return Result(a.a + a.b, ctx.replica)

    def add_v2(a: AddIn, ctx: Context) -> Result:
        return Result(10 * (a.a + a.b), ctx.replica)

    def div(a: AddIn, ctx: Context) -> Result:
        return Result(a.a / a.b, ctx.replica)

    def fail(a: dict[str, str]) -> None:
        raise FnmeshError(a["code"], a["message"])

    def boom() -> None:
        raise RuntimeError("boom from python")

    def me(_: None, ctx: Context) -> dict[str, Any]:
        return {"sub": (ctx.claims or {}).get("sub"), "replica": ctx.replica}

    async def record(a: dict[str, str]) -> str:
        # Counts runs in Redis, so tests count across processes.
        await counter.hincrby(f"fnmesh-test:runs:{service}", a["key"], 1)
        return "recorded"

    opts: dict[str, Any] = {"auth": fnmesh.JWTAuth(hmac_secret=secret)} if secret else {"allow_unauthenticated": True}
    claim_idle = flag(args, "--claim-idle")
    if claim_idle:
        opts["claim_idle"] = float(claim_idle)
    r = await fnmesh.serve(
        service,
        {
            "who": who, "sleep": sleep, "add": add, "add@v2": add_v2,
            "div": Function(div, validate=lambda a: [FieldViolation("b", "ne", "0")] if a.b == 0 else None),
            "fail": fail, "boom": boom, "me": me,
            "admin": Function(lambda: "admin only", require_role="admin"),
            "ping": Function(lambda: "pong", public=True),
            "record": record,
        },
        url=os.environ["REDIS_URL"], replica_id=replica_id,
        concurrency=int(flag(args, "--concurrency") or 64), **opts,
    )
    print(f"ready {r.id}", flush=True)
    await r.wait_for_signal()
    await counter.close()
    print(f"stopped {r.id}", flush=True)


async def caller(mode: str, fn: str, body: str, args: list[str]) -> None:
    c = await fnmesh.connect(url=os.environ["REDIS_URL"], name="python-interop")
    # Peak RSS (KB) once connected, and after the call: tests bound what a call costs.
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        token = flag(args, "--token")
        timeout = flag(args, "--timeout")
        parsed = json.loads(body) if body else None
        if mode == "send":
            out: dict[str, Any] = {"ok": True, "id": await c.send(fn, parsed, token=token)}
        else:
            result, info = await c.call_with_info(fn, parsed, token=token, timeout=int(timeout) / 1000 if timeout else None)
            out = {"ok": True, "result": result, "replica": info.replica, "id": info.id}
    except FnmeshError as e:
        out = {"ok": False, "code": e.code, "message": e.message, "fields": [v.to_json() for v in e.fields]}
    finally:
        await c.close()
    out.update(rss_before_kb=before, rss_peak_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    print(json.dumps(out), flush=True)


def main() -> None:
    mode, a, b, *rest = sys.argv[1:] + [""] * max(0, 3 - len(sys.argv[1:]))
    if mode == "serve":
        asyncio.run(serve(a, b, rest))
    elif mode in ("call", "send"):
        asyncio.run(caller(mode, a, b, rest))
    else:
        sys.exit(f"usage: interop.py serve SERVICE REPLICA | call FN JSON | send FN JSON (got {mode!r})")


if __name__ == "__main__":
    main()
