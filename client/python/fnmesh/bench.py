"""Calls/s of a Python replica against a bare redis-py loop doing the same
XREADGROUP / XADD / XACK, in one run:

    python3 -m fnmesh.bench [--seconds 5] [--rounds 3] [--inflight 256]

Each round measures both, one after the other (which goes first
alternates), each in a process of its own, driven by the same load
generator in this process: a raw redis-py loop that keeps --inflight
requests queued (XADD in pipelines) and reads their replies from one
inbox. It prints each pair's ratio and the median ratio. REDIS_URL names
the server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time

import redis.asyncio as aioredis

from .protocol import GROUP, request_key


async def _replica(service: str) -> None:
    from .worker import serve

    async def echo(args: object) -> object:
        return args

    r = await serve(service, {"echo": echo}, allow_unauthenticated=True, announce=False, replica_id="bench-fnmesh")
    print("ready", flush=True)
    await r.wait_for_signal()


async def _bare(service: str) -> None:
    """The reference: what any replica has to do, and nothing else."""
    import signal

    r = aioredis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"), decode_responses=True)
    key = request_key(service)
    try:
        await r.execute_command("XGROUP", "CREATE", key, GROUP, "0", "MKSTREAM")
    except aioredis.ResponseError:
        pass
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    while not stop.is_set():
        try:
            resp = await r.xreadgroup(GROUP, "bench-bare", {key: ">"}, count=64, block=500)
        except aioredis.ResponseError:
            break
        if not resp:
            continue
        # One pipeline per read: each entry's reply, then one XACK for all.
        pipe = r.pipeline(transaction=False)
        for _, f in resp[0][1]:
            pipe.execute_command("XADD", f["rt"], "NOMKSTREAM", "MAXLEN", "~", "10000", "*", "id", f["id"], "by", "bench-bare", "p", f.get("p", "null"))
        pipe.xack(key, GROUP, *(eid for eid, _ in resp[0][1]))
        await pipe.execute()
    await r.close()


def _cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _drive(url: str, service: str, seconds: float, inflight: int, pid: int, warmup: float = 1.0) -> tuple[float, float]:
    """Keeps inflight calls queued for warmup + seconds; returns replies/s
    over the last seconds, and the replica's CPU microseconds per reply."""
    r = aioredis.Redis.from_url(url, decode_responses=True)
    inbox = f"fnmesh:reply:{{bench-{os.getpid()}-{service}}}"
    last = await r.execute_command("XADD", inbox, "*", "hello", "inbox")
    await r.pexpire(inbox, 120_000)
    key = request_key(service)
    seq = 0

    async def add(n: int) -> None:
        nonlocal seq
        pipe = r.pipeline(transaction=False)
        dl = str(int(time.time() * 1000) + 30_000)
        for _ in range(n):
            seq += 1
            pipe.execute_command("XADD", key, "*", "v", "1", "id", f"b{seq}", "fn", "echo", "rt", inbox, "dl", dl, "p", '{"x":1}')
        await pipe.execute()

    await add(inflight)
    start = time.monotonic()
    measure_from = start + warmup
    counted = 0
    cpu0: float | None = None
    while True:
        now = time.monotonic()
        if now >= measure_from + seconds:
            break
        resp = await r.xread({inbox: last}, count=1000, block=1000)
        if not resp:
            continue
        entries = resp[0][1]
        last = entries[-1][0]
        n = sum(1 for _, f in entries if "hello" not in f)
        if time.monotonic() >= measure_from:
            if cpu0 is None:
                cpu0 = _cpu(pid)
            else:
                counted += n
        await add(n)
        await r.execute_command("XTRIM", inbox, "MINID", "~", last)
    elapsed = time.monotonic() - measure_from
    cpu = _cpu(pid) - (cpu0 or 0.0)
    await r.delete(inbox)
    await r.close()
    return counted / elapsed, cpu / max(counted, 1) * 1e6


def _measure(kind: str, seconds: float, inflight: int, url: str) -> tuple[float, float]:
    service = f"bench-{kind}-{os.getpid()}"
    env = {**os.environ, "REDIS_URL": url}
    p = subprocess.Popen([sys.executable, "-m", "fnmesh.bench", kind, service], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout is not None
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{kind} replica did not start")
        return asyncio.run(_drive(url, service, seconds, inflight, p.pid))
    finally:
        p.terminate()
        p.wait(30)
        asyncio.run(_cleanup(url, request_key(service)))


async def _cleanup(url: str, key: str) -> None:
    r = aioredis.Redis.from_url(url)
    await r.delete(key)
    await r.close()


def main() -> None:
    ap = argparse.ArgumentParser(prog="python3 -m fnmesh.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", nargs="?", default="compare", choices=["compare", "replica", "bare"])
    ap.add_argument("service", nargs="?", default="")
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--inflight", type=int, default=256)
    a = ap.parse_args()
    if a.mode == "replica":
        return asyncio.run(_replica(a.service))
    if a.mode == "bare":
        return asyncio.run(_bare(a.service))
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
    ratios, cpu_ratios = [], []
    for i in range(a.rounds):
        order = ["replica", "bare"] if i % 2 == 0 else ["bare", "replica"]
        got = {k: _measure(k, a.seconds, a.inflight, url) for k in order}
        (rate, cpu), (bare_rate, bare_cpu) = got["replica"], got["bare"]
        ratios.append(rate / bare_rate)
        cpu_ratios.append(bare_cpu / cpu)
        print(
            f"round {i + 1}: fnmesh replica {rate:.0f} calls/s ({cpu:.0f} us CPU per call), "
            f"bare redis-py loop {bare_rate:.0f} calls/s ({bare_cpu:.0f} us), ratio {ratios[-1]:.2f}x",
            flush=True,
        )
    print(f"median over {a.rounds} rounds: {statistics.median(ratios):.2f}x the bare loop's calls/s (target 0.80x), "
          f"{statistics.median(cpu_ratios):.2f}x its calls per CPU second")


if __name__ == "__main__":
    main()
