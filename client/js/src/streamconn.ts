// The connection of stream reads (a replica's blocking reads and its
// take-overs, a caller's inbox): a socket of its own whose replies are
// parsed here, so that a field longer than the reader's limit is never
// held whole (a general-purpose client reads every reply into memory
// before handing it over).

import net from "node:net";
import tls from "node:tls";
import { StringDecoder } from "node:string_decoder";

import type { Args, Logger, RedisOptions } from "./conn.js";
import { TOO_LARGE_PREFIX, TooLargeField } from "./protocol.js";

const CHUNK = 64 << 10;
const MAX_LINE = 64 << 10;
const MAX_DEPTH = 64;
const CONNECT_TIMEOUT_MS = 5000;

/** An error reply of the server (its message is the reply's text, e.g. "NOGROUP ..."). */
export class ServerError extends Error {}

/**
 * Reads RESP2 values from chunks as they arrive. Bulk strings become
 * text; one longer than maxBulk becomes a TooLargeField holding its first
 * TOO_LARGE_PREFIX bytes, the rest dropped as it arrives. A chunk is not
 * kept past feed (its buffer may be reused).
 */
export class RespParser {
  private line?: Buffer; // a header line cut by the end of a chunk
  private bulk?: { size: number; keep: number; parts: Buffer[]; got: number; skip: number; crlf: number };
  private readonly stack: { arr: unknown[]; left: number }[] = [];

  constructor(
    private readonly maxBulk: number,
    private readonly onValue: (v: unknown) => void,
  ) {}

  feed(b: Buffer): void {
    let i = 0;
    while (i < b.length) {
      const bk = this.bulk;
      if (bk) {
        if (bk.got < bk.keep) {
          const n = Math.min(bk.keep - bk.got, b.length - i);
          bk.parts.push(Buffer.from(b.subarray(i, i + n))); // a copy: b may be reused
          bk.got += n;
          i += n;
        } else if (bk.skip > 0) {
          const n = Math.min(bk.skip, b.length - i);
          bk.skip -= n;
          i += n;
        } else {
          const want = bk.crlf === 2 ? 13 : 10;
          if (b[i] !== want) throw new Error("protocol error: bulk string not ended by CRLF");
          i++;
          if (--bk.crlf === 0) {
            this.bulk = undefined;
            const data = bk.parts.length === 1 ? bk.parts[0] : Buffer.concat(bk.parts);
            this.push(bk.size > this.maxBulk ? new TooLargeField(prefixText(data), bk.size) : data.toString("utf8"));
          }
        }
        continue;
      }
      const j = b.indexOf(10, i);
      if (j < 0) {
        const rest = Buffer.from(b.subarray(i));
        this.line = this.line ? Buffer.concat([this.line, rest]) : rest;
        if (this.line.length > MAX_LINE) throw new Error("protocol error: RESP line too long");
        return;
      }
      // The header is hb[hs..he), its CRLF excluded.
      let hb = b;
      let hs = i;
      if (this.line) {
        hb = Buffer.concat([this.line, b.subarray(i, j + 1)]);
        hs = 0;
        this.line = undefined;
      }
      const he = hb === b ? j - 1 : hb.length - 2;
      i = j + 1;
      if (he <= hs || hb[he] !== 13) throw new Error("protocol error: RESP line not ended by CRLF");
      const kind = hb[hs];
      switch (kind) {
        case 36: {
          // $ bulk string
          const n = parseLength(hb, hs + 1, he);
          if (n < 0) {
            this.push(null);
          } else if (n <= this.maxBulk && i + n + 2 <= b.length) {
            if (b[i + n] !== 13 || b[i + n + 1] !== 10) throw new Error("protocol error: bulk string not ended by CRLF");
            this.push(b.toString("utf8", i, i + n));
            i += n + 2;
          } else {
            const keep = n > this.maxBulk ? Math.min(n, TOO_LARGE_PREFIX) : n;
            this.bulk = { size: n, keep, parts: [], got: 0, skip: n - keep, crlf: 2 };
            if (keep === 0) this.bulk.parts.push(Buffer.alloc(0));
          }
          break;
        }
        case 42: {
          // * array
          const n = parseLength(hb, hs + 1, he);
          if (n < 0) this.push(null);
          else if (n === 0) this.push([]);
          else {
            if (this.stack.length >= MAX_DEPTH) throw new Error("protocol error: RESP arrays nested too deep");
            this.stack.push({ arr: [], left: n });
          }
          break;
        }
        case 58: // : integer
          this.push(Number(hb.toString("latin1", hs + 1, he)));
          break;
        case 45: // - error
          this.push(new ServerError(hb.toString("utf8", hs + 1, he)));
          break;
        case 43: // + simple string
          this.push(hb.toString("utf8", hs + 1, he));
          break;
        default:
          throw new Error(`protocol error: unknown RESP type ${JSON.stringify(String.fromCharCode(kind))}`);
      }
    }
  }

  private push(v: unknown): void {
    for (;;) {
      const top = this.stack[this.stack.length - 1];
      if (!top) {
        this.onValue(v);
        return;
      }
      top.arr.push(v);
      if (--top.left > 0) return;
      this.stack.pop();
      v = top.arr;
    }
  }
}

/** The length in b[start..end): -1 (null) or decimal digits, at most 15. */
function parseLength(b: Buffer, start: number, end: number): number {
  if (end - start === 2 && b[start] === 45 && b[start + 1] === 49) return -1;
  let n = 0;
  for (let k = start; k < end; k++) {
    const d = b[k] - 48;
    if (d < 0 || d > 9 || end - start > 15) throw new Error(`protocol error: bad length ${JSON.stringify(b.toString("latin1", start, end))}`);
    n = n * 10 + d;
  }
  if (end === start) throw new Error("protocol error: empty length");
  return n;
}

/**
 * The prefix as text, without a character its cut left incomplete, and
 * never longer in UTF-8 than the prefix: bytes that are not UTF-8 are
 * dropped, as they would come back as three-byte U+FFFD.
 */
function prefixText(b: Buffer): string {
  const t = new StringDecoder("utf8").write(b);
  return Buffer.byteLength(t) <= b.length ? t : t.replace(/\uFFFD/g, "");
}

function encode(args: Args): Buffer {
  const parts: string[] = [`*${args.length}\r\n`];
  for (const a of args) parts.push(`$${Buffer.byteLength(a)}\r\n`, a, "\r\n");
  return Buffer.from(parts.join(""));
}

interface Pending {
  resolve(v: unknown): void;
  reject(err: Error): void;
}

/**
 * One connection, one command at a time, for stream reads (XREADGROUP,
 * XAUTOCLAIM, XREAD): authenticated (redis://user:password@), on database /N, with
 * TLS for rediss:// (as the node-redis connections of conn.ts), and
 * connected again by the next command after it drops. Bulk strings above
 * maxField bytes arrive as TooLargeField.
 */
export class StreamConn {
  private sock?: net.Socket;
  private parser?: RespParser;
  private pending?: Pending;
  private clientId = 0;
  private closed = false;

  private constructor(
    private readonly opts: RedisOptions,
    private readonly log: Logger,
    private readonly name: string,
    private readonly maxField: number,
  ) {}

  static async open(opts: RedisOptions, log: Logger, name: string, maxField: number): Promise<StreamConn> {
    const c = new StreamConn(opts, log, name, maxField);
    await c.connect();
    return c;
  }

  /** This connection's CLIENT ID, for CLIENT UNBLOCK; 0 while unknown. */
  get id(): number {
    return this.clientId;
  }

  /** Sends a command and returns its reply; an error reply rejects with ServerError. */
  async send(args: Args): Promise<unknown> {
    if (this.closed) throw new Error("connection closed");
    if (!this.sock || this.sock.destroyed) await this.connect();
    return this.exchange(args);
  }

  private exchange(args: Args): Promise<unknown> {
    const sock = this.sock;
    if (!sock || sock.destroyed) return Promise.reject(new Error("connection closed"));
    if (this.pending) return Promise.reject(new Error("a command is already waiting for its reply"));
    return new Promise((resolve, reject) => {
      this.pending = { resolve, reject };
      sock.write(encode(args));
    });
  }

  private async connect(): Promise<void> {
    const url = new URL(this.opts.url ?? process.env.REDIS_URL ?? "redis://127.0.0.1:6379");
    const secure = url.protocol === "rediss:";
    if (!secure && url.protocol !== "redis:") throw new Error(`redis URL scheme ${url.protocol}: want redis: or rediss:`);
    const host = url.hostname.replace(/^\[(.*)\]$/, "$1") || "127.0.0.1";
    const port = Number(url.port || 6379);
    this.clientId = 0;
    const parser = new RespParser(this.maxField, (v) => this.settle(parser, v));
    const feed = (b: Buffer) => {
      try {
        parser.feed(b);
      } catch (err) {
        this.fail(sock, err as Error);
      }
    };
    let sock: net.Socket;
    let ready: string;
    if (secure) {
      sock = tls.connect({ host, port, servername: net.isIP(host) ? undefined : host });
      sock.on("data", feed);
      ready = "secureConnect";
    } else {
      // One buffer for every read: bytes the parser drops are never
      // allocated anew.
      const buffer = Buffer.allocUnsafe(CHUNK);
      sock = net.connect({
        host,
        port,
        onread: {
          buffer,
          callback: (n: number, buf: Uint8Array) => {
            feed(Buffer.from(buf.buffer, buf.byteOffset, n));
            return true;
          },
        },
      });
      ready = "connect";
    }
    sock.setNoDelay(true);
    this.sock = sock;
    this.parser = parser;
    sock.on("error", (err) => this.fail(sock, err));
    sock.on("close", () => this.fail(sock, new Error("connection closed")));
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => {
        sock.destroy();
        reject(new Error(`connecting to ${host}:${port}: timed out`));
      }, CONNECT_TIMEOUT_MS);
      sock.once(ready, () => {
        clearTimeout(t);
        resolve();
      });
      sock.once("error", (err) => {
        clearTimeout(t);
        reject(err);
      });
      sock.once("close", () => {
        clearTimeout(t);
        reject(new Error(`connecting to ${host}:${port}: closed`));
      });
    });
    try {
      const user = decodeURIComponent(url.username);
      const password = decodeURIComponent(url.password);
      if (password) await this.exchange(user ? ["AUTH", user, password] : ["AUTH", password]);
      const db = url.pathname.replace(/^\//, "");
      if (db && db !== "0") await this.exchange(["SELECT", db]);
      this.clientId = Number(await this.exchange(["CLIENT", "ID"]));
    } catch (err) {
      sock.destroy();
      throw err;
    }
  }

  private settle(parser: RespParser, v: unknown): void {
    if (parser !== this.parser) return;
    const p = this.pending;
    this.pending = undefined;
    if (!p) {
      this.fail(this.sock!, new Error("protocol error: a reply nobody asked for"));
      return;
    }
    if (v instanceof ServerError) p.reject(v);
    else p.resolve(v);
  }

  private fail(sock: net.Socket, err: Error): void {
    if (sock !== this.sock) return;
    this.log.debug(`redis connection (${this.name})`, { err: err.message });
    this.sock = undefined;
    this.parser = undefined;
    sock.destroy();
    const p = this.pending;
    this.pending = undefined;
    p?.reject(err);
  }

  async close(): Promise<void> {
    this.closed = true;
    const sock = this.sock;
    if (!sock) return;
    if (this.pending) {
      this.fail(sock, new Error("connection closed"));
      return;
    }
    await new Promise<void>((resolve) => {
      sock.once("close", () => resolve());
      sock.end();
      setTimeout(() => sock.destroy(), 1000).unref();
    });
  }

  destroy(): void {
    this.closed = true;
    if (this.sock) this.fail(this.sock, new Error("connection closed"));
  }
}
