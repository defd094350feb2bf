// Names, fields and small helpers of the wire protocol (docs/PROTOCOL.md).

import { createHash } from "node:crypto";

import { FnmeshError, Codes } from "./errors.js";

export const PROTOCOL_VERSION = "1";
/** The consumer group every replica of a service joins (§2). */
export const GROUP = "fnmesh";
export const REPLY_PREFIX = "fnmesh:reply:";

export const requestKey = (service: string) => `fnmesh:{${service}}:req`;
/** Where requests for fn go (§1): a versioned function ("add@v2") has a stream of its own. */
export const functionKey = (service: string, fn: string) => (fn.includes("@") ? `${requestKey(service)}:${fn}` : requestKey(service));
export const deadLetterKey = (service: string) => `fnmesh:{${service}}:dead`;
export const replyKey = (inbox: string) => `${REPLY_PREFIX}{${inbox}}`;
export const limitsKey = (service: string) => `fnmesh:{${service}}:limits`;
export const idempotencyKey = (service: string, key: string) => `fnmesh:{${service}}:idem:${key}`;

/**
 * §12: the stored name of a caller's idempotency key, scoped to the
 * function (with its version) and the verified subject ("" without one).
 */
export function idempotencyScope(fn: string, subject: string, key: string): string {
  return createHash("sha256").update(`${fn}\n${Buffer.byteLength(subject)}\n${subject}${key}`).digest("hex");
}

/** §12: the hash of the arguments (the `p` bytes as sent) a key was used with. */
export const argsHash = (payload: string | undefined) => createHash("sha256").update(payload ?? "").digest("hex");

export const SERVICE_RE = /^[a-z0-9][a-z0-9_-]{0,62}$/;
export const FUNCTION_RE = /^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$/;

/** Splits "service.function" at its first dot. */
export function splitName(name: string): [service: string, fn: string] {
  const dot = name.indexOf(".");
  const service = dot < 0 ? "" : name.slice(0, dot);
  const fn = dot < 0 ? "" : name.slice(dot + 1);
  if (!SERVICE_RE.test(service) || fn === "") {
    throw new FnmeshError(Codes.InvalidArgument, `function name ${JSON.stringify(name)}: want service.function, e.g. math.add`);
  }
  return [service, fn];
}

/** A stream entry: its id and fields (every value a string). */
export interface Entry {
  id: string;
  fields: Record<string, string>;
  /** False for a pending entry whose fields were trimmed away. */
  present: boolean;
  /** Set by the reader when it cut a field short: "NAME SIZE" of the first (also in fields.too_large). */
  cut?: string;
}

/** What a field too large to read keeps of its bytes (and so its dead letter): PROTOCOL.md, field too_large. */
export const TOO_LARGE_PREFIX = 4096;

/** A field longer than its reader's limit: its first TOO_LARGE_PREFIX bytes (as text) and its size; the rest was never held. */
export class TooLargeField {
  constructor(
    readonly prefix: string,
    readonly size: number,
  ) {}
}

/**
 * Reads the RESP2 reply of XAUTOCLAIM (cursor, entries, deleted ids) into
 * its next cursor and its entries, as parseStreams does.
 */
export function parseAutoClaim(key: string, reply: unknown): { cursor: string; entries: Entry[] } {
  if (!Array.isArray(reply) || typeof reply[0] !== "string") throw new Error("protocol error: XAUTOCLAIM reply is not [cursor, entries, deleted]");
  return { cursor: reply[0], entries: parseStreams([[key, reply[1]]]) };
}

/**
 * Reads the RESP2 reply of XREAD/XREADGROUP into entries. A field value
 * that is a TooLargeField holds its prefix, and the entry's field
 * too_large names the first one ("NAME SIZE"), whatever the entry itself
 * says.
 */
export function parseStreams(reply: unknown): Entry[] {
  const out: Entry[] = [];
  if (!Array.isArray(reply)) return out;
  for (const stream of reply) {
    const entries = Array.isArray(stream) ? stream[1] : undefined;
    if (!Array.isArray(entries)) continue;
    for (const e of entries) {
      if (!Array.isArray(e)) continue;
      const id = String(e[0]);
      const flat = e[1];
      if (!Array.isArray(flat)) {
        out.push({ id, fields: {}, present: false });
        continue;
      }
      const fields: Record<string, string> = {};
      let tooLarge = "";
      for (let i = 0; i + 1 < flat.length; i += 2) {
        const k = flat[i] instanceof TooLargeField ? flat[i].prefix : String(flat[i]);
        const v = flat[i + 1];
        if (v instanceof TooLargeField) {
          if (!tooLarge) tooLarge = `${k} ${v.size}`;
          fields[k] = v.prefix;
        } else fields[k] = String(v);
      }
      if (tooLarge) {
        fields.too_large = tooLarge;
        out.push({ id, fields, present: true, cut: tooLarge });
      } else out.push({ id, fields, present: true });
    }
  }
  return out;
}

function parseId(id: string): [bigint, bigint] {
  const [ms, seq] = id.split("-");
  try {
    return [BigInt(ms || "0"), BigInt(seq || "0")];
  } catch {
    return [0n, 0n];
  }
}

/** The smallest stream id after id: same milliseconds, sequence + 1. */
export function nextId(id: string): string {
  const [ms, seq] = parseId(id);
  return `${ms}-${seq + 1n}`;
}

export function compareIds(a: string, b: string): number {
  const [am, as] = parseId(a);
  const [bm, bs] = parseId(b);
  if (am !== bm) return am < bm ? -1 : 1;
  if (as !== bs) return as < bs ? -1 : 1;
  return 0;
}

/** Flattens fields into XADD arguments. */
export function flatten(fields: Array<[string, string]>): string[] {
  const out: string[] = [];
  for (const [k, v] of fields) out.push(k, v);
  return out;
}

/** The reason an error reply or dead letter gives, JSON in the det field. */
export interface Details {
  fields?: Array<{ field: string; rule: string; param?: string }>;
}
