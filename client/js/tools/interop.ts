// A Node replica or caller for the Go interop tests (integration/interop_test.go).
//
//   node dist/tools/interop.js serve SERVICE REPLICA [--secret S] [--concurrency N] [--claim-idle SECONDS]
//     serves who, sleep, add, div, fail, boom, me, admin (role admin), ping
//     (public) and record; prints "ready REPLICA" once in the group, and on
//     SIGTERM drains and prints "stopped REPLICA".
//   node dist/tools/interop.js call FN JSON [--timeout MS] [--token T]
//     prints the outcome as JSON, with the process's peak RSS once
//     connected (rss_before_kb) and after the call (rss_peak_kb)
//   node dist/tools/interop.js send FN JSON [--token T]
//     print one JSON line: {"ok":true,"result":...,"replica":...} or
//     {"ok":false,"code":...,"message":...,"fields":[...]}.
//
// REDIS_URL names the server.

import { createClient } from "redis";

import { FnmeshError, connect, serve, type Context } from "../src/index.js";

function flag(args: string[], name: string): string | undefined {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
}

function line(v: unknown): void {
  process.stdout.write(JSON.stringify(v) + "\n");
}

async function runServe(service: string, replicaId: string, args: string[]): Promise<void> {
  const secret = flag(args, "--secret");
  const counter = createClient({ url: process.env.REDIS_URL, RESP: 2 });
  counter.on("error", () => {});
  await counter.connect();
  const sleep = (ms: number, signal: AbortSignal) =>
    new Promise<void>((resolve, reject) => {
      const t = setTimeout(resolve, ms);
      signal.addEventListener("abort", () => (clearTimeout(t), reject(signal.reason)), { once: true });
    });
  const replica = await serve(
    service,
    {
      who: (_: unknown, ctx: Context) => ctx.replica,
      sleep: async (a: { ms: number }, ctx: Context) => {
        await sleep(a?.ms ?? 0, ctx.signal);
        return ctx.replica;
      },
      add: (a: { a: number; b: number }, ctx: Context) => ({ value: a.a + a.b, replica: ctx.replica }),
      div: {
        handler: (a: { a: number; b: number }, ctx: Context) => ({ value: a.a / a.b, replica: ctx.replica }),
        validate: (a: { b?: number }) => (a?.b === 0 || a?.b === undefined ? [{ field: "b", rule: "ne", param: "0" }] : []),
      },
      fail: (a: { code: string; message: string }) => {
        throw new FnmeshError(a.code, a.message);
      },
      boom: () => {
        throw new Error("boom from node");
      },
      me: (_: unknown, ctx: Context) => ({ sub: ctx.claims?.sub ?? null, replica: ctx.replica }),
      admin: { handler: () => "admin only", requireRole: "admin" },
      ping: { handler: () => "pong", public: true },
      // Counts runs in Redis (HINCRBY fnmesh-test:runs:SERVICE KEY 1), so
      // tests count across processes.
      record: async (a: { key: string }) => {
        await counter.sendCommand(["HINCRBY", `fnmesh-test:runs:${service}`, a.key, "1"]);
        return "recorded";
      },
    },
    {
      url: process.env.REDIS_URL,
      replicaId,
      concurrency: Number(flag(args, "--concurrency") ?? 64),
      ...(flag(args, "--claim-idle") ? { claimIdleMs: Math.round(Number(flag(args, "--claim-idle")) * 1000) } : {}),
      ...(secret ? { auth: { hmacSecret: secret } } : { allowUnauthenticated: true }),
      logger: { debug() {}, info() {}, warn: (m, a) => console.error("warn", m, a ?? ""), error: (m, a) => console.error("error", m, a ?? "") },
    },
  );
  process.stdout.write(`ready ${replica.id}\n`);
  await new Promise<void>((resolve) => {
    process.once("SIGTERM", resolve);
    process.once("SIGINT", resolve);
  });
  await replica.close();
  await counter.close();
  process.stdout.write(`stopped ${replica.id}\n`);
}

async function runCaller(mode: "call" | "send", fn: string, json: string, args: string[]): Promise<void> {
  const client = await connect({ url: process.env.REDIS_URL, name: "node-interop" });
  // Peak RSS (KB) once connected, and after the call: tests bound what a call costs.
  const rss = { rss_before_kb: process.resourceUsage().maxRSS };
  const peak = () => ({ ...rss, rss_peak_kb: process.resourceUsage().maxRSS });
  try {
    const token = flag(args, "--token");
    const timeout = flag(args, "--timeout");
    const parsed = json === "" ? undefined : JSON.parse(json);
    if (mode === "send") {
      line({ ok: true, id: await client.send(fn, parsed, { token }), ...peak() });
      return;
    }
    const out = await client.callWithInfo(fn, parsed, { token, timeoutMs: timeout ? Number(timeout) : undefined });
    line({ ok: true, result: out.result, replica: out.replica, id: out.id, ...peak() });
  } catch (err) {
    if (!(err instanceof FnmeshError)) throw err;
    line({ ok: false, code: err.code, message: err.message, fields: err.fields, ...peak() });
  } finally {
    await client.close();
  }
}

async function main(): Promise<void> {
  const [mode, a, b, ...rest] = process.argv.slice(2);
  switch (mode) {
    case "serve":
      return runServe(a, b, rest);
    case "call":
    case "send":
      return runCaller(mode, a, b ?? "", rest);
  }
  throw new Error(`usage: interop serve SERVICE REPLICA | call FN JSON | send FN JSON (got ${mode})`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
