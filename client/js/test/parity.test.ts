// The Node worker and caller at parity with Go: versioned functions, the
// reply and the ack in one round trip, a circuit breaker per function,
// and tokens verified with jose (ES256, RS256, JWKS).

import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { after, describe, it } from "node:test";

import { SignJWT, exportJWK } from "jose";

import { Codes, FnmeshError, connect, serve, type Client, type Replica, type ServeOptions } from "../src/index.js";
import { eventually, quiet, raw, redisUrl, unique, type Raw } from "./helpers.js";

const url = redisUrl();
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

let rawConn: Raw | undefined;
async function redis(): Promise<Raw> {
  if (!rawConn) {
    const r = (rawConn = await raw());
    cleanups.unshift(() => r.close());
  }
  return rawConn;
}

const code = (c: string, msg?: RegExp) => (e: unknown) => e instanceof FnmeshError && e.code === c && (!msg || msg.test(e.message));

describe("versioned functions", () => {
  it("are read from their own stream, by the replicas that serve them", async () => {
    const svc = unique("ver");
    const add = (a: { a: number; b: number }) => a.a + a.b;
    await replica(svc, { add }, { replicaId: "old" });
    const r = await replica(svc, { add, "add@v2": (a: { a: number; b: number }) => 10 * (a.a + a.b) }, { replicaId: "new" });
    assert.deepEqual(r.streams, [`fnmesh:{${svc}}:req`, `fnmesh:{${svc}}:req:add@v2`]);
    assert.deepEqual(r.functions, ["add", "add@v2"]);
    const c = await client();
    for (let i = 0; i < 20; i++) {
      const out = await c.callWithInfo<number>(`${svc}.add@v2`, { a: 1, b: 2 });
      assert.equal(out.result, 30);
      assert.equal(out.replica, "new", "only the replica with add@v2 reads its stream");
    }
    const rr = await redis();
    assert.ok(Number(await rr.send(["XLEN", `fnmesh:{${svc}}:req:add@v2`])) >= 1);
    const groups = await rr.send<unknown[][]>(["XINFO", "GROUPS", `fnmesh:{${svc}}:req:add@v2`]);
    assert.equal(groups.length, 1);
    // Sends to the versioned function run and are acked on its stream.
    let ran = 0;
    const s2 = unique("ver");
    const r2 = await replica(s2, { "job@v3": () => void ran++ });
    await c.send(`${s2}.job@v3`);
    await c.send(`${s2}.job@v3`);
    const deadline = Date.now() + 10_000;
    while (ran < 2 && Date.now() < deadline) await new Promise((res) => setTimeout(res, 10));
    assert.equal(ran, 2);
    await r2.close();
    const pending = await rr.send<unknown[]>(["XPENDING", `fnmesh:{${s2}}:req:job@v3`, "fnmesh"]);
    assert.equal(Number(pending[0]), 0);
  });
});

describe("replies", () => {
  it("go with their ack in one round trip", async () => {
    const svc = unique("ack");
    const r = await replica(svc, { echo: (a: unknown) => a });
    // Watch what the replica writes (its command connection).
    const cmd = (r as unknown as { cmd: { send: (a: string[]) => Promise<unknown>; pipeline: (c: string[][]) => Promise<unknown[]> } }).cmd;
    const pipelines: string[][][] = [];
    const sent: string[][] = [];
    const send = cmd.send.bind(cmd);
    const pipeline = cmd.pipeline.bind(cmd);
    cmd.send = (a) => (sent.push(a), send(a));
    cmd.pipeline = (cs) => (pipelines.push(cs), pipeline(cs));
    const c = await client();
    const rr = await redis();
    for (let i = 0; i < 10; i++) {
      assert.equal(await c.call(`${svc}.echo`, i), i);
      // Acked by the time the caller has the reply: it went in the same write.
      const pending = await rr.send<unknown[]>(["XPENDING", `fnmesh:{${svc}}:req`, "fnmesh"]);
      assert.equal(Number(pending[0]), 0, `call ${i}: its entry is still pending after the reply`);
    }
    assert.equal(pipelines.length, 10);
    for (const p of pipelines) {
      assert.deepEqual(p.map((cmd) => cmd[0]), ["XADD", "XACK"]);
      assert.equal(p[0][1], c.replyKey);
    }
    assert.equal(sent.filter((a) => a[0] === "XACK" || a[0] === "XADD").length, 0, "no reply or ack sent on its own");
  });
});

describe("circuit breaker", () => {
  it("opens after consecutive failures of a function, fails at once with unavailable, then closes on a trial call", async () => {
    const svc = unique("brk");
    const changes: string[] = [];
    // Served once (its stream and group stay when replicas stop) and called
    // past the registry check, which would refuse it first: the calls are
    // sent and time out, as with a target that stopped answering.
    await (await redis()).send(["XGROUP", "CREATE", `fnmesh:{${svc}}:req`, "fnmesh", "0", "MKSTREAM"]);
    const c = await client({ skipRegistryCheck: true, breaker: { openTimeoutMs: 3000, onStateChange: (fn: string, from: string, to: string) => changes.push(`${fn} ${from}->${to}`) } });
    const fn = `${svc}.f`;
    // Tiny timeouts say nothing about the target.
    for (let i = 0; i < 6; i++) await assert.rejects(c.call(fn, {}, { timeoutMs: 50 }), code(Codes.DeadlineExceeded));
    assert.equal(c.breakerState(fn), "closed");
    for (let i = 0; i < 5; i++) await assert.rejects(c.call(fn, {}, { timeoutMs: 250 }), code(Codes.DeadlineExceeded));
    assert.equal(c.breakerState(fn), "open");
    const t = Date.now();
    await assert.rejects(c.call(fn, {}, { timeoutMs: 5000 }), code(Codes.Unavailable, /circuit breaker/));
    await assert.rejects(c.send(fn, {}), code(Codes.Unavailable, /circuit breaker/));
    assert.ok(Date.now() - t < 1000, "an open breaker fails at once");
    assert.equal(c.breakerState(`${svc}.other`), "closed", "one breaker per function");
    // The function comes up; once the open time is over a trial call goes through and closes it.
    await replica(svc, { f: () => "up" });
    await eventually("half-open once the open time is over", () => c.breakerState(fn) === "half-open");
    assert.equal(await c.call(fn), "up");
    assert.equal(c.breakerState(fn), "closed");
    assert.deepEqual(changes, [`${fn} closed->open`, `${fn} open->half-open`, `${fn} half-open->closed`]);
  });

  it("is not opened by application errors or bad arguments", async () => {
    const svc = unique("brk");
    await replica(svc, {
      f: () => {
        throw new FnmeshError("out_of_stock", "none left");
      },
      g: { handler: () => 1, validate: () => [{ field: "x", rule: "required" }] },
    });
    const c = await client();
    for (let i = 0; i < 8; i++) {
      await assert.rejects(c.call(`${svc}.f`), code("out_of_stock"));
      await assert.rejects(c.call(`${svc}.g`), code(Codes.InvalidArgument));
    }
    assert.equal(c.breakerState(`${svc}.f`), "closed");
    assert.equal(c.breakerState(`${svc}.g`), "closed");
  });
});

describe("tokens with jose", () => {
  it("verifies ES256 and RS256 by kid and from a JWKS", async () => {
    const es = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const rs = generateKeyPairSync("rsa", { modulusLength: 2048 });
    const other = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const jwk = { ...(await exportJWK(other.publicKey)), kid: "k3", alg: "ES256", use: "sig" };
    const svc = unique("jose");
    await replica(svc, { me: (_: unknown, ctx) => ctx.claims?.sub, admin: { handler: () => "ok", requireRole: "admin" } }, {
      auth: {
        publicKeys: { k1: es.publicKey.export({ type: "spki", format: "pem" }).toString(), k2: rs.publicKey },
        jwks: { keys: [jwk] },
      },
    });
    const sign = (alg: string, kid: string, key: Parameters<SignJWT["sign"]>[0], claims: Record<string, unknown> = {}, exp: number | string = "1m") =>
      new SignJWT({ sub: "ada", ...claims }).setProtectedHeader({ alg, kid }).setExpirationTime(exp).sign(key);
    const c = await client();
    assert.equal(await c.call(`${svc}.me`, {}, { token: await sign("ES256", "k1", es.privateKey) }), "ada");
    assert.equal(await c.call(`${svc}.me`, {}, { token: await sign("RS256", "k2", rs.privateKey) }), "ada");
    assert.equal(await c.call(`${svc}.me`, {}, { token: await sign("ES256", "k3", other.privateKey) }), "ada");
    assert.equal(await c.call(`${svc}.admin`, {}, { token: await sign("ES256", "k1", es.privateKey, { roles: ["admin"] }) }), "ok");
    await assert.rejects(c.call(`${svc}.admin`, {}, { token: await sign("ES256", "k1", es.privateKey) }), code(Codes.PermissionDenied));
    // Signed by another key than its kid names; an unknown kid; expired.
    await assert.rejects(c.call(`${svc}.me`, {}, { token: await sign("ES256", "k3", es.privateKey) }), code(Codes.Unauthenticated, /signature/));
    await assert.rejects(c.call(`${svc}.me`, {}, { token: await sign("ES256", "nope", es.privateKey) }), code(Codes.Unauthenticated, /no key|no matching key/));
    await assert.rejects(c.call(`${svc}.me`, {}, { token: await sign("ES256", "k1", es.privateKey, {}, Math.floor(Date.now() / 1000) - 3600) }), code(Codes.Unauthenticated, /expired/));
    // An HMAC token against a service with public keys only.
    const hs = await new SignJWT({ sub: "x" }).setProtectedHeader({ alg: "HS256" }).setExpirationTime("1m").sign(Buffer.alloc(32, 1));
    await assert.rejects(c.call(`${svc}.me`, {}, { token: hs }), code(Codes.Unauthenticated, /signing method HS256/));
  });
});
