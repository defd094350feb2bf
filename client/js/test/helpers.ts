// Test helpers: the Redis the Go harness started (REDIS_URL), unique
// names, and a raw connection for looking at streams.

import { randomBytes } from "node:crypto";
import { createClient } from "redis";

export function redisUrl(): string {
  const url = process.env.REDIS_URL;
  if (!url) {
    throw new Error(
      "REDIS_URL is not set: these tests need a real Redis. Run them with `go test ./integration -run TestNodeSuite` " +
        "(it starts redis-server), or set REDIS_URL=redis://host:port",
    );
  }
  return url;
}

export const unique = (prefix: string) => prefix + randomBytes(4).toString("hex");

export type Raw = {
  send<T = any>(args: string[]): Promise<T>;
  close(): Promise<void>;
};

/** A plain connection for looking at and writing streams as redis-cli would. */
export async function raw(): Promise<Raw> {
  const c = createClient({ url: redisUrl(), RESP: 2 });
  c.on("error", () => {});
  await c.connect();
  return {
    send: (args) => c.sendCommand(args) as Promise<any>,
    close: () => c.close(),
  };
}

/** Polls cond until it holds or ms pass: for outcomes with no signal of their own (a record appearing in Redis). */
export async function eventually(what: string, cond: () => Promise<boolean> | boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`after ${ms} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Fields of a flat RESP2 field list. */
export function fieldsOf(flat: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (let i = 0; i + 1 < flat.length; i += 2) out[flat[i]] = flat[i + 1];
  return out;
}

export const quiet = { debug() {}, info() {}, warn() {}, error() {} };
