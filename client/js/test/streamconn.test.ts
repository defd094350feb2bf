// The replica's own reading connection (src/streamconn.ts): RESP values cut
// anywhere, a field above the limit kept as a bounded prefix, and the
// connection's login (ACL user, database) against the real server.

import assert from "node:assert/strict";
import { after, describe, it } from "node:test";

import { createClient } from "redis";

import { Codes, FnmeshError, connect, serve } from "../src/index.js";
import { GROUP, TOO_LARGE_PREFIX, TooLargeField, deadLetterKey, parseAutoClaim, parseStreams, requestKey } from "../src/protocol.js";
import { RespParser, ServerError } from "../src/streamconn.js";
import { eventually, fieldsOf, quiet, raw, redisUrl, unique } from "./helpers.js";

type Value = null | number | string | Value[];

function encode(v: Value): string {
  if (v === null) return "$-1\r\n";
  if (typeof v === "number") return `:${v}\r\n`;
  if (typeof v === "string") return `$${Buffer.byteLength(v)}\r\n${v}\r\n`;
  return `*${v.length}\r\n` + v.map(encode).join("");
}

function value(rand: () => number, depth = 0): Value {
  const k = Math.floor(rand() * (depth < 3 ? 5 : 3));
  if (k === 0) return null;
  if (k === 1) return Math.floor(rand() * 2e6) - 1e6;
  if (k === 2) return Array.from({ length: Math.floor(rand() * 12) }, () => "ab\r\n$*:é-"[Math.floor(rand() * 10)]).join("");
  return Array.from({ length: Math.floor(rand() * 5) }, () => value(rand, depth + 1));
}

/** Feeds b in chunks of step bytes, each in a buffer reused for the next (as the socket's). */
function parseAll(b: Buffer, step: number, maxBulk = 1 << 20): unknown[] {
  const out: unknown[] = [];
  const p = new RespParser(maxBulk, (v) => out.push(v));
  const chunk = Buffer.alloc(step);
  for (let i = 0; i < b.length; i += step) {
    const n = b.copy(chunk, 0, i, i + step);
    p.feed(chunk.subarray(0, n));
    chunk.fill(0x21);
  }
  return out;
}

describe("RespParser", () => {
  it("reads every value, cut anywhere", () => {
    let seed = 7;
    const rand = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    for (let n = 0; n < 300; n++) {
      const v = value(rand);
      const b = Buffer.from(encode(v) + "+NEXT\r\n-NOGROUP gone\r\n");
      for (const step of [1, 2, 5, b.length]) {
        const out = parseAll(b, step);
        assert.deepEqual(out.slice(0, 2), [v, "NEXT"]);
        assert.ok(out[2] instanceof ServerError && out[2].message === "NOGROUP gone");
      }
    }
  });

  it("keeps the first 4096 bytes of a bulk string above its limit", () => {
    const big = "x".repeat(3 * TOO_LARGE_PREFIX);
    const reply = Buffer.from(encode([["key", [["1-1", ["id", "a", "too_large", "", "p", big, "q", "y".repeat(100)]]]]]) + ":5\r\n");
    for (const step of [1, 7, 4096, reply.length]) {
      const out = parseAll(reply, step, 100);
      const flat = (out[0] as any)[0][1][0][1];
      assert.ok(flat[5] instanceof TooLargeField && flat[5].size === big.length && flat[5].prefix === big.slice(0, TOO_LARGE_PREFIX));
      assert.equal(out[1], 5);
      // The entry's own too_large never hides the reader's; a field at the limit is read whole.
      assert.deepEqual(parseStreams(out[0])[0].fields, { id: "a", too_large: `p ${big.length}`, p: big.slice(0, TOO_LARGE_PREFIX), q: "y".repeat(100) });
    }
    // A character cut in two at the prefix's end is dropped.
    const s = Buffer.from("é".repeat(TOO_LARGE_PREFIX)).subarray(1);
    const out = parseAll(Buffer.concat([Buffer.from(`$${s.length}\r\n`), s, Buffer.from("\r\n")]), 1000, 10);
    const cut = out[0] as TooLargeField;
    assert.ok(Buffer.byteLength(cut.prefix) <= TOO_LARGE_PREFIX && cut.prefix.endsWith("é"));
  });

  it("refuses what is not RESP", () => {
    for (const bad of ["$3\r\nabcde\r\n", "?x\r\n", "$x\r\n", "*1\n"]) {
      assert.throws(() => parseAll(Buffer.from(bad), 1), /protocol error/, bad);
    }
  });
});

describe("a replica's read connection", () => {
  const url = redisUrl();
  const cleanups: Array<() => Promise<void>> = [];
  after(async () => {
    for (const c of cleanups.reverse()) await c();
  });

  it("logs in as the URL's ACL user on its database, and refuses an oversized field as a Go replica does", async () => {
    const r = await raw();
    cleanups.push(() => r.close());
    const user = unique("reader");
    const password = unique("pw");
    await r.send(["ACL", "SETUSER", user, "on", `>${password}`, "~*", "&*", "+@all"]);
    cleanups.push(async () => void (await r.send(["ACL", "DELUSER", user])));
    const u = new URL(url);
    u.username = user;
    u.password = password;
    u.pathname = "/3";
    const service = unique("bigjs");
    const replica = await serve(service, { echo: (a: unknown) => a }, { url: u.href, allowUnauthenticated: true, logger: quiet, maxPayloadBytes: 1000 });
    cleanups.push(() => replica.close());
    const c = await connect({ url: u.href, logger: quiet });
    cleanups.push(() => c.close());
    assert.deepEqual(await c.call(`${service}.echo`, { a: 1 }), { a: 1 });
    const readers = (await r.send<string>(["CLIENT", "LIST"])).split("\n").filter((l) => l.includes(`user=${user}`) && l.includes("cmd=xreadgroup"));
    assert.ok(readers.length > 0 && readers.every((l) => / db=3 /.test(l)), `reader connections: ${readers.join("\n")}`);

    const big = JSON.stringify("z".repeat(10_000));
    const size = Buffer.byteLength(big);
    await assert.rejects(c.call(`${service}.echo`, JSON.parse(big)), (err: unknown) => {
      assert.ok(err instanceof FnmeshError && err.code === Codes.InvalidArgument, String(err));
      assert.equal(err.message, `malformed entry: field "p" of ${size} bytes exceeds the replica's limit`);
      return true;
    });
    const db3 = createClient({ url: u.href, RESP: 2 });
    await db3.connect();
    cleanups.push(() => db3.close());
    await eventually("dead-lettered", async () => Number(await db3.sendCommand(["XLEN", deadLetterKey(service)])) > 0);
    const dead = (await db3.sendCommand(["XRANGE", deadLetterKey(service), "-", "+"])) as [string, string[]][];
    assert.equal(dead.length, 1);
    const d = fieldsOf(dead[0][1]);
    assert.equal(d.code, Codes.InvalidArgument);
    assert.equal(d.reason, `malformed entry: field "p" of ${size} bytes exceeds the replica's limit`);
    assert.equal(d.too_large, `p ${size}`);
    assert.equal(d.p, big.slice(0, TOO_LARGE_PREFIX));
    assert.deepEqual(await c.call(`${service}.echo`, [2]), [2]);

    // Its reading connection, killed, is made again by the next read.
    const readerIds = async () =>
      (await r.send<string>(["CLIENT", "LIST"]))
        .split("\n")
        .filter((l) => l.includes(`user=${user}`) && l.includes("cmd=xreadgroup"))
        .map((l) => /(?:^| )id=(\d+)/.exec(l)![1]);
    const killed = await readerIds();
    assert.ok(killed.length >= 1, "no reading connection of the replica found");
    for (const id of killed) await r.send(["CLIENT", "KILL", "ID", id]);
    for (let i = 0; i < 3; i++) assert.deepEqual(await c.call(`${service}.echo`, [i], { timeoutMs: 10_000 }), [i]);
    assert.ok((await readerIds()).every((id) => !killed.includes(id)));
  });

  it("takes over an oversized entry a dead replica left and refuses it from its header", async () => {
    const r = await raw();
    cleanups.push(() => r.close());
    const service = unique("bigclaimjs");
    const key = requestKey(service);
    await r.send(["XGROUP", "CREATE", key, GROUP, "0", "MKSTREAM"]);
    cleanups.push(async () => void (await r.send(["DEL", key, deadLetterKey(service)])));
    // Delivered to a replica that died before running it: pending, taken over by XAUTOCLAIM only.
    const size = 200_000;
    await r.send(["EVAL", `redis.call('XADD', KEYS[1], '*', 'v', '1', 'id', 'big-1', 'fn', 'echo', 'p', string.rep('z', tonumber(ARGV[1])))
      return redis.call('XREADGROUP', 'GROUP', ARGV[2], 'dead', 'COUNT', '1', 'STREAMS', KEYS[1], '>') and 1`, "1", key, String(size), GROUP]);
    const replica = await serve(service, { echo: (a: unknown) => a }, { url, allowUnauthenticated: true, logger: quiet, noDiscovery: true, maxPayloadBytes: 1000, claimIdleMs: 50, claimIntervalMs: 20 });
    cleanups.push(() => replica.close());
    await eventually("dead-lettered", async () => Number(await r.send(["XLEN", deadLetterKey(service)])) > 0);
    const dead = (await r.send(["XRANGE", deadLetterKey(service), "-", "+"])) as [string, string[]][];
    assert.equal(dead.length, 1);
    const d = fieldsOf(dead[0][1]);
    assert.equal(d.reason, `malformed entry: field "p" of ${size} bytes exceeds the replica's limit`);
    assert.equal(d.code, Codes.InvalidArgument);
    assert.equal(d.too_large, `p ${size}`);
    assert.equal(d.p, "z".repeat(TOO_LARGE_PREFIX));
    await eventually("acked", async () => Number((await r.send<unknown[]>(["XPENDING", key, GROUP]))[0]) === 0);
  });

  it("fails a call whose reply has a field above maxReplyBytes with resource_exhausted, and keeps serving", async () => {
    const service = unique("bigreplyjs");
    const replica = await serve(
      service,
      { echo: (a: unknown) => a, fail: (a: { msg: string }) => { throw new FnmeshError("app_error", a.msg); } },
      { url, allowUnauthenticated: true, logger: quiet, noDiscovery: true },
    );
    cleanups.push(() => replica.close());
    const c = await connect({ url, logger: quiet, skipRegistryCheck: true, maxReplyBytes: 1000 });
    cleanups.push(() => c.close());
    const big = "z".repeat(5000);
    const size = Buffer.byteLength(JSON.stringify(big));
    await assert.rejects(c.call(`${service}.echo`, big), (err: unknown) => {
      assert.ok(err instanceof FnmeshError && err.code === Codes.ResourceExhausted, String(err));
      assert.equal(err.message, `the reply's field "p" of ${size} bytes exceeds this client's limit of 1000 (maxReplyBytes)`);
      return true;
    });
    await assert.rejects(c.call(`${service}.fail`, { msg: big }), (err: unknown) => {
      assert.ok(err instanceof FnmeshError && err.code === Codes.ResourceExhausted, String(err));
      assert.match(err.message, /^the reply's field "msg" of 5000 bytes exceeds/);
      return true;
    });
    // At the limit, read whole; the client keeps working.
    const fits = "y".repeat(998);
    assert.equal(await c.call(`${service}.echo`, fits), fits);
    await assert.rejects(c.call(`${service}.fail`, { msg: "small" }), (err: unknown) => err instanceof FnmeshError && err.code === "app_error");
  });
});

describe("parseAutoClaim", () => {
  it("reads the cursor and the entries, cut fields marked", () => {
    const out = parseAutoClaim("k", ["0-0", [["1-1", ["id", "a", "p", new TooLargeField("zz", 9000)]]], []]);
    assert.equal(out.cursor, "0-0");
    assert.deepEqual(out.entries, [{ id: "1-1", fields: { id: "a", p: "zz", too_large: "p 9000" }, present: true, cut: "p 9000" }]);
    assert.throws(() => parseAutoClaim("k", null), /protocol error/);
  });
});
