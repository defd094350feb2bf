// Authorization holds on every path of a worker (PROTOCOL.md §12,
// SECURITY.md): a stored idempotent result only for callers who pass the
// token and claim checks, keys scoped to function and subject, a key with
// other arguments refused, a bug's text kept out of replies; on a real Redis.

import assert from "node:assert/strict";
import { after, describe, it } from "node:test";

import { Codes, FnmeshError, connect, serve, signHS256, type Client, type ServeOptions } from "../src/index.js";
import { argsHash, idempotencyScope } from "../src/protocol.js";
import { redisUrl, unique } from "./helpers.js";

const url = redisUrl();
const secret = "test-secret-of-at-least-32-bytes!!";
const cleanups: Array<() => Promise<void>> = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});
const silent = { debug() {}, info() {}, warn() {}, error() {} };

async function client(): Promise<Client> {
  const c = await connect({ url, logger: silent });
  cleanups.push(() => c.close());
  return c;
}

async function replica(service: string, fns: Parameters<typeof serve>[1], opts: Partial<ServeOptions>) {
  const r = await serve(service, fns, { url, logger: silent, ...opts });
  cleanups.push(() => r.close());
  return r;
}

const refused = (code: string) => (e: FnmeshError) => e.code === code;

describe("idempotency keys and authorization", () => {
  it("a stored result goes only to callers who pass the token and role checks; keys are scoped to the subject", async () => {
    const svc = unique("idauth");
    let runs = 0;
    await replica(svc, { admin: { handler: () => `secret-${++runs}`, requireRole: "admin" } }, { auth: { hmacSecret: secret } });
    const c = await client();
    const now = Math.floor(Date.now() / 1000);
    const root = signHS256(secret, { sub: "root", roles: ["admin"], exp: now + 60 });
    const other = signHS256(secret, { sub: "other-admin", roles: ["admin"], exp: now + 60 });
    const ada = signHS256(secret, { sub: "ada", roles: ["user"], exp: now + 60 });
    const expired = signHS256(secret, { sub: "root", roles: ["admin"], exp: now - 3600 });
    const key = { idempotencyKey: "order-1" };
    assert.equal(await c.call(`${svc}.admin`, {}, { ...key, token: root }), "secret-1");
    await assert.rejects(c.call(`${svc}.admin`, {}, key), refused(Codes.Unauthenticated));
    await assert.rejects(c.call(`${svc}.admin`, {}, { ...key, token: expired }), refused(Codes.Unauthenticated));
    await assert.rejects(c.call(`${svc}.admin`, {}, { ...key, token: ada }), refused(Codes.PermissionDenied));
    assert.equal(runs, 1);
    assert.equal(await c.call(`${svc}.admin`, {}, { ...key, token: root }), "secret-1");
    assert.equal(await c.call(`${svc}.admin`, {}, { ...key, token: other }), "secret-2");
  });

  it("a key used on one function does not answer another", async () => {
    const svc = unique("idfn");
    await replica(svc, { harmless: () => "harmless", wipe: () => "wiped" }, { allowUnauthenticated: true });
    const c = await client();
    assert.equal(await c.call(`${svc}.harmless`, {}, { idempotencyKey: "k" }), "harmless");
    assert.equal(await c.call(`${svc}.wipe`, {}, { idempotencyKey: "k" }), "wiped");
  });

  it("a key reused with other arguments is refused with invalid_argument", async () => {
    const svc = unique("idargs");
    let runs = 0;
    await replica(svc, { add: (a: { a: number; b: number }) => (runs++, a.a + a.b) }, { allowUnauthenticated: true });
    const c = await client();
    assert.equal(await c.call(`${svc}.add`, { a: 1, b: 2 }, { idempotencyKey: "pay-7" }), 3);
    await assert.rejects(
      c.call(`${svc}.add`, { a: 1, b: 1000 }, { idempotencyKey: "pay-7" }),
      (e: FnmeshError) => e.code === Codes.InvalidArgument && /different arguments/.test(e.message),
    );
    assert.equal(await c.call(`${svc}.add`, { a: 1, b: 2 }, { idempotencyKey: "pay-7" }), 3);
    assert.equal(runs, 1);
  });

  it("stores keys under the same names as a Go replica", () => {
    // The same vectors are in handlers/idempotency_test.go.
    assert.equal(idempotencyScope("pay@v2", "alice", "k-1"), "e0ea0eb467b0fbaa4dddf8a6c8e493d207084bf9b84c9a3fdbdf31e6a934e1f7");
    assert.equal(argsHash('{"a":1}'), "015abd7f5cc57a2dd94b7590f04ad8084273905ee33ec5cebeae62276a97f862");
  });
});

describe("internal detail", () => {
  it("a function's bug (TypeError) reaches callers as internal with the request id, not its text", async () => {
    const svc = unique("bug");
    const logged: string[] = [];
    const logger = { ...silent, error: (msg: string, f?: Record<string, unknown>) => void logged.push(`${msg} ${JSON.stringify(f)}`) };
    await replica(svc, { bug: (a: { user?: { name: string } }) => a.user!.name.toUpperCase() }, { allowUnauthenticated: true, logger });
    const c = await client();
    const e: FnmeshError = await c.call(`${svc}.bug`, {}).then(() => assert.fail("succeeded"), (err) => err);
    assert.equal(e.code, Codes.Internal);
    assert.doesNotMatch(e.message, /Cannot read|undefined/);
    const id = /request id (\S+)/.exec(e.message)?.[1];
    assert.ok(id, e.message);
    assert.ok(logged.some((l) => l.includes(id) && /Cannot read/.test(l)), logged.join("\n"));
  });
});
