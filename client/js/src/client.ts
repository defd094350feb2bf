// The caller: call and send functions of the mesh (PROTOCOL.md §3, §4, §6).

import { randomBytes } from "node:crypto";
import { hostname } from "node:os";

import { StreamConn } from "./streamconn.js";
import { Conn, aclUser, defaultLogger, errorMessage, sleep, type Logger, type RedisOptions } from "./conn.js";
import { Breaker, outcomeOf, type BreakerOptions, type BreakerState } from "./breaker.js";
import { Directory } from "./directory.js";
import { Codes, FnmeshError, type FieldViolation } from "./errors.js";
import { GROUP, PROTOCOL_VERSION, functionKey, limitsKey, nextId, parseStreams, replyKey, requestKey, splitName, type Details } from "./protocol.js";

/** Options of connect. */
export interface ClientOptions extends RedisOptions {
  /** The caller's name, in replicas' logs (the from field). Default host-pid. */
  name?: string;
  /** Token sent with every call that gives none. */
  token?: string;
  /** Timeout of calls that give none, in milliseconds. Default 10000. */
  timeoutMs?: number;
  /** Larger arguments are refused before sending. Default 1 MiB, as on the Go side. */
  maxPayloadBytes?: number;
  /**
   * A reply with a longer field (a result's JSON, an error's message)
   * fails its call with resource_exhausted; the field's bytes are skipped
   * as they arrive, never held. Default 16 MiB.
   */
  maxReplyBytes?: number;
  /** How long the inbox outlives a caller that died without close(). Default 60000 ms. */
  inboxTtlMs?: number;
  /** How often the inbox's TTL is renewed and its read replies trimmed. Default 2000 ms. */
  inboxRefreshMs?: number;
  /**
   * How often a service's backlog and bound (§11) are read again; calls and
   * sends to a service at its bound fail with resource_exhausted. Default
   * 100 ms; negative: never check.
   */
  admissionIntervalMs?: number;
  /** The circuit breaker in front of each target function (as the Go client's). */
  breaker?: BreakerOptions;
  /**
   * Sends without checking the registry first (PROTOCOL.md §14). By
   * default a call to a function no replica ever served fails at once with
   * not_found, one served lately with no live replica with unavailable (a
   * send to it is queued). Set it for callers that may not read the
   * registry or whose targets do not announce themselves.
   */
  skipRegistryCheck?: boolean;
  logger?: Logger;
}

/** Options of one call. */
export interface CallOptions {
  /** Give up after this long, in milliseconds; the deadline travels with the request. */
  timeoutMs?: number;
  /** Bearer token (a JWT) for this call instead of the client's. */
  token?: string;
  /** Abandon the call (it fails with canceled). */
  signal?: AbortSignal;
  /** W3C traceparent to send with the request. */
  traceparent?: string;
  /** Idempotency key (reserved by the protocol). */
  idempotencyKey?: string;
}

/** Options of one send. */
export interface SendOptions extends Omit<CallOptions, "signal" | "timeoutMs"> {
  /** If no replica has run the request after this long, it is dead-lettered unrun. Default: no deadline. */
  timeoutMs?: number;
}

/** What a call learns besides its result. */
export interface CallInfo {
  /** The request id. */
  id: string;
  /** The replica that answered. */
  replica: string;
}

/** What a caller knows of a service's backlog (§11). */
interface BacklogView {
  waiting: number;
  max: number;
  readAt: number;
  added: number; // requests this client added that the last read did not count
  refreshing?: Promise<void>;
}

interface Waiter {
  resolve(v: { result: unknown; replica: string }): void;
  reject(e: FnmeshError): void;
}

/** Connects a caller: opens its inbox (a reply stream of its own). */
export async function connect(opts: ClientOptions = {}): Promise<Client> {
  const c = new Client(opts);
  await c.open();
  return c;
}

/**
 * A caller of mesh functions. One client owns one inbox; it is safe to
 * make many calls at once on it. Close it when done.
 */
export class Client {
  readonly inbox: string;
  private readonly key: string;
  private readonly name: string;
  private readonly log: Logger;
  private readonly timeoutMs: number;
  private readonly maxPayload: number;
  private readonly maxReply: number;
  private readonly ttlMs: number;
  private readonly refreshMs: number;
  private cmd?: Conn;
  private reader?: StreamConn;
  private lastRead = "0-0";
  private seq = 0;
  private readonly waiting = new Map<string, Waiter>();
  private closed = false;
  private readLoop?: Promise<void>;
  private refresh?: NodeJS.Timeout;
  private readonly stopping = new AbortController();
  private readonly admissionMs: number;
  private readonly backlogs = new Map<string, BacklogView>();
  private readonly breakers = new Map<string, Breaker>();
  private directory?: Directory;

  constructor(private readonly opts: ClientOptions) {
    // §6: logged in as an ACL user, the inbox is USER:RANDOM, so that an
    // ACL can give each caller its own inbox and no other.
    const user = aclUser(opts);
    if (user !== "" && !/^[A-Za-z0-9_.-]{1,64}$/.test(user)) {
      throw new Error(`fnmesh: Redis user name ${JSON.stringify(user)} cannot name inboxes: use letters, digits, '_', '-' or '.' (at most 64)`);
    }
    const random = randomBytes(12).toString("hex");
    this.inbox = user === "" ? random : `${user}:${random}`;
    this.key = replyKey(this.inbox);
    this.name = opts.name ?? `${hostname()}-${process.pid}`;
    this.log = opts.logger ?? defaultLogger;
    this.timeoutMs = opts.timeoutMs ?? 10_000;
    this.maxPayload = opts.maxPayloadBytes ?? 1 << 20;
    this.maxReply = opts.maxReplyBytes ?? 16 << 20;
    this.ttlMs = opts.inboxTtlMs ?? 60_000;
    this.refreshMs = opts.inboxRefreshMs ?? 2_000;
    this.admissionMs = opts.admissionIntervalMs ?? 100;
    for (const [k, v] of Object.entries({ timeoutMs: this.timeoutMs, maxPayloadBytes: this.maxPayload, maxReplyBytes: this.maxReply, inboxTtlMs: this.ttlMs, inboxRefreshMs: this.refreshMs })) {
      if (!(v > 0)) throw new Error(`fnmesh: ClientOptions.${k} is ${v}, want more than 0`);
    }
    if (this.ttlMs < 1000) throw new Error(`fnmesh: ClientOptions.inboxTtlMs is ${this.ttlMs}, want at least 1000`);
  }

  /** The state of the breaker in front of fn ("closed", "half-open" or "open"); closed if it has none yet. */
  breakerState(fn: string): BreakerState {
    return this.breakers.get(fn)?.current ?? "closed";
  }

  /** Lets a call of fn through its breaker (or throws unavailable); returns what settles it. */
  private guard(fn: string, timeoutMs?: number): (err?: unknown) => void {
    const cfg = this.opts.breaker ?? {};
    if (cfg.disabled) return () => {};
    let b = this.breakers.get(fn);
    if (!b) this.breakers.set(fn, (b = new Breaker(fn, cfg)));
    const done = b.allow();
    const minTimeout = cfg.minTimeoutMs ?? 200;
    return (err) => {
      // A caller's own tiny timeout says nothing about the target.
      if (err instanceof FnmeshError && err.code === Codes.DeadlineExceeded && timeoutMs !== undefined && timeoutMs < minTimeout) done("ignored");
      else done(outcomeOf(err));
    };
  }

  /** The inbox's stream key, fnmesh:reply:{INBOX} (INBOX is USER:RANDOM for an ACL user). */
  get replyKey(): string {
    return this.key;
  }

  /** @internal Opens the connections and the inbox; connect() calls it. */
  async open(): Promise<void> {
    try {
      this.cmd = await Conn.open(this.opts, this.log, "caller");
      this.reader = await StreamConn.open(this.opts, this.log, "caller inbox", this.maxReply);
      this.lastRead = await this.createInbox();
    } catch (err) {
      await this.cmd?.close();
      await this.reader?.close();
      throw new FnmeshError(Codes.Unavailable, `cannot open the reply inbox: ${errorMessage(err)}`);
    }
    if (!this.opts.skipRegistryCheck) this.directory = new Directory(this.cmd, this.log);
    this.readLoop = this.read();
    this.refresh = setInterval(() => void this.keepAlive(), Math.min(this.refreshMs, this.ttlMs / 3));
  }

  /** §6: the inbox with a first entry and a TTL, in one transaction. */
  private async createInbox(): Promise<string> {
    const [first] = await this.cmd!.multi([
      ["XADD", this.key, "*", "hello", "inbox"],
      ["PEXPIRE", this.key, String(this.ttlMs)],
    ]);
    return String(first);
  }

  private async read(): Promise<void> {
    let backoff = 50;
    while (!this.closed) {
      let reply: unknown;
      try {
        reply = await this.reader!.send(["XREAD", "COUNT", "128", "BLOCK", "2000", "STREAMS", this.key, this.lastRead]);
      } catch (err) {
        if (this.closed) return;
        this.log.debug("inbox read failed", { err: errorMessage(err) });
        await sleep(backoff, this.stopping.signal);
        backoff = Math.min(backoff * 2, 2000);
        continue;
      }
      backoff = 50;
      for (const e of parseStreams(reply)) {
        this.lastRead = e.id;
        if (!e.present || "hello" in e.fields) continue;
        this.deliver(e.fields, e.cut);
      }
    }
  }

  /**
   * Hands a reply to the call waiting for it; others are dropped (§4).
   * cut: the reader's "NAME SIZE" of a field above maxReplyBytes.
   */
  private deliver(f: Record<string, string>, cut?: string): void {
    // A cut id is a prefix, and names no call.
    const w = f.id === undefined || cut?.startsWith("id ") ? undefined : this.waiting.get(f.id);
    if (!w) return; // late, duplicate, or not ours
    this.waiting.delete(f.id);
    const replica = f.by ?? "";
    if (cut !== undefined) {
      const sp = cut.lastIndexOf(" ");
      const [name, size] = [cut.slice(0, sp), cut.slice(sp + 1)];
      const e = new FnmeshError(Codes.ResourceExhausted, `the reply's field ${JSON.stringify(name)} of ${size} bytes exceeds this client's limit of ${this.maxReply} (maxReplyBytes)`);
      (e as { replica?: string }).replica = replica;
      w.reject(e);
      return;
    }
    if (f.code !== undefined) {
      let fields: FieldViolation[] = [];
      if (f.det) {
        try {
          fields = (JSON.parse(f.det) as Details).fields ?? [];
        } catch {
          // details are optional: keep the code and message
        }
      }
      const e = new FnmeshError(f.code, f.msg ?? "", fields);
      (e as { replica?: string }).replica = replica;
      w.reject(e);
      return;
    }
    if (f.p === undefined || f.p === "") {
      w.resolve({ result: null, replica });
      return;
    }
    try {
      w.resolve({ result: JSON.parse(f.p), replica });
    } catch {
      w.reject(new FnmeshError(Codes.Internal, `the result from ${replica} is not valid JSON`));
    }
  }

  private async keepAlive(): Promise<void> {
    if (this.closed) return;
    try {
      const ok = Number(await this.cmd!.send(["PEXPIRE", this.key, String(this.ttlMs)]));
      if (ok === 0) {
        // The key is gone (Redis restarted empty): calls waiting now time
        // out, new ones need the stream back.
        await this.createInbox();
        return;
      }
      await this.cmd!.send(["XTRIM", this.key, "MINID", "~", nextId(this.lastRead)]);
    } catch (err) {
      this.log.debug("inbox refresh failed", { err: errorMessage(err) });
    }
  }

  private encode(fn: string, args: unknown): { service: string; name: string; payload?: string } {
    const [service, name] = splitName(fn);
    let payload: string | undefined;
    if (args !== undefined) {
      try {
        payload = JSON.stringify(args);
      } catch (err) {
        throw new FnmeshError(Codes.InvalidArgument, `arguments are not JSON-encodable: ${errorMessage(err)}`);
      }
    }
    if (payload !== undefined && Buffer.byteLength(payload) > this.maxPayload) {
      throw new FnmeshError(Codes.InvalidArgument, `arguments of ${Buffer.byteLength(payload)} bytes exceed the limit of ${this.maxPayload}`);
    }
    return { service, name, payload };
  }

  /** §11: refuses with resource_exhausted while service's backlog has reached its bound. */
  private async admit(service: string): Promise<void> {
    if (this.admissionMs < 0) return;
    let v = this.backlogs.get(service);
    if (!v) {
      v = { waiting: 0, max: 0, readAt: 0, added: 0 };
      this.backlogs.set(service, v);
      v.refreshing = this.readBacklog(service, v);
    }
    if (v.readAt === 0) {
      await v.refreshing; // the first call to a service reads before deciding
    } else if (Date.now() - v.readAt > this.admissionMs && !v.refreshing) {
      v.refreshing = this.readBacklog(service, v);
    }
    if (v.max > 0 && v.waiting + v.added >= v.max) {
      throw new FnmeshError(Codes.ResourceExhausted, `service ${service} has ${v.waiting + v.added} requests waiting, its bound is ${v.max}`);
    }
    v.added++;
  }

  private async readBacklog(service: string, v: BacklogView): Promise<void> {
    const key = requestKey(service);
    try {
      // Read behind the requests already admitted: each writes its XADD a
      // few microtasks after its admission, on this same connection, so
      // they are all written before the next macrotask and the lag read
      // counts them. What is admitted after base is counted on top.
      await new Promise<void>((resolve) => setImmediate(resolve));
      const base = v.added;
      const [max, len, groups] = await Promise.all([
        this.cmd!.send(["HGET", limitsKey(service), "max_backlog"]),
        this.cmd!.send(["XLEN", key]),
        this.cmd!.send<unknown[][]>(["XINFO", "GROUPS", key]).catch(() => []),
      ]);
      const xlen = Number(len);
      let waiting = xlen;
      for (const flat of groups) {
        const g: Record<string, unknown> = {};
        for (let i = 0; i + 1 < flat.length; i += 2) g[String(flat[i])] = flat[i + 1];
        if (g.name !== GROUP) continue;
        const pending = Number(g.pending ?? 0);
        const lag = g.lag === null || g.lag === undefined ? undefined : Number(g.lag);
        const read = Number(g["entries-read"] ?? 0);
        waiting = lag !== undefined && lag >= 0 && (lag > 0 || read > 0 || xlen === 0) ? lag : Math.max(xlen - pending, 0);
      }
      v.max = max === null || max === undefined ? 0 : Number(max);
      v.waiting = waiting;
      v.added = Math.max(v.added - base, 0);
    } catch (err) {
      // Keep the last view; the call itself reports an outage.
      this.log.debug("backlog unknown", { service, err: errorMessage(err) });
    } finally {
      v.readAt = Date.now();
      v.refreshing = undefined;
    }
  }

  private request(id: string, name: string, o: { rt?: string; dl?: number; token?: string; traceparent?: string; idempotencyKey?: string }, payload?: string): string[] {
    const f = ["v", PROTOCOL_VERSION, "id", id, "fn", name];
    if (o.rt) f.push("rt", o.rt);
    if (o.dl !== undefined) f.push("dl", String(o.dl));
    f.push("from", this.name);
    if (o.idempotencyKey) f.push("ik", o.idempotencyKey);
    if (o.traceparent) f.push("tp", o.traceparent);
    if (o.token) f.push("tok", o.token);
    if (payload !== undefined) f.push("p", payload);
    return f;
  }

  /**
   * Calls fn ("service.function") with args and resolves with its result.
   * Rejects with a FnmeshError: the function's own, or a mesh code
   * (deadline_exceeded when no result came before the deadline).
   */
  async call<R = unknown>(fn: string, args?: unknown, opts: CallOptions = {}): Promise<R> {
    return (await this.callWithInfo<R>(fn, args, opts)).result;
  }

  /** call, also telling the request id and the replica that answered. */
  async callWithInfo<R = unknown>(fn: string, args?: unknown, opts: CallOptions = {}): Promise<{ result: R } & CallInfo> {
    if (this.closed) throw new FnmeshError(Codes.Unavailable, "client closed");
    const { service, name, payload } = this.encode(fn, args);
    const timeoutMs = opts.timeoutMs ?? this.timeoutMs;
    if (!(timeoutMs > 0)) throw new FnmeshError(Codes.InvalidArgument, `timeoutMs is ${timeoutMs}, want more than 0`);
    await this.directory?.check(service, name, false);
    await this.admit(service);
    if (this.closed) throw new FnmeshError(Codes.Unavailable, "client closed");
    if (opts.signal?.aborted) throw new FnmeshError(Codes.Canceled, `call of ${fn} canceled`);
    const id = `${this.inbox}-${(++this.seq).toString(36)}`;
    const deadline = Date.now() + timeoutMs;
    const fields = this.request(id, name, { rt: this.key, dl: deadline, token: opts.token ?? this.opts.token, traceparent: opts.traceparent, idempotencyKey: opts.idempotencyKey }, payload);
    const settle = this.guard(fn, timeoutMs);

    const outcome = new Promise<{ result: unknown; replica: string }>((resolve, reject) => {
      const cleanup = () => {
        clearTimeout(timer);
        opts.signal?.removeEventListener("abort", onAbort);
        this.waiting.delete(id);
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new FnmeshError(Codes.DeadlineExceeded, `no result from ${fn} within its deadline`));
      }, timeoutMs);
      const onAbort = () => {
        cleanup();
        reject(new FnmeshError(Codes.Canceled, `call of ${fn} canceled`));
      };
      opts.signal?.addEventListener("abort", onAbort, { once: true });
      this.waiting.set(id, {
        resolve: (v) => {
          cleanup();
          resolve(v);
        },
        reject: (e) => {
          cleanup();
          reject(e);
        },
      });
    });
    outcome.catch(() => {}); // settled before it is awaited when the XADD fails or close() runs
    try {
      await this.addRequest(service, name, fields);
    } catch (err) {
      const w = this.waiting.get(id);
      w?.reject(err instanceof FnmeshError ? err : new FnmeshError(Codes.Unavailable, `cannot queue request: ${errorMessage(err)}`));
    }
    let out: { result: unknown; replica: string };
    try {
      out = await outcome;
    } catch (err) {
      settle(err);
      throw err;
    }
    settle();
    return { result: out.result as R, id, replica: out.replica };
  }

  /**
   * Queues a run of fn with args and resolves with the request id once
   * the request is stored in Redis. The function runs as a call would, its
   * result dropped; failures are retried, then dead-lettered by the service.
   */
  async send(fn: string, args?: unknown, opts: SendOptions = {}): Promise<string> {
    if (this.closed) throw new FnmeshError(Codes.Unavailable, "client closed");
    const { service, name, payload } = this.encode(fn, args);
    await this.directory?.check(service, name, true);
    await this.admit(service);
    if (this.closed) throw new FnmeshError(Codes.Unavailable, "client closed");
    const id = `${this.inbox}-${(++this.seq).toString(36)}`;
    const dl = opts.timeoutMs !== undefined ? Date.now() + opts.timeoutMs : undefined;
    const fields = this.request(id, name, { dl, token: opts.token ?? this.opts.token, traceparent: opts.traceparent, idempotencyKey: opts.idempotencyKey }, payload);
    const settle = this.guard(fn);
    try {
      await this.addRequest(service, name, fields);
    } catch (err) {
      const e = err instanceof FnmeshError ? err : new FnmeshError(Codes.Unavailable, `cannot queue request: ${errorMessage(err)}`);
      settle(e);
      throw e;
    }
    settle();
    return id;
  }

  /**
   * §1: adds a request with XADD NOMKSTREAM: only a replica makes a
   * service's stream, so a nil reply means no replica ever served it.
   */
  private async addRequest(service: string, name: string, fields: string[]): Promise<void> {
    const id = await this.cmd!.send(["XADD", functionKey(service, name), "NOMKSTREAM", "*", ...fields]);
    if (id === null || id === undefined) {
      throw new FnmeshError(Codes.NotFound, `service ${service} not found: no replica has ever served it`);
    }
  }

  /** Fails the calls still waiting with unavailable and removes the inbox. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.stopping.abort();
    clearInterval(this.refresh);
    for (const w of [...this.waiting.values()]) w.reject(new FnmeshError(Codes.Unavailable, "client closed"));
    this.waiting.clear();
    // End the blocking read now rather than when BLOCK runs out.
    await this.cmd!.unblock(this.reader!);
    try {
      await this.cmd!.send(["DEL", this.key]);
    } catch (err) {
      this.log.debug("inbox not removed; its TTL will", { err: errorMessage(err) });
    }
    await this.readLoop;
    await this.reader!.close();
    await this.cmd!.close();
  }
}
