"""Redis connections, and the batcher that sends replies and acks of
requests finishing together in one pipeline."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import redis.asyncio as aioredis


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
            pipe = self._r.pipeline(transaction=False)
            for cmds, _ in batch:
                for c in cmds:
                    pipe.execute_command(*c)
            try:
                res = await pipe.execute(raise_on_error=False)
            except asyncio.CancelledError:
                for _, f in batch:
                    if not f.done():
                        f.set_exception(ConnectionError("fnmesh: replica closed"))
                raise
            except Exception as e:
                for _, f in batch:
                    if not f.done():
                        f.set_exception(e)
                continue
            i = 0
            for cmds, f in batch:
                if not f.done():
                    f.set_result(res[i : i + len(cmds)])
                i += len(cmds)

    async def close(self) -> None:
        """Sends what is queued, then stops."""
        self._closed = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), 5)
        except (asyncio.TimeoutError, Exception):
            self._task.cancel()
