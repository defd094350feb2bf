"""Redis connections, and the batcher that sends replies and acks of
requests finishing together in one pipeline."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError


def connect_redis(url: str | None, single_connection: bool = False) -> aioredis.Redis:
    """A client for url (default $REDIS_URL, else redis://127.0.0.1:6379),
    decoding replies as UTF-8 text."""
    url = url or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379"
    pool = aioredis.ConnectionPool.from_url(url, decode_responses=True)
    return aioredis.Redis(connection_pool=pool, single_connection_client=single_connection)


class Batcher:
    """Sends the commands of many requests in one pipeline: whatever is
    submitted while a pipeline is on the wire goes in the next one. Each
    submit gets the replies of its own commands (an exception in place of
    a command Redis refused), or the exception that failed the pipeline."""

    def __init__(self, r: aioredis.Redis) -> None:
        self._r = r
        self._queue: list[tuple[list[tuple[str, ...]], asyncio.Future[list[Any]]]] = []
        self._wake = asyncio.Event()
        self._closed = False
        self._task = asyncio.ensure_future(self._run())

    def submit(self, cmds: list[tuple[str, ...]]) -> asyncio.Future[list[Any]]:
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        if self._closed:
            fut.set_exception(ConnectionError("fnmesh: replica closed"))
            return fut
        self._queue.append((cmds, fut))
        self._wake.set()
        return fut

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closed:
                    return
                await self._wake.wait()
                self._wake.clear()
                continue
            batch, self._queue = self._queue, []
            # XACKs of one stream merge into one XACK at the end of the
            # pipeline, after the replies they follow.
            cmds: list[tuple[str, ...]] = []
            acks: dict[tuple[str, str], list[str]] = {}
            for group, _ in batch:
                for c in group:
                    if c[0] == "XACK":
                        acks.setdefault((c[1], c[2]), []).extend(c[3:])
                    else:
                        cmds.append(c)
            ack_at = {k: len(cmds) + i for i, k in enumerate(acks)}
            cmds.extend(("XACK", k[0], k[1], *ids) for k, ids in acks.items())
            try:
                res = await self._execute(cmds)
            except asyncio.CancelledError:
                for _, f in batch:
                    if not f.done():
                        f.set_exception(ConnectionError("fnmesh: closed"))
                raise
            except Exception as e:
                for _, f in batch:
                    if not f.done():
                        f.set_exception(e)
                continue
            i = 0
            for group, f in batch:
                out = []
                for c in group:
                    if c[0] == "XACK":
                        out.append(res[ack_at[(c[1], c[2])]])
                    else:
                        out.append(res[i])
                        i += 1
                if not f.done():
                    f.set_result(out)

    async def _execute(self, cmds: list[tuple[str, ...]]) -> list[Any]:
        """Sends cmds in one write and reads their replies (raw: no
        response callbacks), an exception in place of each one refused."""
        pool = self._r.connection_pool
        conn = await pool.get_connection("PIPELINE")
        try:
            await conn.send_packed_command(pack(cmds), check_health=False)
            res: list[Any] = []
            for _ in cmds:
                try:
                    res.append(await conn.read_response())
                except ResponseError as e:
                    res.append(e)
            return res
        except BaseException:
            await conn.disconnect()  # replies may be left unread on it
            raise
        finally:
            await pool.release(conn)

    async def close(self) -> None:
        """Sends what is queued, then stops."""
        self._closed = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), 5)
        except (asyncio.TimeoutError, Exception):
            self._task.cancel()


def pack(cmds: list[tuple[str, ...]]) -> bytes:
    """Commands in RESP, as one buffer."""
    out: list[bytes] = []
    for c in cmds:
        out.append(b"*%d\r\n" % len(c))
        for a in c:
            b = a.encode() if isinstance(a, str) else a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)
