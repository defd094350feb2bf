// The Node caller and worker against a real Redis: the behaviours a Go
// replica and caller have (meshtest), checked on the wire.

import assert from "node:assert/strict";
import { after, describe, it } from "node:test";

import { Codes, FnmeshError, connect, serve, signHS256, type Client, type Replica, type ServeOptions } from "../src/index.js";
import { eventually, fieldsOf, quiet, raw, redisUrl, unique, type Raw } from "./helpers.js";

const url = redisUrl();
const secret = "test-secret-of-at-least-32-bytes!!";
const cleanups: Array<() => Promise<void>> = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

async function client(opts = {}): Promise<Client> {
  const c = await connect({ url, logger: quiet, ...opts });
  cleanups.push(() => c.close());
  return c;
}

async function replica(service: string, fns: Parameters<typeof serve>[1], opts: Partial<ServeOptions> = {}): Promise<Replica> {
  const r = await serve(service, fns, { url, allowUnauthenticated: opts.auth === undefined, logger: quiet, ...opts });
  cleanups.push(() => r.close());
  return r;
}

let rawConn: Raw;
async function redis(): Promise<Raw> {
  if (!rawConn) {
    rawConn = await raw();
    cleanups.unshift(() => rawConn.close());
  }
  return rawConn;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("calls", () => {
  it("returns the result and tells who answered", async () => {
    const svc = unique("math");
    const r = await replica(svc, {
      add: (args: { a: number; b: number }, ctx) => ({ sum: args.a + args.b, replica: ctx.replica, caller: ctx.caller, dl: ctx.deadline?.getTime() }),
    });
    const c = await client({ name: "node-test" });
    const before = Date.now();
    const out = await c.callWithInfo<{ sum: number; replica: string; caller: string; dl: number }>(`${svc}.add`, { a: 2, b: 3 }, { timeoutMs: 5000 });
    assert.equal(out.result.sum, 5);
    assert.equal(out.result.replica, r.id);
    assert.equal(out.replica, r.id);
    assert.equal(out.result.caller, "node-test");
    assert.ok(out.result.dl >= before + 5000 && out.result.dl <= Date.now() + 5000, "the deadline travels with the request");
  });

  it("spreads calls over replicas", async () => {
    const svc = unique("spread");
    const who = (_: unknown, ctx: { replica: string }) => ctx.replica;
    const a = await replica(svc, { who }, { replicaId: "a" });
    const b = await replica(svc, { who }, { replicaId: "b" });
    const c = await client();
    const seen = new Map<string, number>();
    // 20 rounds of 10 concurrent calls: both replicas read the stream.
    for (let round = 0; round < 20; round++) {
      const got = await Promise.all(Array.from({ length: 10 }, () => c.call<string>(`${svc}.who`)));
      for (const g of got) seen.set(g, (seen.get(g) ?? 0) + 1);
    }
    assert.deepEqual([...seen.keys()].sort(), [a.id, b.id].sort());
    for (const [id, n] of seen) assert.ok(n >= 20, `replica ${id} answered ${n} of 200`);
  });

  it("runs up to concurrency requests at once, not more", async () => {
    const svc = unique("conc");
    let running = 0;
    let peak = 0;
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    await replica(svc, {
      wait: async () => {
        running++;
        peak = Math.max(peak, running);
        await gate;
        running--;
        return "done";
      },
    }, { concurrency: 4 });
    const c = await client();
    const calls = Array.from({ length: 10 }, () => c.call(`${svc}.wait`, undefined, { timeoutMs: 10_000 }));
    await eventually("4 calls running", () => running === 4);
    await sleep(100); // the other 6 stay queued while 4 run
    assert.equal(running, 4);
    release();
    assert.deepEqual(await Promise.all(calls), Array(10).fill("done"));
    assert.equal(peak, 4);
  });

  it("fails with not_found for a service never served, and creates no key", async () => {
    const c = await client();
    const svc = unique("never");
    await assert.rejects(c.call(`${svc}.x`, {}, { timeoutMs: 5000 }), (e: FnmeshError) => e.code === Codes.NotFound);
    await assert.rejects(c.send(`${svc}.x`, {}), (e: FnmeshError) => e.code === Codes.NotFound);
    assert.equal(await (await redis()).send(["EXISTS", `fnmesh:{${svc}}:req`]), 0);
  });

  it("fails with deadline_exceeded when no replica answers", async () => {
    const c = await client({ skipRegistryCheck: true }); // the check would refuse it first: not_found
    const svc = unique("nobody");
    // Served once: the stream and its group stay when replicas stop.
    await (await redis()).send(["XGROUP", "CREATE", `fnmesh:{${svc}}:req`, "fnmesh", "0", "MKSTREAM"]);
    await assert.rejects(c.call(`${svc}.x`, {}, { timeoutMs: 100 }), (e: FnmeshError) => e.code === Codes.DeadlineExceeded);
    const [entry] = await (await redis()).send<any[]>(["XRANGE", `fnmesh:{${svc}}:req`, "-", "+"]);
    const f = fieldsOf(entry[1]);
    assert.equal(f.v, "1");
    assert.equal(f.fn, "x");
    assert.equal(f.rt, c.replyKey);
    assert.match(f.dl, /^\d{13}$/);
    assert.equal(f.p, "{}");
  });

  it("fails at once on a function no replica serves, and writes nothing", async () => {
    const c = await client();
    const svc = unique("fast");
    const nosuch = unique("nosuch");
    const started = Date.now();
    await assert.rejects(c.call(`${nosuch}.x`, {}, { timeoutMs: 10_000 }), (e: FnmeshError) => e.code === Codes.NotFound);
    await assert.rejects(c.send(`${nosuch}.x`, {}), (e: FnmeshError) => e.code === Codes.NotFound);
    assert.ok(Date.now() - started < 2000, "not at once");
    assert.equal(await (await redis()).send<number>(["EXISTS", `fnmesh:{${nosuch}}:req`]), 0);
    const rep = await serve(svc, { f: () => "ok" }, { url, allowUnauthenticated: true, logger: quiet, blockMs: 100 });
    assert.equal(await c.call(`${svc}.f`, {}), "ok");
    await assert.rejects(c.call(`${svc}.g`, {}), (e: FnmeshError) => e.code === Codes.NotFound && /serves f/.test(e.message));
    await rep.close(); // leaves the registry at once
    // Until the cached view is read again a call is sent and times out: a
    // timeout under the breaker's minTimeoutMs, so these do not open it.
    await eventually("a call with no live replica is not unavailable from the registry", async () => {
      try {
        await c.call(`${svc}.f`, {}, { timeoutMs: 100 });
        return false;
      } catch (e) {
        return (e as FnmeshError).code === Codes.Unavailable && !/circuit breaker/.test((e as FnmeshError).message);
      }
    });
    assert.equal(c.breakerState(`${svc}.f`), "closed");
    // Scale from zero: a send to a function served lately is queued.
    const id = await c.send(`${svc}.f`, {});
    assert.match(id, /-/);
    await replica(svc, { f: () => "ok" });
    // Found once the view is read again (at most every 100 ms on a miss).
    await eventually("a call to a restarted service still fails", async () => {
      try {
        return (await c.call(`${svc}.f`, {})) === "ok";
      } catch {
        return false;
      }
    });
  });

  it("fails with canceled when the signal aborts, and unavailable on a closed client", async () => {
    const svc = unique("cancel");
    await replica(svc, { slow: () => sleep(5000) });
    const c = await connect({ url, logger: quiet });
    const ctrl = new AbortController();
    const call = c.call(`${svc}.slow`, {}, { signal: ctrl.signal });
    ctrl.abort();
    await assert.rejects(call, (e: FnmeshError) => e.code === Codes.Canceled);
    const waiting = assert.rejects(c.call(`${svc}.slow`), (e: FnmeshError) => e.code === Codes.Unavailable);
    await c.close();
    await waiting;
    await assert.rejects(c.call(`${svc}.slow`), (e: FnmeshError) => e.code === Codes.Unavailable);
    assert.equal(await (await redis()).send(["EXISTS", c.replyKey]), 0, "close removes the inbox");
  });

  it("sends a versioned function's requests to its own stream", async () => {
    const svc = unique("ver");
    const c = await client({ skipRegistryCheck: true }); // queued before any replica announced
    const r = await redis();
    for (const key of [`fnmesh:{${svc}}:req:add@v2`, `fnmesh:{${svc}}:req`]) await r.send(["XGROUP", "CREATE", key, "fnmesh", "0", "MKSTREAM"]);
    await c.send(`${svc}.add@v2`, { a: 1 });
    await c.send(`${svc}.add`, { a: 1 });
    assert.equal(await r.send(["XLEN", `fnmesh:{${svc}}:req:add@v2`]), 1);
    assert.equal(await r.send(["XLEN", `fnmesh:{${svc}}:req`]), 1);
    // A replica serving add@v2 reads that stream (the request queued before it started too).
    const ran: unknown[] = [];
    await replica(svc, { "add@v2": (a: unknown) => void ran.push(a) });
    await eventually("add@v2 ran", () => ran.length === 1);
    assert.deepEqual(ran, [{ a: 1 }]);
  });

  it("refuses bad names and oversized arguments before sending", async () => {
    const c = await client({ maxPayloadBytes: 10 });
    await assert.rejects(c.call("nodot", {}), (e: FnmeshError) => e.code === Codes.InvalidArgument);
    await assert.rejects(c.call("Bad!.x", {}), (e: FnmeshError) => e.code === Codes.InvalidArgument);
    await assert.rejects(c.send("a.b", { pad: "x".repeat(20) }), (e: FnmeshError) => e.code === Codes.InvalidArgument && /exceed/.test(e.message));
  });
});

describe("errors", () => {
  it("keep their codes, messages and fields", async () => {
    const svc = unique("errs");
    await replica(svc, {
      app: () => {
        throw new FnmeshError("out_of_stock", "no more widgets");
      },
      plain: () => {
        throw new Error("disk on fire");
      },
      badcode: () => {
        throw new FnmeshError("Not A Code", "x");
      },
      checked: {
        handler: (a: { qty: number }) => a.qty,
        validate: (a: { qty?: number }) => (a?.qty && a.qty > 0 ? [] : [{ field: "qty", rule: "gt", param: "0" }]),
      },
    });
    const c = await client();
    const code = (fn: string, args?: unknown) =>
      c.call(`${svc}.${fn}`, args).then(
        () => assert.fail(`${fn} succeeded`),
        (e: FnmeshError) => e,
      );
    let e = await code("app");
    assert.equal(e.code, "out_of_stock");
    assert.equal(e.message, "no more widgets");
    e = await code("plain");
    assert.equal(e.code, Codes.Internal);
    assert.match(e.message, /disk on fire/);
    e = await code("badcode");
    assert.equal(e.code, Codes.Internal);
    e = await code("checked", { qty: 0 });
    assert.equal(e.code, Codes.InvalidArgument);
    assert.deepEqual(e.fields, [{ field: "qty", rule: "gt", param: "0" }]);
    assert.match(e.message, /qty \(gt=0\)/);
    assert.equal(await c.call(`${svc}.checked`, { qty: 2 }), 2);
    e = await code("nosuch");
    assert.equal(e.code, Codes.NotFound);
  });
});

describe("bad input", () => {
  it("is answered when it names an inbox, dead-lettered, acked, and the replica goes on", async () => {
    const svc = unique("garbage");
    let ran = 0;
    await replica(svc, { add: (a: { a: number; b: number }) => (ran++, a.a + a.b) }, { maxPayloadBytes: 1 << 16 });
    const r = await redis();
    const inbox = `fnmesh:reply:{${unique("cli")}}`;
    const key = `fnmesh:{${svc}}:req`;
    await r.send(["XADD", inbox, "*", "hello", "inbox"]);
    await r.send(["EXPIRE", inbox, "60"]);
    await r.send(["XADD", key, "*", "foo", "bar"]);
    await r.send(["XADD", key, "*", "id", "g1", "fn", "add", "rt", inbox, "p", "not json"]);
    await r.send(["XADD", key, "*", "id", "g2", "fn", "nosuch", "rt", inbox, "p", "{}"]);
    await r.send(["XADD", key, "*", "id", "g3", "fn", "add", "rt", inbox, "dl", "tomorrow"]);
    await r.send(["XADD", key, "*", "id", "g4", "v", "7", "fn", "add", "rt", inbox]);
    await r.send(["XADD", key, "*", "id", "g5", "fn", "add", "rt", inbox, "p", JSON.stringify({ pad: "x".repeat(100_000) })]);
    await r.send(["XADD", key, "*", "id", "g6", "fn", "add", "rt", "victim:key", "p", "{}"]);
    const want: Record<string, string> = { g1: "invalid_argument", g2: "not_found", g3: "invalid_argument", g4: "invalid_argument", g5: "invalid_argument" };
    const got: Record<string, string> = {};
    await eventually("replies to garbage", async () => {
      for (const [, flat] of await r.send<any[]>(["XRANGE", inbox, "-", "+"])) {
        const f = fieldsOf(flat);
        if (f.id) got[f.id] = f.code;
      }
      return Object.keys(got).length === Object.keys(want).length;
    });
    assert.deepEqual(got, want);
    await eventually("7 dead letters", async () => (await r.send<number>(["XLEN", `fnmesh:{${svc}}:dead`])) === 7);
    const [first] = await r.send<any[]>(["XRANGE", `fnmesh:{${svc}}:dead`, "-", "+", "COUNT", "1"]);
    const dl = fieldsOf(first[1]);
    assert.equal(dl.foo, "bar", "a dead letter keeps the original fields");
    assert.equal(dl.code, "invalid_argument");
    assert.equal(dl.attempts, "0");
    assert.match(dl.entry, /^\d+-\d+$/);
    assert.equal(await r.send(["EXISTS", "victim:key"]), 0, "never writes to a key that is not an inbox");
    await eventually("garbage acked", async () => (await r.send<any[]>(["XPENDING", key, "fnmesh"]))[0] === 0);
    assert.equal(ran, 0);
    const c = await client();
    assert.equal(await c.call(`${svc}.add`, { a: 20, b: 22 }), 42);
  });

  it("does not run an expired call; records an expired send", async () => {
    const svc = unique("expired");
    let ran = 0;
    await replica(svc, { f: () => ran++ });
    const r = await redis();
    const key = `fnmesh:{${svc}}:req`;
    const c = await client();
    const past = String(Date.now() - 1000);
    await r.send(["XADD", key, "*", "id", "late-call", "fn", "f", "rt", c.replyKey, "dl", past]);
    await r.send(["XADD", key, "*", "id", "late-send", "fn", "f", "dl", past]);
    await eventually("the expired send dead-lettered", async () => (await r.send<number>(["XLEN", `fnmesh:{${svc}}:dead`])) === 1);
    const [[, flat]] = await r.send<any[]>(["XRANGE", `fnmesh:{${svc}}:dead`, "-", "+"]);
    assert.equal(fieldsOf(flat).code, "deadline_exceeded");
    assert.equal(fieldsOf(flat).id, "late-send");
    await eventually("both acked", async () => (await r.send<any[]>(["XPENDING", key, "fnmesh"]))[0] === 0);
    assert.equal(ran, 0);
    const replies = (await r.send<any[]>(["XRANGE", c.replyKey, "-", "+"])).filter(([, f]: [string, string[]]) => fieldsOf(f).id === "late-call");
    assert.equal(replies.length, 0, "an expired call gets no reply");
  });
});

describe("sends", () => {
  it("run once each", async () => {
    const svc = unique("sends");
    const seen = new Map<number, number>();
    await replica(svc, { rec: (a: { i: number }) => void seen.set(a.i, (seen.get(a.i) ?? 0) + 1) }, { replicaId: "s1" });
    await replica(svc, { rec: (a: { i: number }) => void seen.set(a.i, (seen.get(a.i) ?? 0) + 1) }, { replicaId: "s2" });
    const c = await client();
    const ids = await Promise.all(Array.from({ length: 200 }, (_, i) => c.send(`${svc}.rec`, { i })));
    assert.equal(new Set(ids).size, 200);
    await eventually("200 sends run", () => seen.size === 200);
    // Once every entry is acked none can be delivered again: then count.
    const r = await redis();
    await eventually("all acked", async () => (await r.send<any[]>(["XPENDING", `fnmesh:{${svc}}:req`, "fnmesh"]))[0] === 0);
    for (const [i, n] of seen) assert.equal(n, 1, `send ${i} ran ${n} times`);
  });

  it("are retried with backoff, then dead-lettered; final codes at once", async () => {
    const svc = unique("retry");
    const runs = new Map<string, number>();
    await replica(svc, {
      flaky: (_: unknown, ctx) => {
        runs.set(ctx.id, ctx.attempt);
        throw new Error("backend down");
      },
      denied: (_: unknown, ctx) => {
        runs.set(ctx.id, ctx.attempt);
        throw new FnmeshError(Codes.PermissionDenied, "no");
      },
    }, { retry: { maxAttempts: 3, initialBackoffMs: 10, maxBackoffMs: 20 } });
    const c = await client();
    const flaky = await c.send(`${svc}.flaky`, {});
    const denied = await c.send(`${svc}.denied`, {});
    const r = await redis();
    const dead = async () => (await r.send<any[]>(["XRANGE", `fnmesh:{${svc}}:dead`, "-", "+"])).map(([, f]: [string, string[]]) => fieldsOf(f));
    await eventually("2 dead letters", async () => (await dead()).length === 2);
    const byId = Object.fromEntries((await dead()).map((d) => [d.id, d]));
    assert.equal(byId[flaky].attempts, "3");
    assert.equal(byId[flaky].code, "internal");
    assert.match(byId[flaky].reason, /backend down/);
    assert.equal(runs.get(flaky), 3);
    assert.equal(byId[denied].attempts, "1");
    assert.equal(byId[denied].code, "permission_denied");
    assert.equal(runs.get(denied), 1);
  });
});

describe("tokens", () => {
  it("are checked before the function runs", async () => {
    const svc = unique("auth");
    await replica(svc, {
      me: (_: unknown, ctx) => ctx.claims?.sub,
      stats: { handler: () => "secret stats", requireRole: "admin" },
      ping: { handler: () => "pong", public: true },
    }, { auth: { hmacSecret: secret } });
    const c = await client();
    const now = Math.floor(Date.now() / 1000);
    const ada = signHS256(secret, { sub: "ada", exp: now + 60 });
    const root = signHS256(secret, { sub: "root", roles: ["admin"], exp: now + 60 });
    const fail = (p: Promise<unknown>, code: string, msg?: RegExp) =>
      assert.rejects(p, (e: FnmeshError) => e.code === code && (!msg || msg.test(e.message)));
    assert.equal(await c.call(`${svc}.me`, {}, { token: ada }), "ada");
    await fail(c.call(`${svc}.me`, {}), Codes.Unauthenticated, /missing token/);
    await fail(c.call(`${svc}.me`, {}, { token: signHS256("another-secret-of-at-least-32-bytes", { sub: "x", exp: now + 60 }) }), Codes.Unauthenticated, /signature/);
    await fail(c.call(`${svc}.me`, {}, { token: signHS256(secret, { sub: "x", exp: now - 3600 }) }), Codes.Unauthenticated, /expired/);
    await fail(c.call(`${svc}.me`, {}, { token: signHS256(secret, { sub: "x" }) }), Codes.Unauthenticated, /exp/);
    await fail(c.call(`${svc}.me`, {}, { token: "not.a.jwt" }), Codes.Unauthenticated, /malformed/);
    const none = Buffer.from('{"alg":"none"}').toString("base64url") + "." + Buffer.from('{"sub":"x"}').toString("base64url") + ".";
    await fail(c.call(`${svc}.me`, {}, { token: none }), Codes.Unauthenticated);
    await fail(c.call(`${svc}.stats`, {}, { token: ada }), Codes.PermissionDenied, /admin/);
    assert.equal(await c.call(`${svc}.stats`, {}, { token: root }), "secret stats");
    assert.equal(await c.call(`${svc}.ping`), "pong");
  });

  it("a service must choose: a check, or allowUnauthenticated", async () => {
    await assert.rejects(serve("x", { f: () => 1 }, { url }), /auth is not set/);
    await assert.rejects(serve("x", { f: () => 1 }, { url, allowUnauthenticated: true, auth: { hmacSecret: secret } }), /choose one/);
    await assert.rejects(serve("Bad Name", {}, { url, allowUnauthenticated: true }), /service name.*no functions/);
  });
});

describe("replicas", () => {
  it("finish their own pending entries after a restart under the same name", async () => {
    const svc = unique("restart");
    const r = await redis();
    const key = `fnmesh:{${svc}}:req`;
    const c = await client({ skipRegistryCheck: true }); // queued before any replica announced
    await r.send(["XGROUP", "CREATE", key, "fnmesh", "0", "MKSTREAM"]);
    const call = c.call(`${svc}.f`, { n: 7 }, { timeoutMs: 10_000 });
    await eventually("request queued", async () => (await r.send<number>(["XLEN", key])) === 1);
    // A replica named "same" took the entry and died before answering.
    await r.send(["XREADGROUP", "GROUP", "fnmesh", "same", "COUNT", "10", "STREAMS", key, ">"]);
    await replica(svc, { f: (a: { n: number }, ctx) => ({ n: a.n, attempt: ctx.attempt }) }, { replicaId: "same" });
    assert.deepEqual(await call, { n: 7, attempt: 2 });
  });

  it("dead-letter a request whose reply can never be written, and keep serving", async () => {
    const svc = unique("poison");
    await replica(svc, { f: () => "ok" });
    const r = await redis();
    const rt = `fnmesh:reply:{${unique("string")}}`;
    await r.send(["SET", rt, "not a stream", "EX", "60"]);
    await r.send(["XADD", `fnmesh:{${svc}}:req`, "*", "v", "1", "id", "poison-1", "fn", "f", "rt", rt, "p", "{}"]);
    const c = await client();
    assert.equal(await c.call(`${svc}.f`, undefined, { timeoutMs: 5000 }), "ok");
    await eventually("dead letter written", async () => {
      const dead = await r.send<any[]>(["XRANGE", `fnmesh:{${svc}}:dead`, "-", "+"]);
      return dead.length === 1 && /cannot be written.*WRONGTYPE/.test(fieldsOf(dead[0][1]).reason ?? "");
    });
    await eventually("request acked", async () => Number((await r.send<any[]>(["XPENDING", `fnmesh:{${svc}}:req`, "fnmesh"]))[0]) === 0);
    await r.send(["DEL", rt]);
  });

  it("recreate their group when the stream is deleted", async () => {
    const svc = unique("nogroup");
    await replica(svc, { f: () => "ok" }, { blockMs: 100 });
    const c = await client();
    assert.equal(await c.call(`${svc}.f`), "ok");
    await (await redis()).send(["DEL", `fnmesh:{${svc}}:req`]);
    // Until the replica has made the stream again, calls are not_found.
    await eventually("calls answered again", async () => {
      try {
        return (await c.call(`${svc}.f`, undefined, { timeoutMs: 8000 })) === "ok";
      } catch (e) {
        if ((e as FnmeshError).code !== Codes.NotFound) throw e;
        await sleep(50);
        return false;
      }
    });
  });

  it("trim acknowledged requests and read replies; keep the inbox alive with a TTL", async () => {
    const svc = unique("trim");
    await replica(svc, { f: (a: number) => a }, { trimIntervalMs: 100 });
    const c = await client({ inboxRefreshMs: 100 });
    for (let i = 0; i < 5; i++) await Promise.all(Array.from({ length: 100 }, (_, j) => c.call(`${svc}.f`, i * 100 + j)));
    const r = await redis();
    await eventually("streams trimmed", async () => {
      const req = await r.send<number>(["XLEN", `fnmesh:{${svc}}:req`]);
      const rep = await r.send<number>(["XLEN", c.replyKey]);
      return req < 200 && rep < 200;
    });
    const ttl = await r.send<number>(["PTTL", c.replyKey]);
    assert.ok(ttl > 0 && ttl <= 60_000, `inbox TTL ${ttl}`);
  });

  it("drain on close: a running call finishes, new ones wait for another replica", async () => {
    const svc = unique("drain");
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let started!: () => void;
    const running = new Promise<void>((r) => (started = r));
    const who = (_: unknown, ctx: { replica: string }) => ctx.replica;
    const rep = await serve(svc, { f: async () => (started(), await gate, "finished"), who }, { url, allowUnauthenticated: true, logger: quiet, blockMs: 100 });
    const c = await client();
    const call = c.call(`${svc}.f`, {}, { timeoutMs: 10_000 });
    await running;
    const closed = rep.close();
    // A call made while the replica drains is not run by it: it waits for
    // another replica, which answers it while the first call still runs.
    const next = c.call(`${svc}.who`, {}, { timeoutMs: 10_000 });
    await replica(svc, { f: () => "second", who }, { replicaId: "second", claimIntervalMs: 50 });
    assert.equal(await next, "second");
    assert.equal(rep.running, 1);
    release();
    await closed;
    assert.equal(await call, "finished");
  });
});
