// Nothing lost (PROTOCOL.md §7.5, §7.6, §11, §12): take-over of entries a
// dead replica left, the delivery limit, hand-back on stop, idempotency
// keys and the backlog bound, on a real Redis.

import assert from "node:assert/strict";
import { after, describe, it } from "node:test";

import { Codes, FnmeshError, connect, serve, type Client, type Replica, type ServeOptions } from "../src/index.js";
import { argsHash, idempotencyScope } from "../src/protocol.js";
import { eventually, fieldsOf, quiet, raw, redisUrl, unique, type Raw } from "./helpers.js";

const url = redisUrl();
const cleanups: Array<() => Promise<void>> = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

async function client(): Promise<Client> {
  // Requests are queued before any replica announced itself: these tests
  // are about delivery, not the registry check.
  const c = await connect({ url, logger: quiet, skipRegistryCheck: true });
  cleanups.push(() => c.close());
  return c;
}

async function replica(service: string, fns: Parameters<typeof serve>[1], opts: Partial<ServeOptions> = {}): Promise<Replica> {
  const r = await serve(service, fns, { url, allowUnauthenticated: true, logger: quiet, ...opts });
  cleanups.push(() => r.close());
  return r;
}

let conn: Raw | undefined;
async function redis(): Promise<Raw> {
  if (!conn) {
    const c = await raw();
    conn = c;
    cleanups.unshift(() => c.close());
  }
  return conn;
}

/** Queues a call and lets consumer "dead" take it, as a replica that then died would. */
async function takenByDeadReplica(c: Client, svc: string, args: unknown, timeoutMs = 10_000) {
  const r = await redis();
  const key = `fnmesh:{${svc}}:req`;
  await r.send(["XGROUP", "CREATE", key, "fnmesh", "0", "MKSTREAM"]);
  const call = c.call(`${svc}.f`, args, { timeoutMs });
  await eventually("request queued", async () => (await r.send<number>(["XLEN", key])) === 1);
  const got = await r.send<any[]>(["XREADGROUP", "GROUP", "fnmesh", "dead", "COUNT", "1", "STREAMS", key, ">"]);
  return { call, key, entryId: String(got[0][1][0][0]) };
}

describe("delivery", () => {
  it("a replica takes over what a dead one left, as its next delivery", async () => {
    const svc = unique("takeover");
    const c = await client();
    const { call } = await takenByDeadReplica(c, svc, { n: 1 });
    await replica(svc, { f: (a: { n: number }, ctx) => ({ n: a.n, by: ctx.replica, attempt: ctx.attempt }) }, { replicaId: "heir", claimIdleMs: 200, claimIntervalMs: 50 });
    assert.deepEqual(await call, { n: 1, by: "heir", attempt: 2 });
  });

  it("a request delivered more than maxDeliveries times is not run: internal, dead-lettered", async () => {
    const svc = unique("poison");
    const c = await client();
    const { call, key, entryId } = await takenByDeadReplica(c, svc, {});
    const r = await redis();
    await r.send(["XCLAIM", key, "fnmesh", "dead", "0", entryId, "RETRYCOUNT", "5", "JUSTID"]);
    let ran = 0;
    await replica(svc, { f: () => ran++ }, { claimIdleMs: 100, claimIntervalMs: 50 });
    await assert.rejects(call, (e: FnmeshError) => e.code === Codes.Internal && /delivered 6 times/.test(e.message));
    await eventually("dead letter", async () => (await r.send<number>(["XLEN", `fnmesh:{${svc}}:dead`])) === 1);
    const [[, flat]] = await r.send<any[]>(["XRANGE", `fnmesh:{${svc}}:dead`, "-", "+"]);
    assert.equal(fieldsOf(flat).attempts, "5");
    assert.equal(ran, 0);
  });

  it("a stopping replica hands back what it did not finish; another takes it at once", async () => {
    const svc = unique("handback");
    let started!: () => void;
    const running = new Promise<void>((r) => (started = r));
    const first = await serve(svc, {
      f: (_: unknown, ctx) =>
        new Promise((_, reject) => {
          started();
          ctx.signal.addEventListener("abort", () => reject(ctx.signal.reason));
        }),
    }, { url, allowUnauthenticated: true, logger: quiet, replicaId: "leaving", drainTimeoutMs: 100, blockMs: 100 });
    const c = await client();
    const call = c.call(`${svc}.f`, { x: 1 }, { timeoutMs: 15_000 });
    await running;
    await first.close();
    // The default claimIdleMs (30 s) would wait; a handed-back entry looks idle for a day.
    await replica(svc, { f: (_: unknown, ctx) => ({ by: ctx.replica, attempt: ctx.attempt }) }, { replicaId: "next", claimIntervalMs: 50 });
    assert.deepEqual(await call, { by: "next", attempt: 1 }, "a hand-back is not counted as a delivery");
  });

  it("renews the lease of a slow request, so no other replica takes it", async () => {
    const svc = unique("lease");
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const runs: string[] = [];
    const f = async (_: unknown, ctx: { replica: string }) => {
      runs.push(ctx.replica);
      await gate;
      return ctx.replica;
    };
    await replica(svc, { f }, { replicaId: "slow", claimIdleMs: 300, claimIntervalMs: 50 });
    const c = await client();
    const call = c.call(`${svc}.f`, {}, { timeoutMs: 10_000 });
    await eventually("running", () => runs.length === 1);
    await replica(svc, { f }, { replicaId: "other", claimIdleMs: 300, claimIntervalMs: 50 });
    await new Promise((r) => setTimeout(r, 1000)); // over three claim-idle periods
    release();
    assert.equal(await call, "slow");
    assert.deepEqual(runs, ["slow"]);
  });
});

describe("idempotency keys", () => {
  it("run a request once per key; a repeated call gets the first result", async () => {
    const svc = unique("idem");
    let runs = 0;
    await replica(svc, { f: (a: { n: number }) => ({ n: a.n, run: ++runs }) });
    const c = await client();
    const first = await c.call(`${svc}.f`, { n: 1 }, { idempotencyKey: "order-1" });
    const again = await c.call(`${svc}.f`, { n: 1 }, { idempotencyKey: "order-1" });
    assert.deepEqual(first, { n: 1, run: 1 });
    assert.deepEqual(again, first);
    await c.send(`${svc}.f`, { n: 1 }, { idempotencyKey: "order-1" });
    assert.deepEqual(await c.call(`${svc}.f`, { n: 4 }, { idempotencyKey: "order-2" }), { n: 4, run: 2 });
    assert.equal(runs, 2);
    // Stored under the key scoped to the function and subject (none here), with the arguments' hash.
    const stored = await (await redis()).send<string>(["GET", `fnmesh:{${svc}}:idem:${idempotencyScope("f", "", "order-1")}`]);
    assert.equal(stored.replace(/^d\|\d+-\d+\|/, ""), `${argsHash(JSON.stringify({ n: 1 }))}|{"n":1,"run":1}`);
  });

  it("a failed request releases its key", async () => {
    const svc = unique("idemfail");
    let runs = 0;
    await replica(svc, {
      f: () => {
        if (++runs === 1) throw new FnmeshError("declined", "card declined");
        return "paid";
      },
    });
    const c = await client();
    await assert.rejects(c.call(`${svc}.f`, {}, { idempotencyKey: "pay-1" }), (e: FnmeshError) => e.code === "declined");
    assert.equal(await c.call(`${svc}.f`, {}, { idempotencyKey: "pay-1" }), "paid");
  });
});

describe("backlog bound", () => {
  it("is published by replicas, and callers refuse at it with resource_exhausted", async () => {
    const svc = unique("bound");
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const ran: number[] = [];
    await replica(svc, { f: (a: { i: number }) => (ran.push(a.i), gate) }, { concurrency: 1, maxBacklog: 3 });
    const r = await redis();
    assert.equal(await r.send(["HGET", `fnmesh:{${svc}}:limits`, "max_backlog"]), "3");
    const c = await client();
    for (let i = 0; i < 3; i++) await c.send(`${svc}.f`, { i });
    await assert.rejects(c.send(`${svc}.f`, { i: 3 }), (e: FnmeshError) => e.code === Codes.ResourceExhausted && /bound is 3/.test(e.message));
    await assert.rejects(c.call(`${svc}.f`, { i: 4 }), (e: FnmeshError) => e.code === Codes.ResourceExhausted);
    release();
    // What was accepted is drained; what was refused never runs.
    await eventually("the accepted sends ran", () => ran.length === 3);
    await eventually("all acked", async () => (await r.send<any[]>(["XPENDING", `fnmesh:{${svc}}:req`, "fnmesh"]))[0] === 0);
    assert.deepEqual([...ran].sort(), [0, 1, 2]);
  });

  it("counts sends made while a backlog read is in flight", async () => {
    const svc = unique("boundrace");
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    await replica(svc, { f: () => gate }, { concurrency: 1, maxBacklog: 3 });
    cleanups.push(async () => release());
    const c = await connect({ url, logger: quiet, admissionIntervalMs: 0 });
    cleanups.push(() => c.close());
    const r = await redis();
    const group = async () => fieldsOf((await r.send<string[][]>(["XINFO", "GROUPS", `fnmesh:{${svc}}:req`]))[0]);
    await c.send(`${svc}.f`, {}); // taken by the replica
    await eventually("running", async () => Number((await group()).pending) === 1);
    let admitted = 0;
    for (let round = 0; round < 4; round++) {
      await new Promise((res) => setTimeout(res, 5)); // the view is stale: the next send reads the backlog again
      // Sent at once: each round's first send starts a read, the others are admitted while it is in flight.
      const out = await Promise.allSettled(Array.from({ length: 5 }, (_, i) => c.send(`${svc}.f`, { round, i })));
      for (const o of out) {
        if (o.status === "fulfilled") admitted++;
        else assert.equal((o.reason as FnmeshError).code, Codes.ResourceExhausted);
      }
    }
    const lag = Number((await group()).lag);
    assert.ok(lag <= 3, `${lag} requests waiting, the bound is 3`);
    assert.equal(admitted, lag);
  });
});
