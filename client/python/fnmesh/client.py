"""The caller: call and send functions of the mesh (PROTOCOL.md §3, §4, §6, §11)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from .errors import (
    CANCELED,
    DEADLINE_EXCEEDED,
    INTERNAL,
    INVALID_ARGUMENT,
    NOT_FOUND,
    RESOURCE_EXHAUSTED,
    UNAVAILABLE,
    FieldViolation,
    FnmeshError,
)
from .protocol import GROUP, PROTOCOL_VERSION, function_key, inbox_id, limits_key, next_id, reply_key, request_key, split_name
from .redisconn import Batcher, StreamReader, connect_redis
from .schema import encode

log = logging.getLogger("fnmesh")


@dataclass(frozen=True)
class CallInfo:
    """What a call learns besides its result."""

    id: str
    """The request id."""
    replica: str
    """The replica that answered."""


class _Backlog:
    __slots__ = ("waiting", "max", "read_at", "added", "refreshing")

    def __init__(self) -> None:
        self.waiting = 0
        self.max = 0
        self.read_at = 0.0
        self.added = 0
        self.refreshing: asyncio.Task[None] | None = None


class Client:
    """A caller of mesh functions. One client owns one inbox (a reply stream
    of its own); many calls may run on it at once. Use connect() and close
    it when done (or `async with await connect() as c`)."""

    def __init__(
        self,
        *,
        url: str | None = None,
        name: str | None = None,
        token: str | None = None,
        timeout: float = 10.0,
        max_payload_bytes: int = 1 << 20,
        max_reply_bytes: int = 16 << 20,
        inbox_ttl: float = 60.0,
        inbox_refresh: float = 2.0,
        admission_interval: float | None = 0.1,
    ) -> None:
        if timeout <= 0 or max_payload_bytes <= 0 or max_reply_bytes <= 0 or inbox_refresh <= 0:
            raise ValueError("fnmesh: connect: timeout, max_payload_bytes, max_reply_bytes and inbox_refresh must be more than 0")
        if inbox_ttl < 1:
            raise ValueError(f"fnmesh: connect: inbox_ttl is {inbox_ttl}, want at least 1 s")
        self.inbox = inbox_id(url or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379", secrets.token_hex(12))
        self.reply_key = reply_key(self.inbox)
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self._url = url
        self._token = token
        self._timeout = timeout
        self._max_payload = max_payload_bytes
        self._max_reply = max_reply_bytes
        self._ttl_ms = int(inbox_ttl * 1000)
        self._refresh = min(inbox_refresh, inbox_ttl / 3)
        self._admission = admission_interval
        self._cmd: aioredis.Redis | None = None
        self._reader: StreamReader | None = None
        self._out: Batcher | None = None
        self._last = "0-0"
        self._seq = 0
        self._waiting: dict[str, asyncio.Future[tuple[Any, str]]] = {}
        self._closed = False
        self._tasks: list[asyncio.Task[None]] = []
        self._backlogs: dict[str, _Backlog] = {}

    async def open(self) -> None:
        """Opens the connections and the inbox; connect() calls it."""
        self._cmd = connect_redis(self._url)
        self._reader = StreamReader(self._url, max_field=self._max_reply)
        try:
            self._last = await self._create_inbox()
        except Exception as e:
            await self._cmd.close(close_connection_pool=True)
            await self._reader.close()
            raise FnmeshError(UNAVAILABLE, f"cannot open the reply inbox: {e}") from e
        self._out = Batcher(self._cmd)
        self._tasks.append(asyncio.create_task(self._read()))
        self._tasks.append(asyncio.create_task(self._keep_alive()))

    async def _create_inbox(self) -> str:
        """§6: the inbox with a first entry and a TTL, in one transaction."""
        assert self._cmd
        pipe = self._cmd.pipeline(transaction=True)
        pipe.execute_command("XADD", self.reply_key, "*", "hello", "inbox")
        pipe.pexpire(self.reply_key, self._ttl_ms)
        first, _ = await pipe.execute()
        return str(first)

    async def _read(self) -> None:
        assert self._reader
        backoff = 0.05
        while not self._closed:
            try:
                entries = await self._reader.xread(self.reply_key, self._last, 128, 2000)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if self._closed:
                    return
                log.debug("fnmesh: inbox read failed: %s", e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.05
            for eid, f, cut in entries:
                self._last = eid
                if f and "hello" not in f:
                    self._deliver(f, cut)

    def _deliver(self, f: dict[str, str], cut: str = "") -> None:
        """Hands a reply to the call waiting for it; others are dropped (§4).
        cut: the reader's "NAME SIZE" of a field above max_reply_bytes."""
        if cut.startswith("id "):
            return  # a cut id is a prefix, and names no call
        fut = self._waiting.pop(f.get("id", ""), None)
        if fut is None or fut.done():
            return  # late, duplicate, or not ours
        replica = f.get("by", "")
        if cut:
            name, _, size = cut.rpartition(" ")
            e = FnmeshError(RESOURCE_EXHAUSTED, f"the reply's field \"{name}\" of {size} bytes exceeds this client's limit of {self._max_reply} (max_reply_bytes)")
            e.replica = replica
            fut.set_exception(e)
            return
        if "code" in f:
            fields: list[FieldViolation] = []
            if f.get("det"):
                try:
                    fields = [FieldViolation(v["field"], v["rule"], v.get("param", "")) for v in json.loads(f["det"]).get("fields") or []]
                except (ValueError, KeyError, TypeError, AttributeError):
                    fields = []  # details are optional: keep the code and message
            e = FnmeshError(f["code"], f.get("msg", ""), fields)
            e.replica = replica
            fut.set_exception(e)
            return
        p = f.get("p")
        if not p:
            fut.set_result((None, replica))
            return
        try:
            fut.set_result((json.loads(p), replica))
        except ValueError:
            fut.set_exception(FnmeshError(INTERNAL, f"the result from {replica} is not valid JSON"))

    async def _keep_alive(self) -> None:
        assert self._cmd
        while not self._closed:
            await asyncio.sleep(self._refresh)
            try:
                if not await self._cmd.pexpire(self.reply_key, self._ttl_ms):
                    # The key is gone (Redis restarted empty): new calls need it back.
                    await self._create_inbox()
                    continue
                await self._cmd.execute_command("XTRIM", self.reply_key, "MINID", "~", next_id(self._last))
            except Exception as e:
                log.debug("fnmesh: inbox refresh failed: %s", e)

    def _encode(self, fn: str, args: Any) -> tuple[str, str, str | None]:
        service, name = split_name(fn)
        payload = None
        if args is not None:
            try:
                payload = json.dumps(encode(args), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
            except (TypeError, ValueError) as e:
                raise FnmeshError(INVALID_ARGUMENT, f"arguments are not JSON-encodable: {e}") from None
            size = len(payload.encode())
            if size > self._max_payload:
                raise FnmeshError(INVALID_ARGUMENT, f"arguments of {size} bytes exceed the limit of {self._max_payload}")
        return service, name, payload

    async def _admit(self, service: str) -> None:
        """§11: refuses with resource_exhausted while service's backlog has reached its bound."""
        if self._admission is None:
            return
        v = self._backlogs.get(service)
        if v is None:
            v = self._backlogs[service] = _Backlog()
            v.refreshing = asyncio.create_task(self._read_backlog(service, v))
        if v.read_at == 0:
            if v.refreshing is not None:
                await asyncio.shield(v.refreshing)  # the first call to a service reads before deciding
        elif time.monotonic() - v.read_at > self._admission and v.refreshing is None:
            v.refreshing = asyncio.create_task(self._read_backlog(service, v))
        if v.max > 0 and v.waiting + v.added >= v.max:
            raise FnmeshError(RESOURCE_EXHAUSTED, f"service {service} has {v.waiting + v.added} requests waiting, its bound is {v.max}")
        v.added += 1

    async def _read_backlog(self, service: str, v: _Backlog) -> None:
        assert self._cmd
        key = request_key(service)
        assert self._out
        # Sent behind the requests already admitted (the same pipeline
        # queue), so the lag it reads counts them: what was added before the
        # read started is in it, what is added meanwhile is counted on top.
        base = v.added
        try:
            mx, xlen, groups = await self._out.submit(
                [("HGET", limits_key(service), "max_backlog"), ("XLEN", key), ("XINFO", "GROUPS", key)]
            )
            if isinstance(mx, Exception) or isinstance(xlen, Exception):
                raise mx if isinstance(mx, Exception) else xlen
            waiting = int(xlen)
            for g in groups if isinstance(groups, list) else []:
                g = g if isinstance(g, dict) else {g[i]: g[i + 1] for i in range(0, len(g) - 1, 2)}
                if g.get("name") != GROUP:
                    continue
                pending = int(g.get("pending") or 0)
                lag = g.get("lag")
                read = int(g.get("entries-read") or 0)
                if lag is not None and int(lag) >= 0 and (int(lag) > 0 or read > 0 or waiting == 0):
                    waiting = int(lag)
                else:
                    waiting = max(int(xlen) - pending, 0)
            v.max = int(mx) if mx else 0
            v.waiting = waiting
            v.added = max(v.added - base, 0)
        except Exception as e:
            log.debug("fnmesh: backlog of %s unknown: %s", service, e)  # keep the last view
        finally:
            v.read_at = time.monotonic()
            v.refreshing = None

    def _request(self, rid: str, name: str, *, rt: str | None, dl: int | None, token: str | None,
                 traceparent: str | None, idempotency_key: str | None, payload: str | None) -> list[str]:
        f = ["v", PROTOCOL_VERSION, "id", rid, "fn", name]
        if rt:
            f += ["rt", rt]
        if dl is not None:
            f += ["dl", str(dl)]
        f += ["from", self.name]
        if idempotency_key:
            f += ["ik", idempotency_key]
        if traceparent:
            f += ["tp", traceparent]
        if token:
            f += ["tok", token]
        if payload is not None:
            f += ["p", payload]
        return f

    def _next_id(self) -> str:
        self._seq += 1
        return f"{self.inbox}-{self._seq:x}"

    async def call(self, fn: str, args: Any = None, *, timeout: float | None = None, token: str | None = None,
                   traceparent: str | None = None, idempotency_key: str | None = None) -> Any:
        """Calls fn ("service.function") with args and returns its result
        (decoded JSON). Raises FnmeshError: the function's own, or a mesh
        code (deadline_exceeded when no result came within timeout seconds)."""
        result, _ = await self.call_with_info(fn, args, timeout=timeout, token=token, traceparent=traceparent,
                                              idempotency_key=idempotency_key)
        return result

    async def call_with_info(self, fn: str, args: Any = None, *, timeout: float | None = None, token: str | None = None,
                             traceparent: str | None = None, idempotency_key: str | None = None) -> tuple[Any, CallInfo]:
        """call, also telling the request id and the replica that answered."""
        if self._closed:
            raise FnmeshError(UNAVAILABLE, "client closed")
        service, name, payload = self._encode(fn, args)
        timeout = self._timeout if timeout is None else timeout
        if not timeout > 0:
            raise FnmeshError(INVALID_ARGUMENT, f"timeout is {timeout}, want more than 0")
        await self._admit(service)
        if self._closed:
            raise FnmeshError(UNAVAILABLE, "client closed")
        assert self._cmd
        rid = self._next_id()
        deadline = int(time.time() * 1000 + timeout * 1000)
        fields = self._request(rid, name, rt=self.reply_key, dl=deadline, token=token if token is not None else self._token,
                               traceparent=traceparent, idempotency_key=idempotency_key, payload=payload)
        fut: asyncio.Future[tuple[Any, str]] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        try:
            await self._add(function_key(service, name), fields)
            try:
                result, replica = await asyncio.wait_for(fut, max(0.0, deadline / 1000 - time.time()))
            except asyncio.TimeoutError:
                raise FnmeshError(DEADLINE_EXCEEDED, f"no result from {fn} within its deadline") from None
            except asyncio.CancelledError:
                if fut.cancelled() and self._closed:
                    raise FnmeshError(UNAVAILABLE, "client closed") from None
                raise
        finally:
            self._waiting.pop(rid, None)
        return result, CallInfo(rid, replica)

    async def send(self, fn: str, args: Any = None, *, timeout: float | None = None, token: str | None = None,
                   traceparent: str | None = None, idempotency_key: str | None = None) -> str:
        """Queues a run of fn with args and returns the request id once the
        request is stored in Redis. The function runs as a call would, its
        result dropped; failures are retried, then dead-lettered by the
        service. With timeout (seconds), a request no replica ran by then is
        dead-lettered unrun."""
        if self._closed:
            raise FnmeshError(UNAVAILABLE, "client closed")
        service, name, payload = self._encode(fn, args)
        await self._admit(service)
        assert self._cmd
        rid = self._next_id()
        dl = int(time.time() * 1000 + timeout * 1000) if timeout is not None else None
        fields = self._request(rid, name, rt=None, dl=dl, token=token if token is not None else self._token,
                               traceparent=traceparent, idempotency_key=idempotency_key, payload=payload)
        await self._add(function_key(service, name), fields)
        return rid

    async def _add(self, key: str, fields: list[str]) -> None:
        """XADDs a request; requests made together share a pipeline."""
        assert self._out
        try:
            # §3: NOMKSTREAM: a request never creates a service's stream.
            res = await self._out.submit([("XADD", key, "NOMKSTREAM", "*", *fields)])
        except Exception as e:
            raise FnmeshError(UNAVAILABLE, f"cannot queue request: {e}") from None
        if isinstance(res[0], Exception):
            raise FnmeshError(UNAVAILABLE, f"cannot queue request: {res[0]}")
        if res[0] is None:
            raise FnmeshError(NOT_FOUND, f"no replica ever served {key}: nothing reads it")

    async def close(self) -> None:
        """Fails waiting calls with unavailable, deletes the inbox, disconnects."""
        if self._closed:
            return
        self._closed = True
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(FnmeshError(UNAVAILABLE, "client closed"))
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        assert self._cmd and self._reader and self._out
        await self._out.close()
        try:
            await self._cmd.delete(self.reply_key)
        except Exception as e:
            log.debug("fnmesh: deleting the inbox failed: %s", e)
        await self._reader.close()
        await self._cmd.close(close_connection_pool=True)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


async def connect(**options: Any) -> Client:
    """Connects a caller: opens its inbox. Options: url (default $REDIS_URL),
    name, token, timeout (seconds, default 10), max_payload_bytes,
    max_reply_bytes (a reply with a longer field fails its call with
    resource_exhausted, its bytes skipped as they arrive; default 16 MiB),
    inbox_ttl, inbox_refresh, admission_interval (None: never check the
    backlog bound)."""
    c = Client(**options)
    await c.open()
    return c
