"""Redis connections, and the batcher that sends replies and acks of
requests finishing together in one pipeline."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError


def connect_redis(url: str | None, single_connection: bool = False, name: str | None = None) -> aioredis.Redis:
    """A client for url (default $REDIS_URL, else redis://127.0.0.1:6379),
    decoding replies as UTF-8 text; name: its connections' CLIENT SETNAME."""
    url = url or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379"
    pool = aioredis.ConnectionPool.from_url(url, decode_responses=True, client_name=name)
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
            return await read_replies(conn, len(cmds))
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


class _Incomplete(Exception):
    pass


# What a field too large to read keeps of its bytes (and so its dead
# letter): PROTOCOL.md, field too_large.
TOO_LARGE_PREFIX = 4096

# A bound above any bulk string Redis sends (its proto-max-bulk-len).
_NO_LIMIT = 1 << 62


def _parse(buf: bytes, pos: int) -> tuple[Any, int]:
    """One RESP2 value from buf at pos: bulk strings as text, errors as
    ResponseError values. Raises _Incomplete when buf ends first."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete()
    kind = buf[pos]
    if kind == 36:  # $ bulk string
        n = int(buf[pos + 1 : end])
        if n < 0:
            return None, end + 2
        stop = end + 2 + n
        if stop + 2 > len(buf):
            raise _Incomplete()
        return buf[end + 2 : stop].decode("utf-8", "replace"), stop + 2
    if kind == 42:  # * array
        n = int(buf[pos + 1 : end])
        pos = end + 2
        if n < 0:
            return None, pos
        out = []
        for _ in range(n):
            v, pos = _parse(buf, pos)
            out.append(v)
        return out, pos
    line = buf[pos + 1 : end].decode("utf-8", "replace")
    if kind == 58:  # : integer
        return int(line), end + 2
    if kind == 45:  # - error
        return ResponseError(line), end + 2
    return line, end + 2  # + simple string


class _Cut:
    """A bulk string longer than the reader's limit: its first
    TOO_LARGE_PREFIX bytes and its size; the rest was never held."""

    __slots__ = ("prefix", "size")

    def __init__(self, prefix: bytes, size: int) -> None:
        self.prefix = prefix
        self.size = size

    def text(self) -> str:
        # "ignore": a character cut in two at the end is dropped, so the
        # text is at most TOO_LARGE_PREFIX bytes again.
        return self.prefix.decode("utf-8", "ignore")


class _BoundedReader:
    """Reads one RESP2 value from an asyncio reader as its bytes arrive,
    holding at most one bulk string of up to max_bulk bytes whole: a
    longer one becomes a _Cut, its bytes past the prefix discarded as they
    are read."""

    _MAX_DEPTH = 64
    _MAX_LINE = 64 << 10

    def __init__(self, reader: asyncio.StreamReader, buf: bytes, max_bulk: int) -> None:
        self._r = reader
        self._b = bytearray(buf)
        self._i = 0
        self._max = max_bulk
        self.cut = False  # a _Cut was made

    def rest(self) -> bytes:
        """What was read past the value."""
        return bytes(self._b[self._i :])

    async def _more(self, want: int = 65536) -> None:
        if self._i >= 65536:
            del self._b[: self._i]
            self._i = 0
        chunk = await self._r.read(max(want, 65536))
        if not chunk:
            raise ConnectionError("connection closed by the server")
        self._b += chunk

    async def _line(self) -> bytes:
        while True:
            j = self._b.find(b"\r\n", self._i)
            if j >= 0:
                line = bytes(self._b[self._i : j])
                self._i = j + 2
                if not line:
                    raise ConnectionError("protocol error: empty RESP line")
                return line
            if len(self._b) - self._i > self._MAX_LINE:
                raise ConnectionError("protocol error: RESP line too long")
            await self._more()

    async def _take(self, n: int) -> bytes:
        while len(self._b) - self._i < n:
            await self._more(n - (len(self._b) - self._i))
        out = bytes(self._b[self._i : self._i + n])
        self._i += n
        return out

    async def _skip(self, n: int) -> None:
        have = len(self._b) - self._i
        if have >= n:
            self._i += n
            return
        n -= have
        del self._b[:]
        self._i = 0
        while n > 0:
            chunk = await self._r.read(min(n, 65536))
            if not chunk:
                raise ConnectionError("connection closed by the server")
            n -= len(chunk)

    async def value(self, depth: int = 0) -> Any:
        line = await self._line()
        kind = line[0]
        if kind == 36:  # $ bulk string
            n = int(line[1:])
            if n < 0:
                return None
            if n > self._max:
                keep = min(n, TOO_LARGE_PREFIX)
                prefix = await self._take(keep)
                await self._skip(n - keep)
                v: Any = _Cut(prefix, n)
                self.cut = True
            else:
                v = (await self._take(n)).decode("utf-8", "replace")
            if await self._take(2) != b"\r\n":
                raise ConnectionError("protocol error: bulk string not ended by CRLF")
            return v
        if kind == 42:  # * array
            n = int(line[1:])
            if n < 0:
                return None
            if depth >= self._MAX_DEPTH:
                raise ConnectionError("protocol error: RESP arrays nested too deep")
            return [await self.value(depth + 1) for _ in range(n)]
        text = line[1:].decode("utf-8", "replace")
        if kind == 58:  # : integer
            return int(text)
        if kind == 45:  # - error
            return ResponseError(text)
        return text  # + simple string


def _entry_fields(flat: list[Any]) -> dict[str, str]:
    """An entry's fields where some may be _Cut: each holds its prefix, and
    too_large names the first cut value ("NAME SIZE"), whatever the entry
    itself says."""
    return _cut_fields(flat)[0]


def _cut_fields(flat: list[Any]) -> tuple[dict[str, str], str]:
    """_entry_fields, and the reader's "NAME SIZE" ("" if nothing was cut)."""
    out: dict[str, str] = {}
    too_large = ""
    for i in range(0, len(flat) - 1, 2):
        k, v = flat[i], flat[i + 1]
        if isinstance(k, _Cut):
            k = k.text()
        if isinstance(v, _Cut):
            if not too_large:
                too_large = f"{k} {v.size}"
            v = v.text()
        out[k] = v
    if too_large:
        out["too_large"] = too_large
    return out, too_large


def _entries(entries: Any, cut: bool) -> list[tuple[str, dict[str, str], str]]:
    """The entries of a stream reply ([id, [field, value, ...]] each; fields
    {} for one trimmed away), each with the reader's "NAME SIZE" of its
    first cut field ("" if none); with cut, some values may be _Cut."""
    out: list[tuple[str, dict[str, str], str]] = []
    for e in entries or []:
        if e is None:
            continue
        flat = e[1] or []
        if cut:
            fields, mark = _cut_fields(flat)
            out.append((e[0].text() if isinstance(e[0], _Cut) else e[0], fields, mark))
        else:
            out.append((e[0], dict(zip(flat[::2], flat[1::2])), ""))
    return out


async def read_replies(conn: Any, n: int) -> list[Any]:
    """Reads n replies from a redis-py connection with nothing else
    pending on it, parsing RESP here (an error reply becomes a
    ResponseError in its place)."""
    reader = conn._reader
    if reader is None:
        raise ConnectionError("not connected")
    buf = b""
    out: list[Any] = []
    pos = 0
    while len(out) < n:
        try:
            v, pos = _parse(buf, pos)
            out.append(v)
            continue
        except _Incomplete:
            pass
        chunk = await reader.read(65536)
        if not chunk:
            raise ConnectionError("connection closed by the server")
        buf = buf[pos:] + chunk
        pos = 0
    return out


class StreamReader:
    """Reads stream replies (XREADGROUP, XAUTOCLAIM, XREAD) on a
    connection of its own, parsing RESP itself: the blocking reads of a
    replica, its hottest path, without redis-py's per-element reply
    parser, and reads that never hold a field above a limit. The
    connection (and its authentication, database and TLS) is redis-py's.
    One command at a time: callers wait their turn.

    A field longer than max_field bytes is never held whole: the entry
    keeps its first TOO_LARGE_PREFIX bytes, the rest is discarded as it
    arrives, and its field too_large says "NAME SIZE" (PROTOCOL.md)."""

    # Replies up to this size are parsed from one buffer, at once; a
    # larger one value by value as its bytes arrive (and so is one longer
    # than the limit, which may hold a field above it).
    _WHOLE = 256 << 10

    def __init__(self, url: str | None, name: str | None = None, max_field: int = _NO_LIMIT) -> None:
        self._r = connect_redis(url, single_connection=True, name=name)
        self._buf = b""
        self._max = max_field
        self._turn = asyncio.Lock()

    async def xreadgroup(self, group: str, consumer: str, key: str, last: str, count: int, block: int | None) -> list[tuple[str, dict[str, str]]]:
        """The entries of one XREADGROUP on key (fields {} for an entry
        trimmed away); raises ResponseError for an error reply."""
        args: list[str] = ["XREADGROUP", "GROUP", group, consumer, "COUNT", str(count)]
        if block is not None:
            args += ["BLOCK", str(block)]
        args += ["STREAMS", key, last]
        reply, cut = await self._exchange(args)
        return [(i, f) for _, entries in reply or [] for i, f, _ in _entries(entries, cut)]

    async def xread(self, key: str, last: str, count: int, block: int) -> list[tuple[str, dict[str, str], str]]:
        """The entries of one XREAD COUNT count BLOCK block on key after
        last, each with the reader's "NAME SIZE" of its first field above
        max_field ("" if none)."""
        reply, cut = await self._exchange(["XREAD", "COUNT", str(count), "BLOCK", str(block), "STREAMS", key, last])
        return [e for _, entries in reply or [] for e in _entries(entries, cut)]

    async def xautoclaim(self, key: str, group: str, consumer: str, min_idle_ms: int, start: str, count: int) -> tuple[str, list[tuple[str, dict[str, str]]]]:
        """XAUTOCLAIM: the next cursor and the entries taken over."""
        reply, cut = await self._exchange(["XAUTOCLAIM", key, group, consumer, str(min_idle_ms), start, "COUNT", str(count)])
        if not isinstance(reply, list) or len(reply) < 2 or not isinstance(reply[0], str):
            raise ConnectionError("protocol error: XAUTOCLAIM reply is not [cursor, entries, deleted]")
        return reply[0], [(i, f) for i, f, _ in _entries(reply[1], cut)]

    async def _exchange(self, args: list[str]) -> tuple[Any, bool]:
        """Sends one command and reads its reply; whether a field was cut."""
        async with self._turn:
            conn = self._r.connection
            if conn is None or not conn.is_connected:
                await self._r.ping()  # connects (and authenticates)
                conn = self._r.connection
                self._buf = b""
            assert conn is not None
            cut = False
            try:
                await conn.send_packed_command(pack([tuple(args)]), check_health=False)
                reader = conn._reader
                assert reader is not None
                while True:
                    if self._buf:
                        try:
                            reply, pos = _parse(self._buf, 0)
                        except _Incomplete:
                            if len(self._buf) > self._WHOLE:
                                reply, cut = await self._read_bounded(reader)
                                break
                        else:
                            if pos <= self._max:
                                # No field of it can be above the limit.
                                self._buf = self._buf[pos:]
                            else:
                                reply, cut = await self._read_bounded(reader)
                            break
                    chunk = await reader.read(65536)
                    if not chunk:
                        raise ConnectionError("connection closed by the server")
                    self._buf += chunk
            except BaseException:
                self._buf = b""
                await conn.disconnect()
                raise
        if isinstance(reply, ResponseError):
            raise reply
        return reply, cut

    async def _read_bounded(self, reader: asyncio.StreamReader) -> tuple[Any, bool]:
        """The reply that starts self._buf, read as it arrives."""
        br = _BoundedReader(reader, self._buf, self._max)
        self._buf = b""
        v = await br.value()
        self._buf = br.rest()
        return v, br.cut

    async def close(self) -> None:
        await self._r.close(close_connection_pool=True)
