"""The worker: one replica of a service, a consumer of the service's group
(PROTOCOL.md §2, §7, §8, §11, §12, §14), with the semantics of a Go replica."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import json
import logging
import os
import random
import re
import secrets
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, get_type_hints

import redis.asyncio as aioredis

from . import schema
from .auth import Claims, JWTAuth, Verifier, roles_of
from .errors import (
    DEADLINE_EXCEEDED,
    INTERNAL,
    INVALID_ARGUMENT,
    NOT_FOUND,
    PERMISSION_DENIED,
    UNAUTHENTICATED,
    UNAVAILABLE,
    FieldViolation,
    FnmeshError,
    valid_code,
)
from .protocol import (
    FUNCTION_RE,
    GROUP,
    PROTOCOL_VERSION,
    REPLY_PREFIX,
    SERVICE_RE,
    args_hash,
    compare_ids,
    dead_letter_key,
    function_key,
    idempotency_key,
    idempotency_scope,
    limits_key,
    next_id,
)
from .redisconn import Batcher, StreamReader, connect_redis

log = logging.getLogger("fnmesh")


@dataclass
class Context:
    """What a function learns about the request it serves (its optional
    second parameter)."""

    id: str
    service: str
    function: str
    replica: str
    caller: str
    """The caller's name (from), "" if none."""
    deadline: float | None
    """Unix time in seconds, None when the caller set none."""
    token: str
    claims: Claims | None
    """The verified claims, None without a token check."""
    is_send: bool
    """True for a send: nobody waits for the result."""
    attempt: int
    """1 on the first run of this request."""
    traceparent: str
    idempotency_key: str


@dataclass
class RetryPolicy:
    """How failed sends are run again (§7.4)."""

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def backoff(self, attempt: int) -> float:
        d = min(self.initial_backoff * self.multiplier ** (attempt - 1), self.max_backoff)
        return d * (1 + self.jitter * (2 * random.random() - 1))


@dataclass
class Function:
    """A function with options; a plain callable is Function(handler)."""

    handler: Callable[..., Any]
    public: bool = False
    """Callers without a token may call it even when the service checks tokens."""
    require_role: str | None = None
    """Only callers whose token lists this role (roles, or role) may call it."""
    require_claims: Callable[[Claims, Context], Any] | None = None
    """Raises (FnmeshError, or anything: permission_denied) for claims not allowed."""
    validate: Callable[[Any], list[FieldViolation] | None] | None = None
    """Checks the arguments before the function runs; violations become invalid_argument."""
    retry: RetryPolicy | None = None
    """Overrides the service's retry policy for sends."""
    request_schema: dict[str, Any] | None = None
    """JSON Schema of the arguments; default: from the first parameter's type hint."""
    response_schema: dict[str, Any] | None = None
    """JSON Schema of the result; default: from the return type hint."""


# Codes whose send is not run again: another run would fail the same way.
_FINAL = frozenset({INVALID_ARGUMENT, UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND})

# Upper bounds (seconds) of the latency buckets of the registry's statistics (§14).
LATENCY_BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class _Fn:
    __slots__ = ("name", "spec", "retry", "is_async", "wants_ctx", "arg_type", "req_schema", "resp_schema",
                 "calls", "errors", "running", "hist", "takes_args")

    def __init__(self, name: str, spec: Function, retry: RetryPolicy) -> None:
        self.name = name
        self.spec = spec
        self.retry = retry
        h = spec.handler
        self.is_async = inspect.iscoroutinefunction(h) or inspect.iscoroutinefunction(getattr(h, "__call__", None))
        params = [
            p for p in inspect.signature(h).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        self.takes_args = len(params) >= 1
        self.wants_ctx = len(params) >= 2
        try:
            hints = get_type_hints(h)
        except Exception:
            hints = {}
        self.arg_type = hints.get(params[0].name) if params else None
        self.req_schema = spec.request_schema or schema.schema_of(self.arg_type if params else None)
        self.resp_schema = spec.response_schema or schema.schema_of(hints.get("return"))
        self.calls = 0
        self.errors = 0
        self.running = 0
        self.hist = [0] * (len(LATENCY_BOUNDS) + 1)

    def observe(self, seconds: float, failed: bool) -> None:
        self.calls += 1
        if failed:
            self.errors += 1
        i = 0
        while i < len(LATENCY_BOUNDS) and seconds > LATENCY_BOUNDS[i]:
            i += 1
        self.hist[i] += 1


class _Malformed(Exception):
    pass


class _Stopped(Exception):
    """The replica stopped before the outcome was recorded: hand the entry back."""


@dataclass
class _Req:
    id: str
    fn: str
    rt: str
    deadline: int | None  # Unix ms
    token: str
    caller: str
    payload: str | None
    traceparent: str
    idempotency_key: str


@dataclass
class _Lane:
    """One request stream this replica reads (the service's, or a versioned function's)."""

    key: str
    reader: StreamReader | None = None
    inflight: dict[str, int] = field(default_factory=dict)  # entry id -> delivery count
    slot: asyncio.Event = field(default_factory=asyncio.Event)
    history_read: bool = False
    claim_cursor: str = "0-0"
    claiming: bool = False
    task: asyncio.Task[None] | None = None
    writing: set[str] = field(default_factory=set)  # entries whose reply and ack are on their way


class Replica:
    """One replica of a service. Create it with serve()."""

    def __init__(
        self,
        service: str,
        functions: Mapping[str, Callable[..., Any] | Function],
        *,
        url: str | None = None,
        auth: JWTAuth | Verifier | None = None,
        allow_unauthenticated: bool = False,
        concurrency: int = 64,
        replica_id: str | None = None,
        max_payload_bytes: int = 1 << 20,
        retry: RetryPolicy | None = None,
        drain_timeout: float = 30.0,
        trim_interval: float = 5.0,
        block_ms: int = 2000,
        reply_max_len: int = 10_000,
        dead_letter_max_len: int = 100_000,
        claim_idle: float = 30.0,
        claim_interval: float = 1.0,
        consumer_expiry: float = 3600.0,
        max_deliveries: int = 5,
        max_backlog: int = 0,
        idempotency_window: float = 86_400.0,
        announce: bool = True,
        heartbeat: float = 1.0,
        registry_ttl: float | None = None,
        version: str = "",
        registry_keep: float = 86_400.0,
    ) -> None:
        problems: list[str] = []
        if not SERVICE_RE.match(service):
            problems.append(f"service name {service!r}: want lower case letters, digits, '-' and '_', up to 63")
        if auth is None and not allow_unauthenticated:
            problems.append("auth is not set: give a token verifier (JWTAuth), or set allow_unauthenticated=True to run every function open")
        if auth is not None and allow_unauthenticated:
            problems.append("auth and allow_unauthenticated are both set: choose one")
        service_retry = retry or RetryPolicy()
        if service_retry.max_attempts < 1 or service_retry.multiplier < 1 or not 0 <= service_retry.jitter <= 1:
            problems.append("retry: want max_attempts >= 1, multiplier >= 1, jitter 0..1")
        self._fns: dict[str, _Fn] = {}
        for name, f in functions.items():
            if not FUNCTION_RE.match(name):
                problems.append(f"function name {name!r}: want letters, digits, '_', '-', '.', '@'")
                continue
            spec = f if isinstance(f, Function) else Function(handler=f)
            if not callable(spec.handler):
                problems.append(f"function {name}: no handler")
                continue
            self._fns[name] = _Fn(name, spec, spec.retry or service_retry)
        if not functions:
            problems.append(f"service {service} has no functions")
        for k, v in {
            "concurrency": concurrency, "max_payload_bytes": max_payload_bytes, "block_ms": block_ms,
            "reply_max_len": reply_max_len, "dead_letter_max_len": dead_letter_max_len, "max_deliveries": max_deliveries,
        }.items():
            if not (isinstance(v, int) and v > 0):
                problems.append(f"{k} is {v!r}, want a whole number above 0")
        for k, fv in {
            "trim_interval": trim_interval, "claim_idle": claim_idle, "claim_interval": claim_interval,
            "consumer_expiry": consumer_expiry, "idempotency_window": idempotency_window, "heartbeat": heartbeat,
        }.items():
            if not fv > 0:
                problems.append(f"{k} is {fv!r}, want more than 0")
        if not (isinstance(max_backlog, int) and max_backlog >= 0):
            problems.append(f"max_backlog is {max_backlog!r}, want 0 (none) or more")
        if drain_timeout < 0:
            problems.append(f"drain_timeout is {drain_timeout}, want 0 or more")
        if problems:
            raise ValueError("fnmesh: serve: " + "; ".join(problems))
        self.service = service
        self.id = replica_id or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._url = url
        self._verify: Verifier | None = auth
        self._concurrency = concurrency
        self._max_payload = max_payload_bytes
        self._drain = drain_timeout
        self._trim_every = trim_interval
        self._block_ms = block_ms
        self._reply_max = str(reply_max_len)
        self._dead_max = str(dead_letter_max_len)
        self._claim_idle_ms = int(claim_idle * 1000)
        self._claim_every = claim_interval
        self._consumer_expiry_ms = int(consumer_expiry * 1000)
        self._max_deliveries = max_deliveries
        self._max_backlog = max_backlog
        self._idem_ms = str(int(idempotency_window * 1000))
        self._announce = announce
        self._heartbeat = heartbeat
        self._ttl_ms = int((registry_ttl if registry_ttl is not None else 5 * heartbeat) * 1000)
        self._keep_ms = int(registry_keep * 1000)
        self._version = version
        self._started_at = datetime.now(timezone.utc)
        keys = {function_key(service, n) for n in self._fns if "@" not in n}
        keys.add(function_key(service, ""))
        keys |= {function_key(service, n) for n in self._fns if "@" in n}
        self._lanes = {k: _Lane(k) for k in sorted(keys)}
        self._cmd: aioredis.Redis | None = None
        self._out: Batcher | None = None
        # XAUTOCLAIM's connection: bounded as the readers, and never held
        # up by their blocking reads.
        self._claimer: StreamReader | None = None
        self._stopping = False
        self._hard = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._fn_tasks: set[asyncio.Task[Any]] = set()  # requests whose function is running
        self._expired: set[asyncio.Task[Any]] = set()  # requests cancelled by their deadline
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by start()
        self._timers: list[asyncio.Task[None]] = []
        self._drained = asyncio.Event()
        self._closing: asyncio.Task[None] | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="fnmesh")

    @property
    def functions(self) -> list[str]:
        """The names of the functions served."""
        return sorted(self._fns)

    @property
    def running(self) -> int:
        """Requests running now."""
        return sum(len(lane.inflight) for lane in self._lanes.values())

    @property
    def streams(self) -> list[str]:
        """The request streams this replica reads (§1)."""
        return sorted(self._lanes)

    # ---- start

    async def start(self) -> None:
        """Joins the group on every stream it reads; serve() calls it."""
        self._loop = asyncio.get_running_loop()
        self._cmd = connect_redis(self._url)
        self._out = Batcher(self._cmd)
        try:
            for lane in self._lanes.values():
                await self._ensure_group(lane.key)
            # §11: the last replica to start says what the bound is.
            if self._max_backlog > 0:
                await self._cmd.hset(limits_key(self.service), "max_backlog", str(self._max_backlog))
            else:
                await self._cmd.hdel(limits_key(self.service), "max_backlog")
            if self._announce:
                await self._registry("announce")
        except BaseException:
            await self._out.close()
            await self._cmd.close(close_connection_pool=True)
            raise
        # Named, so that operators see which replica a connection is.
        me = re.sub(r"[^A-Za-z0-9_.:@-]", "_", self.id)
        self._claimer = StreamReader(self._url, name="fnmesh-claimer-" + me, max_field=self._max_payload)
        for lane in self._lanes.values():
            lane.reader = StreamReader(self._url, name="fnmesh-replica-" + me, max_field=self._max_payload)
            lane.task = asyncio.create_task(self._run(lane))
        self._every(self._trim_every, self._trim)
        self._every(self._claim_every, self._claim_all)
        self._every(max(0.001, self._claim_idle_ms / 3000), self._renew_leases)
        self._every(max(0.001, self._consumer_expiry_ms / 4000), self._remove_gone_consumers)
        if self._announce:
            self._every(self._heartbeat, self._beat)

    def _every(self, seconds: float, f: Callable[[], Awaitable[None]]) -> None:
        async def loop() -> None:
            while not self._stopping:
                await asyncio.sleep(seconds)
                try:
                    await f()
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # a timer must not die of one failure
                    log.debug("fnmesh: %s failed: %s", getattr(f, "__name__", "timer"), e)

        self._timers.append(asyncio.create_task(loop()))

    async def _ensure_group(self, key: str) -> None:
        """§2: create the group (and stream); BUSYGROUP means it exists."""
        assert self._cmd
        try:
            await self._cmd.execute_command("XGROUP", "CREATE", key, GROUP, "0", "MKSTREAM")
        except aioredis.ResponseError as e:
            if not str(e).startswith("BUSYGROUP"):
                raise

    # ---- reading

    async def _run(self, lane: _Lane) -> None:
        # At start, this consumer's own pending entries (a restart under the
        # same name), read by id; then new entries (">").
        history: str | None = "0"
        pause = 0.05
        assert lane.reader
        while not self._stopping:
            free = self._concurrency - len(lane.inflight)
            if free <= 0:
                lane.slot.clear()
                await lane.slot.wait()
                # Requests read together tend to finish together: let them,
                # and read for all their slots at once.
                await asyncio.sleep(0)
                continue
            count = min(free, 128)
            try:
                if history is not None:
                    entries = await lane.reader.xreadgroup(GROUP, self.id, lane.key, history, count, None)
                else:
                    entries = await lane.reader.xreadgroup(GROUP, self.id, lane.key, ">", count, self._block_ms)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if self._stopping:
                    break
                log.debug("fnmesh: read failed: %s", e)
                if "NOGROUP" in str(e):
                    # The stream was deleted, or Redis restarted empty.
                    try:
                        await self._ensure_group(lane.key)
                    except Exception:
                        pass
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)
                continue
            pause = 0.05
            counts = None
            if history is not None and entries:
                counts = await self._delivery_counts(lane, [e[0] for e in entries])
            self._dispatch(lane, entries, counts)
            if history is not None:
                history = None if len(entries) < count else entries[-1][0]
                if history is None:
                    # Reading pending entries by id counts as a delivery:
                    # claiming before this read would count a claimed entry twice.
                    lane.history_read = True
                    self._spawn(self._claim(lane))

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    def _dispatch(self, lane: _Lane, entries: list[tuple[str, dict[str, str]]], counts: dict[str, int] | None) -> None:
        for eid, fields in entries:
            if not fields:
                # A pending entry trimmed away: nothing to run.
                self._ack(lane, eid)
                continue
            if eid in lane.inflight:
                continue  # already running here
            count = max((counts or {}).get(eid, 1), 1)
            lane.inflight[eid] = count
            t = self._loop.create_task(self._handle(lane, eid, fields, count))
            self._tasks.add(t)
            t.add_done_callback(functools.partial(self._release, lane, eid))

    def _release(self, lane: _Lane, eid: str, t: asyncio.Task[Any]) -> None:
        self._tasks.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.error("fnmesh: request %s failed in the replica: %r", eid, t.exception())
        if eid not in lane.writing:  # else its reply's write frees the slot
            self._free(lane, eid)

    def _free(self, lane: _Lane, eid: str) -> None:
        lane.inflight.pop(eid, None)
        lane.slot.set()
        if self.running == 0:
            self._drained.set()

    async def _delivery_counts(self, lane: _Lane, ids: list[str]) -> dict[str, int]:
        """How often each entry (held by this replica) was delivered: XPENDING's fourth field."""
        assert self._cmd
        out: dict[str, int] = {}
        if not ids:
            return out
        lo = hi = ids[0]
        for i in ids:
            if compare_ids(i, lo) < 0:
                lo = i
            if compare_ids(i, hi) > 0:
                hi = i
        try:
            rows = await self._cmd.xpending_range(lane.key, GROUP, lo, hi, len(ids) + 100, self.id)
            for r in rows or []:
                out[r["message_id"]] = int(r["times_delivered"])
        except Exception as e:
            log.debug("fnmesh: delivery counts unknown: %s", e)
        return out

    async def _claim_all(self) -> None:
        for lane in self._lanes.values():
            await self._claim(lane)

    async def _claim(self, lane: _Lane) -> None:
        """§7.5: takes over entries idle longer than claim_idle (their replica died or stalled)."""
        assert self._cmd
        if self._stopping or lane.claiming or not lane.history_read:
            return
        free = self._concurrency - len(lane.inflight)
        if free <= 0:
            return
        lane.claiming = True
        try:
            assert self._claimer
            lane.claim_cursor, entries = await self._claimer.xautoclaim(lane.key, GROUP, self.id, self._claim_idle_ms, lane.claim_cursor, free)
            if entries and not self._stopping:
                self._dispatch(lane, entries, await self._delivery_counts(lane, [e[0] for e in entries]))
        except Exception as e:
            lane.claim_cursor = "0-0"
            if "NOGROUP" in str(e):
                try:
                    await self._ensure_group(lane.key)
                except Exception:
                    pass
            else:
                log.debug("fnmesh: claim failed: %s", e)
        finally:
            lane.claiming = False

    async def _renew_leases(self) -> None:
        """§7.5: keeps the entries this replica runs from looking idle (XCLAIM to itself, JUSTID)."""
        assert self._cmd
        if self._hard:
            return
        for lane in self._lanes.values():
            ids = list(lane.inflight)
            if not ids:
                continue
            owned = await self._delivery_counts(lane, ids)
            mine = [i for i in ids if i in owned]
            for k in range(0, len(mine), 200):
                await self._cmd.xclaim(lane.key, GROUP, self.id, 0, mine[k : k + 200], justid=True)

    async def _hand_back(self, lane: _Lane, eid: str, count: int) -> None:
        """§7.6: hands an entry it will not finish back to the group, claimable by any replica at once."""
        assert self._cmd
        try:
            await self._cmd.xclaim(lane.key, GROUP, self.id, 0, [eid], idle=86_400_000, retrycount=max(count - 1, 0), justid=True)
        except Exception as e:
            log.warning("fnmesh: hand-back of %s failed; the entry is taken over once idle: %s", eid, e)

    async def _remove_gone_consumers(self) -> None:
        """§7.6: removes consumers with nothing pending that have not read for consumer_expiry."""
        assert self._cmd
        for lane in self._lanes.values():
            for c in await self._cmd.xinfo_consumers(lane.key, GROUP):
                if int(c.get("pending", 0)) == 0 and int(c.get("idle", 0)) > self._consumer_expiry_ms and c.get("name") != self.id:
                    await self._cmd.execute_command("XGROUP", "DELCONSUMER", lane.key, GROUP, c["name"])

    async def _trim(self) -> None:
        """§7.7: trims what every group of each stream has acknowledged."""
        assert self._cmd
        for lane in self._lanes.values():
            groups = await self._cmd.xinfo_groups(lane.key)
            low: str | None = None
            for g in groups:
                if int(g.get("pending", 0)) > 0:
                    keep = (await self._cmd.xpending(lane.key, g["name"]))["min"]
                else:
                    keep = next_id(g["last-delivered-id"])
                if low is None or compare_ids(keep, low) < 0:
                    low = keep
            if low is None or low in ("0-0", "0-1"):
                continue
            await self._cmd.execute_command("XTRIM", lane.key, "MINID", "~", low)

    # ---- one request

    def _decode(self, f: dict[str, str]) -> _Req:
        """Decodes a request entry (§3), in the order a Go replica checks."""
        req = _Req(
            id=f.get("id", ""), fn=f.get("fn", ""), rt=f.get("rt", ""), deadline=None, token=f.get("tok", ""),
            caller=f.get("from", ""), payload=f.get("p"), traceparent=f.get("tp", ""), idempotency_key=f.get("ik", ""),
        )
        if req.rt and not req.rt.startswith(REPLY_PREFIX):
            raise _Malformed('field "rt" is not a reply stream')
        too_large = f.get("too_large")
        if too_large:
            # The reader kept a prefix of a field above max_payload_bytes.
            name, _, size = too_large.partition(" ")
            raise _Malformed(f"field {json.dumps(name)} of {size} bytes exceeds the replica's limit")
        v = f.get("v")
        if v is not None and v != PROTOCOL_VERSION:
            raise _Malformed(f'protocol version {v!r}, want "1"')
        dl = f.get("dl")
        if dl:
            if not (dl.isascii() and dl.isdigit()) or int(dl) <= 0:
                raise _Malformed(f'field "dl" is not unix milliseconds: {dl!r}')
            req.deadline = int(dl)
        if not req.id:
            raise _Malformed('missing field "id"')
        if not req.fn:
            raise _Malformed('missing field "fn"')
        return req

    async def _handle(self, lane: _Lane, eid: str, f: dict[str, str], count: int) -> None:
        """§7.2: one entry, from decoding to ack (or hand-back)."""
        try:
            req = self._decode(f)
        except _Malformed as e:
            rt = f.get("rt", "")
            if not rt.startswith(REPLY_PREFIX) or f.get("too_large", "").startswith("rt "):
                rt = ""  # a prefix of a key name could name another inbox
            return await self._reject(lane, eid, f, count, f.get("id", ""), rt, FnmeshError(INVALID_ARGUMENT, f"malformed entry: {e}"))
        size = len(req.payload.encode()) if req.payload else 0
        if size > self._max_payload:
            return await self._reject(lane, eid, f, count, req.id, req.rt,
                                      FnmeshError(INVALID_ARGUMENT, f"arguments of {size} bytes exceed the limit of {self._max_payload}"))
        args: Any = None
        if req.payload:
            try:
                args = json.loads(req.payload)
            except ValueError:
                return await self._reject(lane, eid, f, count, req.id, req.rt,
                                          FnmeshError(INVALID_ARGUMENT, 'malformed entry: field "p" is not valid JSON'))
        fn = self._fns.get(req.fn)
        if fn is None:
            return await self._reject(lane, eid, f, count, req.id, req.rt,
                                      FnmeshError(NOT_FOUND, f"function {self.service}.{req.fn} not found"))
        if count > self._max_deliveries:
            # Replicas keep dying or stalling on it: a poison request.
            err = FnmeshError(INTERNAL, f"request delivered {count} times without finishing (limit {self._max_deliveries}): replicas stopped while running it")
            return await self._settle(lane, eid, count, req, err, f, count - 1)
        if req.deadline is not None and time.time() * 1000 >= req.deadline:
            # The caller has given up: never run it. A send is recorded.
            if req.rt:
                return self._ack(lane, eid)
            return await self._settle(lane, eid, count, None, FnmeshError(DEADLINE_EXCEEDED, "deadline passed before the request was run"), f, 0)
        try:
            if req.idempotency_key:
                await self._run_once(lane, eid, f, count, fn, req, args)
            else:
                await self._run_request(lane, eid, f, count, fn, req, args)
        except _Stopped:
            await self._hand_back(lane, eid, count)

    async def _run_request(self, lane: _Lane, eid: str, f: dict[str, str], count: int, fn: _Fn, req: _Req, args: Any,
                           then_ack: bool = True) -> tuple[bool, str | None]:
        """Runs a request to its end: a call is answered, a send retried and
        dead-lettered if it keeps failing; acks it when then_ack. Returns
        (succeeded, result JSON). Raises _Stopped if the replica stopped
        before the outcome was recorded."""
        if req.rt:
            outcome = await self._invoke(fn, req, args, count)
            if isinstance(outcome, FnmeshError) and self._hard:
                raise _Stopped()
            p = await self._write_reply(lane, eid, req, outcome, then_ack)
            return (not isinstance(outcome, FnmeshError), p)
        attempt = count
        while True:
            outcome = await self._invoke(fn, req, args, attempt)
            if not isinstance(outcome, FnmeshError):
                if then_ack:
                    self._ack(lane, eid)
                return True, None
            if self._hard:
                raise _Stopped()
            pause = fn.retry.backoff(attempt)
            dead: FnmeshError | None = None
            if outcome.code in _FINAL or attempt >= fn.retry.max_attempts:
                if attempt > 1 or outcome.code not in _FINAL:
                    log.warning("fnmesh: request %s (%s) failed for good after %d attempts: %s", req.id, req.fn, attempt, outcome)
                dead = outcome
            elif req.deadline is not None and time.time() * 1000 + pause * 1000 > req.deadline:
                dead = FnmeshError(DEADLINE_EXCEEDED, f"deadline passed while retrying, last error: {outcome}")
            if dead is not None:
                d = dead
                await self._write(eid, lambda: self._dead_letter(lane, eid, f, d, attempt))
                if then_ack:
                    self._ack(lane, eid)
                return False, None
            await self._pause(pause)
            if self._hard:
                raise _Stopped()
            attempt += 1

    async def _pause(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self._hard:
            left = end - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(left, 0.1))

    async def _run_once(self, lane: _Lane, eid: str, f: dict[str, str], count: int, fn: _Fn, req: _Req, args: Any) -> None:
        """§12: a request with an idempotency key runs once per key (within
        the window). The caller is checked first: a refused request runs
        (and is refused) as one without a key, and never sees a stored
        result."""
        assert self._cmd
        checked = self._context(req, count)
        try:
            await self._admit(fn, req, checked)
        except Exception:
            await self._run_request(lane, eid, f, count, fn, req, args)
            return
        sub = checked.claims.get("sub") if isinstance(checked.claims, dict) else None
        key = idempotency_key(self.service, idempotency_scope(req.fn, sub if isinstance(sub, str) else "", req.idempotency_key))
        sum_ = args_hash(req.payload)
        got: list[Any] = []

        async def begin() -> None:
            got.append(await self._cmd.eval(_IDEM_BEGIN, 1, key, eid, self._idem_ms))  # type: ignore[union-attr]

        await self._write(eid, begin)
        state, prior = int(got[0][0]), str(got[0][1] or "")
        if state == 3:
            # A request with the key succeeded: a call with its arguments gets its result.
            parts = prior.split("|", 3)
            if len(parts) < 4 or parts[2] != sum_:
                err = FnmeshError(INVALID_ARGUMENT, f"idempotency key {json.dumps(req.idempotency_key)} was already used with different "
                                                    f"arguments for {self.service}.{req.fn}: use a new key for new arguments")
                if req.rt:
                    await self._write_reply(lane, eid, req, err, True)
                else:
                    await self._settle(lane, eid, count, None, err, f, count)
                return
            if req.rt:
                await self._write_reply(lane, eid, req, _RawJSON(parts[3] or "null"), True)
            else:
                self._ack(lane, eid)
            return
        if state == 2:
            err = FnmeshError(UNAVAILABLE, f'a request with idempotency key "{req.idempotency_key}" is running; try again for its result')
            if req.rt:
                await self._write_reply(lane, eid, req, err, True)
            else:
                self._ack(lane, eid)  # a duplicate send: the request holding the key runs it
            return
        ok, result = await self._run_request(lane, eid, f, count, fn, req, args, then_ack=False)
        try:
            if ok:
                await self._cmd.set(key, f"d|{eid}|{sum_}|{result or ''}", px=int(self._idem_ms))
            else:
                # Failed for good: a later request with the key may try again.
                await self._cmd.eval(_IDEM_RELEASE, 1, key, eid)
        except Exception as e:
            log.error("fnmesh: could not record idempotency key %s: %s", req.idempotency_key, e)
        self._ack(lane, eid)

    def _context(self, req: _Req, attempt: int) -> Context:
        return Context(
            id=req.id, service=self.service, function=req.fn, replica=self.id, caller=req.caller,
            deadline=req.deadline / 1000 if req.deadline is not None else None, token=req.token, claims=None,
            is_send=not req.rt, attempt=attempt, traceparent=req.traceparent, idempotency_key=req.idempotency_key,
        )

    async def _invoke(self, fn: _Fn, req: _Req, args: Any, attempt: int) -> Any:
        """Runs fn's chain: token check, claim checks, decoding and
        validation, the function. Returns the result or a FnmeshError."""
        ctx = self._context(req, attempt)
        start = time.perf_counter()
        fn.running += 1
        try:
            result = await self._chain(fn, req, args, ctx)
        except FnmeshError as e:
            result = e if valid_code(e.code) else FnmeshError(INTERNAL, f"function returned invalid error code {e.code!r}: {e.message}")
        except asyncio.CancelledError:
            cur = asyncio.current_task()
            if cur is not None and cur in self._expired:
                self._expired.discard(cur)
                cur.uncancel()
                result = FnmeshError(DEADLINE_EXCEEDED, "deadline passed")
            elif cur is not None and self._hard:
                cur.uncancel()  # cancelled at the end of the drain time: the entry is handed back
                result = FnmeshError(UNAVAILABLE, "replica stopped")
            else:
                raise
        except _BUGS as e:
            # A bug, as a panic is in Go: its text may hold anything the
            # function had in hand, so it stays in the log.
            log.error("fnmesh: function %s raised %s under request id %s", req.fn, type(e).__name__, req.id, exc_info=e)
            result = FnmeshError(INTERNAL, f"{self.service}.{req.fn} raised a {type(e).__name__}; its worker logged it under request id {req.id}")
        except Exception as e:
            log.debug("fnmesh: function %s failed: %r", req.fn, e)
            result = FnmeshError(INTERNAL, str(e) or type(e).__name__)
        finally:
            fn.running -= 1
        fn.observe(time.perf_counter() - start, isinstance(result, FnmeshError))
        return result

    async def _admit(self, fn: _Fn, req: _Req, ctx: Context) -> None:
        """The token check and the function's claim checks: sets ctx.claims,
        or raises a FnmeshError."""
        spec = fn.spec
        if self._verify is not None and not (spec.public and not req.token):
            if not req.token:
                raise FnmeshError(UNAUTHENTICATED, "missing token")
            try:
                claims = self._verify(req.token)
                if inspect.isawaitable(claims):
                    claims = await claims
            except FnmeshError as e:
                raise e if e.code == UNAUTHENTICATED else FnmeshError(UNAUTHENTICATED, e.message)
            except Exception as e:
                raise FnmeshError(UNAUTHENTICATED, str(e)) from None
            ctx.claims = claims  # type: ignore[assignment]
        if spec.require_role is not None or spec.require_claims is not None:
            if ctx.claims is None:
                raise FnmeshError(PERMISSION_DENIED, f"{self.service}.{req.fn} requires a verified token")
            if spec.require_role is not None and spec.require_role not in roles_of(ctx.claims):
                raise FnmeshError(PERMISSION_DENIED, f'role "{spec.require_role}" required')
            if spec.require_claims is not None:
                try:
                    r = spec.require_claims(ctx.claims, ctx)
                    if inspect.isawaitable(r):
                        await r
                except FnmeshError:
                    raise
                except Exception as e:
                    raise FnmeshError(PERMISSION_DENIED, str(e)) from None

    async def _chain(self, fn: _Fn, req: _Req, args: Any, ctx: Context) -> Any:
        spec = fn.spec
        await self._admit(fn, req, ctx)
        value = schema.decode(fn.arg_type, args) if fn.arg_type is not None else args
        if spec.validate is not None:
            violations = spec.validate(value)
            if violations:
                parts = [f"{v.field} ({v.rule}{'=' + v.param if v.param else ''})" for v in violations]
                raise FnmeshError(INVALID_ARGUMENT, f"arguments of {self.service}.{req.fn} failed validation: {', '.join(parts)}", violations)
        call_args = (value, ctx) if fn.wants_ctx else (value,) if fn.takes_args else ()
        # The function runs in this task (no task of its own per request):
        # the deadline and the end of the drain time cancel this task, and
        # _invoke tells the two apart.
        if fn.is_async:
            # Run it at once: a function that finishes without waiting for
            # anything needs no timer.
            coro = fn.spec.handler(*call_args)
            try:
                waiting = coro.send(None)
            except StopIteration as done:
                return schema.encode(done.value)
            aw: Awaitable[Any] = _Started(coro, waiting)
        else:
            aw = self._loop.run_in_executor(self._executor, functools.partial(fn.spec.handler, *call_args))
        task = asyncio.current_task()
        assert task is not None
        self._fn_tasks.add(task)
        timer = None
        if req.deadline is not None:
            loop = self._loop
            timer = loop.call_at(loop.time() + max(0.0, req.deadline / 1000 - time.time()), self._expire, task)
        try:
            result = await aw
        finally:
            if timer is not None:
                timer.cancel()
            self._fn_tasks.discard(task)
        return schema.encode(result)

    def _expire(self, task: asyncio.Task[Any]) -> None:
        """A request's deadline passed while its function runs: cancel it (see _invoke)."""
        self._expired.add(task)
        task.cancel()


    # ---- writing outcomes

    async def _write_reply(self, lane: _Lane, eid: str, req: _Req, outcome: Any, then_ack: bool) -> str | None:
        """§4 and §7.3: answers a call on its caller's inbox and acks its
        entry in the same pipeline, the reply first. Returns the result's
        JSON on success."""
        assert self._out
        fields, p = self._reply_fields(req.id, outcome)
        cmds: list[tuple[str, ...]] = [("XADD", req.rt, "NOMKSTREAM", "MAXLEN", "~", self._reply_max, "*", *fields)]
        if then_ack:
            cmds.append(("XACK", lane.key, GROUP, eid))
            if not self._hard:
                # The request's task ends here; the write's outcome is
                # seen by _reply_written, which frees the slot.
                lane.writing.add(eid)
                self._out.submit(cmds).add_done_callback(functools.partial(self._reply_written, lane, eid, req.id, cmds))
                return p
        pause = 0.1
        while True:
            try:
                res = await self._out.submit(cmds)
                if isinstance(res[0], Exception):
                    raise res[0]
                return p
            except Exception as e:
                # The XACK in the same pipeline ran: this replica holds the
                # outcome and writes it again until it can (§7.3).
                log.error("fnmesh: cannot answer %s; will try again: %s", req.id, e)
                if self._hard:
                    if then_ack:
                        return p
                    raise _Stopped() from None
                await asyncio.sleep(pause)
                pause = min(pause * 2, 3.2)

    def _reply_written(self, lane: _Lane, eid: str, rid: str, cmds: list[tuple[str, ...]], fut: asyncio.Future[list[Any]]) -> None:
        err: BaseException | None = ConnectionError("replica closed") if fut.cancelled() else fut.exception()
        if err is None and isinstance(fut.result()[0], Exception):
            err = fut.result()[0]
        if err is None:
            lane.writing.discard(eid)
            self._free(lane, eid)
            return
        log.error("fnmesh: cannot answer %s; will try again: %s", rid, err)
        self._spawn(self._rewrite(lane, eid, rid, cmds))

    async def _rewrite(self, lane: _Lane, eid: str, rid: str, cmds: list[tuple[str, ...]]) -> None:
        """Writes a reply (and its ack) again until it can (§7.3), or the
        replica's drain time is over: then, unacked, the entry is taken
        over and run again."""
        assert self._out
        pause = 0.1
        try:
            while not self._hard:
                await asyncio.sleep(pause)
                pause = min(pause * 2, 3.2)
                try:
                    res = await self._out.submit(cmds)
                    if not isinstance(res[0], Exception):
                        return
                    raise res[0]
                except Exception as e:
                    log.error("fnmesh: cannot answer %s; will try again: %s", rid, e)
        finally:
            lane.writing.discard(eid)
            self._free(lane, eid)

    def _reply_fields(self, rid: str, outcome: Any) -> tuple[list[str], str | None]:
        f = ["id", rid, "by", self.id]
        if isinstance(outcome, FnmeshError):
            f += ["code", outcome.code, "msg", outcome.message]
            if outcome.fields:
                f += ["det", json.dumps({"fields": [v.to_json() for v in outcome.fields]}, separators=(",", ":"))]
            return f, None
        if isinstance(outcome, _RawJSON):
            p = outcome.json
        else:
            try:
                p = _encode_json(outcome)
            except (TypeError, ValueError) as e:
                return self._reply_fields(rid, FnmeshError(INTERNAL, f"result is not JSON-encodable: {e}"))
        f += ["p", p]
        return f, p

    async def _dead_letter(self, lane: _Lane, eid: str, f: dict[str, str], err: FnmeshError, attempts: int) -> None:
        """§8: the original fields, then why."""
        assert self._cmd
        ours = {"reason": err.message, "code": err.code, "attempts": str(attempts), "by": self.id,
                "at": str(int(time.time() * 1000)), "entry": eid}
        flat: list[str] = []
        for k, v in f.items():
            if k not in ours:
                flat += [k, v]
        for k, v in ours.items():
            flat += [k, v]
        await self._cmd.execute_command("XADD", dead_letter_key(self.service), "MAXLEN", "~", self._dead_max, "*", *flat)

    async def _reject(self, lane: _Lane, eid: str, f: dict[str, str], count: int, rid: str, rt: str, err: FnmeshError) -> None:
        """A request that cannot run: answer it if it names an inbox, dead-letter it, ack it."""
        log.warning("fnmesh: rejected request %s: %s", eid, err)
        req = _Req(rid, "", rt, None, "", "", None, "", "") if rt and rid else None
        await self._settle(lane, eid, count, req, err, f, 0)

    async def _settle(self, lane: _Lane, eid: str, count: int, req: _Req | None, err: FnmeshError, f: dict[str, str], attempts: int) -> None:
        """Answers (when req has an inbox), dead-letters and acks, or hands back if stopped first."""
        try:
            if req is not None and req.rt:
                await self._write_reply(lane, eid, req, err, False)
            await self._write(eid, lambda: self._dead_letter(lane, eid, f, err, attempts))
        except _Stopped:
            return await self._hand_back(lane, eid, count)
        self._ack(lane, eid)

    async def _write(self, eid: str, w: Callable[[], Awaitable[None]]) -> None:
        """Writes an outcome; if it cannot, tries again after a pause (the
        entry stays pending) until it succeeds, or raises _Stopped once the
        replica's drain time is over."""
        pause = 0.1
        while True:
            try:
                await w()
                return
            except Exception as e:
                log.error("fnmesh: cannot record the outcome of %s; will try again: %s", eid, e)
                if self._hard:
                    raise _Stopped() from None
                await asyncio.sleep(pause)
                pause = min(pause * 2, 3.2)

    def _ack(self, lane: _Lane, eid: str) -> None:
        assert self._out
        fut = self._out.submit([("XACK", lane.key, GROUP, eid)])
        fut.add_done_callback(_log_ack_failure)

    # ---- registry (§14)

    def _record(self) -> str:
        access = "open" if self._verify is None else "token"
        fns = []
        for name in sorted(self._fns):
            fn = self._fns[name]
            a = "public" if (self._verify is not None and fn.spec.public) else access
            if fn.spec.require_role is not None or fn.spec.require_claims is not None:
                a += "+claims"
            fns.append({"name": name, "access": a, "request": fn.req_schema, "response": fn.resp_schema})
        rec: dict[str, Any] = {
            "service": self.service, "id": self.id, "host": socket.gethostname(), "pid": os.getpid(),
            "started_at": self._started_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "functions": fns,
        }
        if self._version:
            rec["version"] = self._version
        return json.dumps(rec, separators=(",", ":"))

    def _stats(self) -> str:
        fn: dict[str, Any] = {}
        for name, f in self._fns.items():
            if f.calls == 0 and f.running == 0:
                continue
            s: dict[str, Any] = {"c": f.calls}
            if f.errors:
                s["e"] = f.errors
            if f.running:
                s["f"] = f.running
            if f.calls:
                s["h"] = f.hist
            fn[name] = s
        out: dict[str, Any] = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")}
        if fn:
            out["fn"] = fn
        return json.dumps(out, separators=(",", ":"))

    async def _registry(self, mode: str) -> int:
        assert self._cmd
        s = self.service
        keys = [f"fnmesh:{{{s}}}:beats", f"fnmesh:{{{s}}}:replicas", f"fnmesh:{{{s}}}:stats", f"fnmesh:{{{s}}}:known"]
        body = self._record() if mode == "announce" else self._stats()
        now = int(await self._cmd.eval(_BEAT, 4, *keys, mode, self.id, str(self._ttl_ms), str(self._keep_ms), body, *sorted(self._fns)))
        if now > 0:
            # The index of services, for listing; not in the service's slot.
            pipe = self._cmd.pipeline(transaction=False)
            pipe.zadd("fnmesh:services", {s: now})
            pipe.zremrangebyscore("fnmesh:services", "-inf", now - self._keep_ms)
            pipe.pexpire("fnmesh:services", self._keep_ms)
            await pipe.execute()
        return now

    async def _beat(self) -> None:
        if await self._registry("beat") < 0:
            await self._registry("announce")  # the record expired (a long pause) or Redis lost it

    async def _leave(self) -> None:
        assert self._cmd
        s = self.service
        pipe = self._cmd.pipeline(transaction=True)
        pipe.zrem(f"fnmesh:{{{s}}}:beats", self.id)
        pipe.hdel(f"fnmesh:{{{s}}}:replicas", self.id)
        pipe.hdel(f"fnmesh:{{{s}}}:stats", self.id)
        await pipe.execute()

    # ---- stopping

    def close(self) -> Awaitable[None]:
        """Stops taking requests, lets running ones finish for up to
        drain_timeout, then cancels them and hands back to the group what
        did not finish (another replica takes it at once); disconnects."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._shutdown())
        return self._closing

    async def _shutdown(self) -> None:
        self._stopping = True
        for t in self._timers:
            t.cancel()
        for lane in self._lanes.values():
            if lane.task is not None:
                lane.task.cancel()
                try:
                    await lane.task
                except (asyncio.CancelledError, Exception):
                    pass
            if lane.reader is not None:
                # Its connection may hold a cancelled read: closed, never reused.
                await lane.reader.close()
        if self._claimer is not None:
            await self._claimer.close()
        if self._announce:
            try:
                await self._leave()
            except Exception as e:
                log.debug("fnmesh: leaving the registry failed: %s", e)
        if self.running:
            self._drained.clear()
            try:
                await asyncio.wait_for(self._drained.wait(), self._drain)
            except asyncio.TimeoutError:
                pass
        self._hard = True
        for fut in list(self._fn_tasks):
            fut.cancel()
        # Aborted requests hand themselves back; give them a moment, then
        # hand back those still writing.
        if self.running:
            self._drained.clear()
            try:
                await asyncio.wait_for(self._drained.wait(), 1.0)
            except asyncio.TimeoutError:
                pass
        for lane in self._lanes.values():
            for eid, count in list(lane.inflight.items()):
                await self._hand_back(lane, eid, count)
        for t in list(self._tasks):
            t.cancel()
        assert self._out and self._cmd
        await self._out.close()
        await self._cmd.close(close_connection_pool=True)
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def wait_for_signal(self) -> None:
        """Waits for SIGTERM or SIGINT, then closes the replica."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        await self.close()


def _log_ack_failure(fut: asyncio.Future[Any]) -> None:
    if fut.cancelled():
        return
    e = fut.exception()
    if e is None:
        r = fut.result()
        e = r[0] if r and isinstance(r[0], Exception) else None
    if e is not None:
        # Unacked, the entry stays pending: taken over once idle.
        log.warning("fnmesh: ack failed: %s", e)


_encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


class _Started:
    """Awaits the rest of a coroutine that was started by hand and is
    waiting for `waiting` (what its first send returned)."""

    __slots__ = ("coro", "waiting")

    def __init__(self, coro: Any, waiting: Any) -> None:
        self.coro = coro
        self.waiting = waiting

    def __await__(self) -> Any:
        coro, y = self.coro, self.waiting
        while True:
            try:
                v = yield y
            except BaseException as e:  # cancellation (deadline, drain time) goes into the function
                try:
                    y = coro.throw(e)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    y = coro.send(v)
                except StopIteration as done:
                    return done.value


class _RawJSON:
    """A result already encoded as JSON (an idempotent request's first result)."""

    __slots__ = ("json",)

    def __init__(self, j: str) -> None:
        self.json = j


async def serve(service: str, functions: Mapping[str, Callable[..., Any] | Function], **options: Any) -> Replica:
    """Joins the consumer group of service as one replica and serves
    functions until close(). Returns once the replica has joined the group
    and announced itself. Options: see Replica.

        replica = await serve("math", {"add": add}, allow_unauthenticated=True)
        await replica.wait_for_signal()
    """
    r = Replica(service, functions, **options)
    await r.start()
    return r


def run(service: str, functions: Mapping[str, Callable[..., Any] | Function], **options: Any) -> None:
    """serve() until SIGTERM or SIGINT, then drain and hand back: the main of
    a replica process."""

    async def main() -> None:
        r = await serve(service, functions, **options)
        await r.wait_for_signal()

    asyncio.run(main())


# Exceptions that are bugs of a function rather than an answer it gives:
# callers get a generic internal error, the text goes to the log.
_BUGS = (TypeError, LookupError, AttributeError, NameError, ArithmeticError, AssertionError, RecursionError, UnicodeError)

# §12, as the Go replica runs them: "r|OWNER" while running, "d|OWNER|ARGS|RESULT" when done.
_IDEM_BEGIN = """
if redis.call('SET', KEYS[1], 'r|' .. ARGV[1], 'NX', 'PX', ARGV[2]) then return {0, ''} end
local v = redis.call('GET', KEYS[1])
if not v then redis.call('SET', KEYS[1], 'r|' .. ARGV[1], 'PX', ARGV[2]) return {0, ''} end
if v == 'r|' .. ARGV[1] then return {1, ''} end
if string.sub(v, 1, 2) == 'd|' then return {3, v} end
return {2, ''}
"""
_IDEM_RELEASE = """
if redis.call('GET', KEYS[1]) == 'r|' .. ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# §14: the registry's announce/heartbeat script (registry/store_redis.go).
_BEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id, ttl, keep = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
if ARGV[1] == 'beat' then
  local exp = redis.call('ZSCORE', KEYS[1], id)
  if redis.call('HEXISTS', KEYS[2], id) == 0 or not exp or tonumber(exp) <= now then
    return -1
  end
  redis.call('HSET', KEYS[3], id, ARGV[5])
else
  redis.call('HSET', KEYS[2], id, ARGV[5])
  redis.call('HDEL', KEYS[3], id)
end
redis.call('ZADD', KEYS[1], now + ttl, id)
for i = 6, #ARGV do
  redis.call('HSET', KEYS[4], ARGV[i], now)
end
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, d in ipairs(dead) do
  redis.call('HDEL', KEYS[2], d)
  redis.call('HDEL', KEYS[3], d)
  redis.call('ZREM', KEYS[1], d)
end
local known = redis.call('HGETALL', KEYS[4])
for i = 1, #known, 2 do
  if tonumber(known[i + 1]) < now - keep then
    redis.call('HDEL', KEYS[4], known[i])
  end
end
for i = 1, 4 do
  redis.call('PEXPIRE', KEYS[i], keep)
end
return now
"""
