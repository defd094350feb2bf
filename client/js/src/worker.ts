// The worker: one replica of a service, a consumer of the service's group
// (PROTOCOL.md §2, §7, §8), with the semantics of a Go replica.

import { randomBytes } from "node:crypto";
import { setMaxListeners } from "node:events";
import { hostname } from "node:os";

import { Conn, defaultLogger, errorMessage, sleep, type Logger, type RedisOptions } from "./conn.js";
import { Announcer } from "./announce.js";
import { StreamConn } from "./streamconn.js";
import { Codes, FnmeshError, validCode, type FieldViolation } from "./errors.js";
import { jwtVerifier, rolesOf, type Claims, type JwtOptions, type Verifier } from "./jwt.js";
import {
  FUNCTION_RE, GROUP, PROTOCOL_VERSION, REPLY_PREFIX, SERVICE_RE,
  argsHash, compareIds, deadLetterKey, functionKey, idempotencyKey, idempotencyScope, limitsKey, nextId, parseAutoClaim, parseStreams, requestKey, type Entry,
} from "./protocol.js";

/** What a function learns about the call it serves. */
export interface Context {
  /** The request id. */
  id: string;
  service: string;
  function: string;
  /** The replica running it. */
  replica: string;
  /** The caller's name (from), "" if none. */
  caller: string;
  /** The deadline, undefined when the caller set none. */
  deadline?: Date;
  /** Aborted when the deadline passes, or when the replica stops and its drain time is over. */
  signal: AbortSignal;
  /** The caller's token, "" if none. */
  token: string;
  /** The verified claims, undefined without a token check. */
  claims?: Claims;
  /** True for a send: nobody waits for the result. */
  async: boolean;
  /** 1 on the first run of this request. */
  attempt: number;
  traceparent: string;
  idempotencyKey: string;
}

/** A function: takes the decoded arguments (undefined when the request has none). */
export type Handler<A = any, R = unknown> = (args: A, ctx: Context) => R | Promise<R>;

/** A function with options. */
export interface FunctionSpec<A = any, R = unknown> {
  handler: Handler<A, R>;
  /** Callers without a token may call it even when the service checks tokens. */
  public?: boolean;
  /** Only callers whose token lists this role (roles, or role) may call it. */
  requireRole?: string;
  /** Only callers for whose claims this does not throw may call it; a plain Error becomes permission_denied. */
  requireClaims?: (claims: Claims, ctx: Context) => void | Promise<void>;
  /** Checks the arguments before the function runs; the violations found become invalid_argument naming them. */
  validate?: (args: A) => FieldViolation[] | undefined | void;
  /** Overrides the service's retry policy for sends. */
  retry?: Partial<RetryPolicy>;
}

export type Functions = Record<string, Handler | FunctionSpec>;

/** How failed sends are run again (§7.4). */
export interface RetryPolicy {
  /** Runs in all, the first included. Default 5. */
  maxAttempts: number;
  /** Pause after the first failure, ms. Default 100. */
  initialBackoffMs: number;
  /** Cap on the pause, ms. Default 10000. */
  maxBackoffMs: number;
  /** Default 2. */
  multiplier: number;
  /** Each pause spread by up to this fraction either way. Default 0.2. */
  jitter: number;
}

/** Options of serve. Choose auth, or allowUnauthenticated: true. */
export interface ServeOptions extends RedisOptions {
  /** Keeps the replica out of the registry (PROTOCOL.md, "Registry"); callers that check it then get not_found. Default false: it announces itself, heartbeating every second. */
  noDiscovery?: boolean;
  /** Verifies every caller's token: JWT options, or a function of your own. */
  auth?: JwtOptions | Verifier;
  /** Runs every function without a token check; must be said explicitly. */
  allowUnauthenticated?: boolean;
  /** The most requests run at once. Default 64. */
  concurrency?: number;
  /** This replica's consumer name. Default host-pid-random. */
  replicaId?: string;
  /** Larger arguments are refused with invalid_argument. Default 1 MiB. */
  maxPayloadBytes?: number;
  retry?: Partial<RetryPolicy>;
  /** How long close() lets running requests finish. Default 30000 ms. */
  drainTimeoutMs?: number;
  /** How often acknowledged entries are trimmed from the request stream. Default 5000 ms. */
  trimIntervalMs?: number;
  /** BLOCK of each read, ms. Default 2000. */
  blockMs?: number;
  /** Cap of reply streams (XADD MAXLEN ~). Default 10000. */
  replyMaxLen?: number;
  /** Cap of the dead-letter stream. Default 100000. */
  deadLetterMaxLen?: number;
  /** How long an entry may look idle before any replica takes it over (its replica died or stalled). Default 30000 ms. */
  claimIdleMs?: number;
  /** How often this replica looks for entries to take over. Default 1000 ms. */
  claimIntervalMs?: number;
  /** Consumers with nothing pending that have not read for this long are removed from the group. Default 1 h. */
  consumerExpiryMs?: number;
  /** A request delivered more often than this (its replicas keep dying on it) is not run: internal, dead-lettered. Default 5. */
  maxDeliveries?: number;
  /** Published for callers (§11): past this many waiting requests they refuse with resource_exhausted. Default 0: no bound. */
  maxBacklog?: number;
  /** How long an idempotency key is remembered (§12). Default 24 h. */
  idempotencyWindowMs?: number;
  logger?: Logger;
}

const defaultRetry: RetryPolicy = { maxAttempts: 5, initialBackoffMs: 100, maxBackoffMs: 10_000, multiplier: 2, jitter: 0.2 };

function backoff(p: RetryPolicy, attempt: number): number {
  const d = Math.min(p.initialBackoffMs * p.multiplier ** (attempt - 1), p.maxBackoffMs);
  return d * (1 + p.jitter * (2 * Math.random() - 1));
}

/** Codes whose send is not run again: another run would fail the same way. */
const final = new Set<string>([Codes.InvalidArgument, Codes.Unauthenticated, Codes.PermissionDenied, Codes.NotFound]);

interface Fn {
  name: string;
  spec: FunctionSpec;
  retry: RetryPolicy;
}

/** A request as decoded from its entry. */
interface Req {
  entry: Entry;
  id: string;
  fn: string;
  rt: string;
  deadline?: number;
  token: string;
  caller: string;
  payload?: string;
  traceparent: string;
  idempotencyKey: string;
}

class Malformed extends Error {}

/**
 * Joins the consumer group of service as one replica and serves fns until
 * close(). Resolves once the replica has joined the group.
 *
 *     const replica = await serve("math", { add: async ({ a, b }) => ({ value: a + b }) }, { allowUnauthenticated: true })
 */
export async function serve(service: string, fns: Functions, opts: ServeOptions): Promise<Replica> {
  const r = new Replica(service, fns, opts);
  await r.start();
  return r;
}

/** One replica of a service. */
export class Replica {
  readonly service: string;
  readonly id: string;
  private readonly key: string;
  private readonly fns = new Map<string, Fn>();
  private readonly verify?: Verifier;
  private readonly log: Logger;
  private readonly concurrency: number;
  private readonly maxPayload: number;
  private readonly drainMs: number;
  private readonly trimMs: number;
  private readonly blockMs: number;
  private readonly replyMaxLen: number;
  private readonly deadMaxLen: number;
  private readonly claimIdleMs: number;
  private announcer?: Announcer;
  private historyRead = false; // run() has read this consumer's own pending entries
  private readonly claimIntervalMs: number;
  private readonly consumerExpiryMs: number;
  private readonly maxDeliveries: number;
  private readonly maxBacklog: number;
  private readonly idemWindowMs: number;
  private cmd?: Conn;
  private reader?: StreamConn;
  /** XAUTOCLAIM's connection: bounded as the reader, and never held up by its blocking read. */
  private claimer?: StreamConn;
  /** Entries taken and not settled: id -> delivery count. */
  private readonly inflight = new Map<string, number>();
  private slotFreed?: () => void;
  private drained?: () => void;
  private stopping = false;
  private readonly hard = new AbortController(); // aborted when the drain time is over
  private loop?: Promise<void>;
  private timers: NodeJS.Timeout[] = [];
  private claiming = false;
  private claimCursor = "0-0";
  private closing?: Promise<void>;
  /** The replicas of this one's versioned functions, one per stream. */
  private readonly versions: Replica[];
  /** Reads a versioned function's stream for its parent replica. */
  private readonly isVersion: boolean;

  /**
   * @param stream the request stream to read; the service's, with one
   * replica per versioned function on its own stream, when undefined.
   */
  constructor(service: string, fns: Functions, private readonly opts: ServeOptions, stream?: string) {
    const problems: string[] = [];
    const versioned: string[] = [];
    if (!SERVICE_RE.test(service)) problems.push(`service name ${JSON.stringify(service)}: want lower case letters, digits, '-' and '_', up to 63`);
    if (opts.auth === undefined && !opts.allowUnauthenticated) problems.push("auth is not set: give a token verifier, or set allowUnauthenticated to run every function open");
    if (opts.auth !== undefined && opts.allowUnauthenticated) problems.push("auth and allowUnauthenticated are both set: choose one");
    const serviceRetry = { ...defaultRetry, ...opts.retry };
    for (const [name, f] of Object.entries(fns)) {
      if (!FUNCTION_RE.test(name)) problems.push(`function name ${JSON.stringify(name)}: want letters, digits, '_', '-', '.', '@'`);
      const spec = typeof f === "function" ? { handler: f } : f;
      if (typeof spec?.handler !== "function") problems.push(`function ${name}: no handler`);
      // A versioned function has a request stream of its own (PROTOCOL.md
      // §1), read by a replica of its own on that stream (versions below).
      if (stream === undefined && name.includes("@")) versioned.push(name);
      else this.fns.set(name, { name, spec, retry: { ...serviceRetry, ...spec.retry } });
    }
    if (this.fns.size === 0 && versioned.length === 0) problems.push(`service ${service} has no functions`);
    this.concurrency = opts.concurrency ?? 64;
    this.maxPayload = opts.maxPayloadBytes ?? 1 << 20;
    this.drainMs = opts.drainTimeoutMs ?? 30_000;
    this.trimMs = opts.trimIntervalMs ?? 5_000;
    this.blockMs = opts.blockMs ?? 2_000;
    this.replyMaxLen = opts.replyMaxLen ?? 10_000;
    this.deadMaxLen = opts.deadLetterMaxLen ?? 100_000;
    this.claimIdleMs = opts.claimIdleMs ?? 30_000;
    this.claimIntervalMs = opts.claimIntervalMs ?? 1_000;
    this.consumerExpiryMs = opts.consumerExpiryMs ?? 3_600_000;
    this.maxDeliveries = opts.maxDeliveries ?? 5;
    this.maxBacklog = opts.maxBacklog ?? 0;
    this.idemWindowMs = opts.idempotencyWindowMs ?? 86_400_000;
    if (!(Number.isInteger(this.maxBacklog) && this.maxBacklog >= 0)) problems.push(`maxBacklog is ${this.maxBacklog}, want 0 (none) or more`);
    for (const [k, v] of Object.entries({
      concurrency: this.concurrency, maxPayloadBytes: this.maxPayload, trimIntervalMs: this.trimMs, blockMs: this.blockMs,
      replyMaxLen: this.replyMaxLen, deadLetterMaxLen: this.deadMaxLen, claimIdleMs: this.claimIdleMs,
      claimIntervalMs: this.claimIntervalMs, consumerExpiryMs: this.consumerExpiryMs, maxDeliveries: this.maxDeliveries,
      idempotencyWindowMs: this.idemWindowMs,
    })) {
      if (!(Number.isInteger(v) && v > 0)) problems.push(`${k} is ${v}, want a whole number above 0`);
    }
    if (!(this.drainMs >= 0)) problems.push(`drainTimeoutMs is ${this.drainMs}, want 0 or more`);
    if (!(serviceRetry.maxAttempts >= 1) || !(serviceRetry.multiplier >= 1) || !(serviceRetry.jitter >= 0 && serviceRetry.jitter <= 1)) problems.push("retry: want maxAttempts >= 1, multiplier >= 1, jitter 0..1");
    if (problems.length) throw new Error("fnmesh: serve: " + problems.join("; "));
    if (typeof opts.auth === "function") this.verify = opts.auth;
    else if (opts.auth) this.verify = jwtVerifier(opts.auth);
    this.service = service;
    this.key = stream ?? requestKey(service);
    this.id = opts.replicaId ?? `${hostname()}-${process.pid}-${randomBytes(3).toString("hex")}`;
    this.isVersion = stream !== undefined;
    const sub = { ...opts, replicaId: this.id };
    this.versions = versioned.map((name) => new Replica(service, { [name]: fns[name] }, sub, functionKey(service, name)));
    this.log = opts.logger ?? defaultLogger;
    setMaxListeners(0, this.hard.signal); // one listener per running request
  }

  /** The names of the functions served. */
  get functions(): string[] {
    return [...this.fns.keys(), ...this.versions.flatMap((v) => v.functions)].sort();
  }

  /** The request streams this replica reads (PROTOCOL.md §1). */
  get streams(): string[] {
    return [this.key, ...this.versions.map((v) => v.key)].sort();
  }

  /** @internal serve() calls it. */
  async start(): Promise<void> {
    for (const v of this.versions) await v.start();
    this.cmd = await Conn.open(this.opts, this.log, "replica");
    this.reader = await StreamConn.open(this.opts, this.log, "replica reader", this.maxPayload);
    this.claimer = await StreamConn.open(this.opts, this.log, "replica claimer", this.maxPayload);
    await this.ensureGroup();
    // §11: the last replica to start says what the bound is.
    if (!this.isVersion) {
      if (this.maxBacklog > 0) await this.cmd.send(["HSET", limitsKey(this.service), "max_backlog", String(this.maxBacklog)]);
      else await this.cmd.send(["HDEL", limitsKey(this.service), "max_backlog"]);
    }
    if (!this.opts.noDiscovery && !this.isVersion) {
      // The replica of the unversioned functions announces them all, its
      // versions' included (functions).
      const access = this.verify ? "token" : "open";
      this.announcer = new Announcer(this.cmd, this.service, this.id, this.functions.map((name) => ({ name, access })), { heartbeatMs: 1000, ttlMs: 5000, keepMs: 24 * 3600 * 1000 });
      await this.announcer.start();
    }
    this.loop = this.run(); // claims what a dead replica left once it has read its own pending entries
    this.timers.push(
      setInterval(() => void this.trim(), this.trimMs),
      setInterval(() => void this.claim(), this.claimIntervalMs),
      setInterval(() => void this.renewLeases(), Math.max(1, Math.floor(this.claimIdleMs / 3))),
      setInterval(() => void this.removeGoneConsumers(), Math.max(1, Math.floor(this.consumerExpiryMs / 4))),
    );
  }

  /** §2: create the group (and stream); BUSYGROUP means it exists. */
  private async ensureGroup(): Promise<void> {
    try {
      await this.cmd!.send(["XGROUP", "CREATE", this.key, GROUP, "0", "MKSTREAM"]);
    } catch (err) {
      if (!errorMessage(err).startsWith("BUSYGROUP")) throw err;
    }
  }

  private async run(): Promise<void> {
    // At start, this consumer's own pending entries (a restart under the
    // same name), read from the PEL by id; then new entries (">").
    let history: string | undefined = "0";
    let pause = 50;
    while (!this.stopping) {
      const free = this.concurrency - this.inflight.size;
      if (free <= 0) {
        await new Promise<void>((resolve) => (this.slotFreed = resolve));
        continue;
      }
      const count = Math.min(free, 128);
      const args = ["XREADGROUP", "GROUP", GROUP, this.id, "COUNT", String(count)];
      if (history === undefined) args.push("BLOCK", String(this.blockMs));
      args.push("STREAMS", this.key, history ?? ">");
      let entries: Entry[];
      try {
        entries = parseStreams(await this.reader!.send(args));
      } catch (err) {
        if (this.stopping) break;
        const msg = errorMessage(err);
        this.log.debug("read failed", { err: msg });
        if (msg.startsWith("NOGROUP")) {
          // The stream was deleted, or Redis restarted empty.
          await this.ensureGroup().catch(() => {});
        }
        await sleep(pause, this.hard.signal);
        pause = Math.min(pause * 2, 2000);
        continue;
      }
      pause = 50;
      const counts = history !== undefined && entries.length ? await this.deliveryCounts(entries.map((e) => e.id)) : undefined;
      if (this.stopping) {
        // Read after close() began (the read was already blocked): not run
        // here, handed back so another replica takes it at once.
        for (const e of entries) if (e.present) await this.handBack(e.id, counts?.get(e.id) ?? 1);
        break;
      }
      this.dispatch(entries, counts);
      if (history !== undefined) {
        history = entries.length < count ? undefined : entries[entries.length - 1].id;
        if (history === undefined) {
          // Reading pending entries by id counts as a delivery in Redis:
          // claiming before this read would count a claimed entry twice.
          this.historyRead = true;
          void this.claim(); // what a dead replica left, at once
        }
      }
    }
  }

  /** Runs entries this replica now holds (read or claimed); counts: delivery counts, 1 when unknown. */
  private dispatch(entries: Entry[], counts?: Map<string, number>): void {
    for (const e of entries) {
      if (!e.present) {
        // A pending entry trimmed away: nothing to run.
        this.ack(e.id);
        continue;
      }
      if (this.inflight.has(e.id)) continue; // already running here
      const count = Math.max(counts?.get(e.id) ?? 1, 1);
      this.inflight.set(e.id, count);
      void this.handle(e, count).finally(() => this.release(e.id));
    }
  }

  private release(id: string): void {
    this.inflight.delete(id);
    this.slotFreed?.();
    this.slotFreed = undefined;
    if (this.inflight.size === 0) this.drained?.();
  }

  /** How often each entry (held by this replica) was delivered: XPENDING's fourth field. */
  private async deliveryCounts(ids: string[]): Promise<Map<string, number>> {
    const out = new Map<string, number>();
    if (!ids.length) return out;
    let lo = ids[0];
    let hi = ids[0];
    for (const id of ids) {
      if (compareIds(id, lo) < 0) lo = id;
      if (compareIds(id, hi) > 0) hi = id;
    }
    try {
      const rows = await this.cmd!.send<unknown[][]>(["XPENDING", this.key, GROUP, lo, hi, String(ids.length + 100), this.id]);
      for (const r of rows ?? []) out.set(String(r[0]), Number(r[3]));
    } catch (err) {
      this.log.debug("delivery counts unknown", { err: errorMessage(err) });
    }
    return out;
  }

  /** §7.5: takes over entries idle longer than claimIdleMs (their replica died or stalled). */
  private async claim(): Promise<void> {
    if (this.stopping || this.claiming || !this.historyRead) return;
    const free = this.concurrency - this.inflight.size;
    if (free <= 0) return;
    this.claiming = true;
    try {
      const reply = await this.claimer!.send(["XAUTOCLAIM", this.key, GROUP, this.id, String(this.claimIdleMs), this.claimCursor, "COUNT", String(free)]);
      const { cursor, entries } = parseAutoClaim(this.key, reply);
      this.claimCursor = cursor;
      if (entries.length && !this.stopping) this.dispatch(entries, await this.deliveryCounts(entries.map((e) => e.id)));
    } catch (err) {
      this.claimCursor = "0-0";
      if (errorMessage(err).startsWith("NOGROUP")) await this.ensureGroup().catch(() => {});
      else this.log.debug("claim failed", { err: errorMessage(err) });
    } finally {
      this.claiming = false;
    }
  }

  /** §7.5: keeps the entries this replica runs from looking idle (XCLAIM to itself, JUSTID), those still its own. */
  private async renewLeases(): Promise<void> {
    const ids = [...this.inflight.keys()];
    if (!ids.length || this.hard.signal.aborted) return;
    try {
      const owned = await this.deliveryCounts(ids);
      const mine = ids.filter((id) => owned.has(id));
      for (let i = 0; i < mine.length; i += 200) {
        await this.cmd!.send(["XCLAIM", this.key, GROUP, this.id, "0", ...mine.slice(i, i + 200), "JUSTID"]);
      }
    } catch (err) {
      this.log.debug("lease renewal failed", { err: errorMessage(err) });
    }
  }

  /** §7.6: hands an entry it will not finish back to the group, claimable by any replica at once. */
  private async handBack(id: string, count: number): Promise<void> {
    try {
      await this.cmd!.send(["XCLAIM", this.key, GROUP, this.id, "0", id, "IDLE", "86400000", "RETRYCOUNT", String(Math.max(count - 1, 0)), "JUSTID"]);
    } catch (err) {
      this.log.warn("hand-back failed; the entry is taken over once idle", { entry: id, err: errorMessage(err) });
    }
  }

  /** §7.6: removes consumers with nothing pending that have not read for consumerExpiryMs. */
  private async removeGoneConsumers(): Promise<void> {
    try {
      const consumers = await this.cmd!.send<unknown[][]>(["XINFO", "CONSUMERS", this.key, GROUP]);
      for (const flat of consumers ?? []) {
        const c: Record<string, unknown> = {};
        for (let i = 0; i + 1 < flat.length; i += 2) c[String(flat[i])] = flat[i + 1];
        if (Number(c.pending) === 0 && Number(c.idle) > this.consumerExpiryMs && c.name !== this.id) {
          await this.cmd!.send(["XGROUP", "DELCONSUMER", this.key, GROUP, String(c.name)]);
        }
      }
    } catch (err) {
      this.log.debug("consumer cleanup failed", { err: errorMessage(err) });
    }
  }

  /** §7.2: one entry, from decoding to ack (or hand-back). Never throws. */
  private async handle(e: Entry, count: number): Promise<void> {
    let req: Req;
    try {
      req = this.decode(e);
    } catch (err) {
      // A prefix of a key name could name another inbox.
      const rt = e.fields.rt?.startsWith(REPLY_PREFIX) && !e.fields.too_large?.startsWith("rt ") ? e.fields.rt : "";
      return this.reject(e, count, e.fields.id ?? "", rt, new FnmeshError(Codes.InvalidArgument, `malformed entry: ${errorMessage(err)}`));
    }
    const size = req.payload === undefined ? 0 : Buffer.byteLength(req.payload);
    if (size > this.maxPayload) {
      return this.reject(e, count, req.id, req.rt, new FnmeshError(Codes.InvalidArgument, `arguments of ${size} bytes exceed the limit of ${this.maxPayload}`));
    }
    let args: unknown;
    if (req.payload) {
      try {
        args = JSON.parse(req.payload);
      } catch {
        return this.reject(e, count, req.id, req.rt, new FnmeshError(Codes.InvalidArgument, `malformed entry: field "p" is not valid JSON`));
      }
    }
    const fn = this.fns.get(req.fn);
    if (!fn) return this.reject(e, count, req.id, req.rt, new FnmeshError(Codes.NotFound, `function ${this.service}.${req.fn} not found`));
    if (count > this.maxDeliveries) {
      // Replicas keep dying or stalling on it: a poison request.
      const err = new FnmeshError(Codes.Internal, `request delivered ${count} times without finishing (limit ${this.maxDeliveries}): replicas stopped while running it`);
      return this.settle(e.id, count, async () => {
        if (req.rt) await this.reply(req.rt, req.id, err);
        await this.deadLetter(e, err, count - 1);
      });
    }
    if (req.deadline !== undefined && Date.now() >= req.deadline) {
      // The caller has given up: never run it. A send is recorded.
      if (req.rt) return this.ack(e.id);
      return this.settle(e.id, count, () => this.deadLetter(e, new FnmeshError(Codes.DeadlineExceeded, "deadline passed before the request was run"), 0));
    }
    if (req.idempotencyKey) return this.runOnce(e, count, fn, req, args);
    const r = await this.runRequest(e, count, fn, req, args, true);
    if (r.state === "stopped") return this.handBack(e.id, count);
    if (!r.acked) this.ack(e.id);
  }

  /**
   * Runs a request to its end: a call is answered; a send is retried and
   * dead-lettered if it keeps failing. "stopped": the replica stopped
   * before the outcome was recorded (the entry is to be handed back).
   */
  private async runRequest(e: Entry, count: number, fn: Fn, req: Req, args: unknown, ackWithReply = false): Promise<{ state: "ok" | "failed" | "stopped"; result?: string; acked?: boolean }> {
    if (req.rt) {
      const outcome = await this.invoke(fn, req, args, count);
      if (outcome instanceof FnmeshError && this.hard.signal.aborted) return { state: "stopped" };
      let p: string | undefined;
      // §7.3: the reply and the ack in one round trip, the reply first.
      const ack = ackWithReply ? e.id : undefined;
      let lost = false;
      const written = await this.write(e.id, async () => {
        try {
          p = await this.reply(req.rt, req.id, outcome, true, ack);
        } catch (err) {
          if (!(err instanceof UnwritableReply)) throw err;
          // §7.3: nothing else ends it: a dead letter with the reason. With
          // ack set the entry was acked in the reply's round trip already.
          lost = true;
          await this.deadLetter(e, new FnmeshError(Codes.Internal, err.message), count);
        }
      });
      if (!written) return { state: "stopped" };
      return outcome instanceof FnmeshError || lost ? { state: "failed", acked: ackWithReply } : { state: "ok", result: p, acked: ackWithReply };
    }
    for (let attempt = count; ; attempt++) {
      const outcome = await this.invoke(fn, req, args, attempt);
      if (!(outcome instanceof FnmeshError)) return { state: "ok" };
      if (this.hard.signal.aborted) return { state: "stopped" };
      let dead: FnmeshError | undefined;
      const pause = backoff(fn.retry, attempt);
      if (final.has(outcome.code) || attempt >= fn.retry.maxAttempts) {
        if (attempt > 1 || !final.has(outcome.code)) this.log.warn("request failed for good", { function: req.fn, id: req.id, attempts: attempt, code: outcome.code, reason: outcome.message });
        dead = outcome;
      } else if (req.deadline !== undefined && Date.now() + pause > req.deadline) {
        dead = new FnmeshError(Codes.DeadlineExceeded, `deadline passed while retrying, last error: ${outcome}`);
      }
      if (dead) {
        const d = dead;
        return (await this.write(e.id, () => this.deadLetter(e, d, attempt))) ? { state: "failed" } : { state: "stopped" };
      }
      await sleep(pause, this.hard.signal);
      if (this.hard.signal.aborted) return { state: "stopped" };
    }
  }

  /**
   * §12: a request with an idempotency key runs once per key (within the
   * window). The caller is checked first: a refused request runs (and is
   * refused) as one without a key, and never sees a stored result.
   */
  private async runOnce(e: Entry, count: number, fn: Fn, req: Req, args: unknown): Promise<void> {
    const checked = this.contextOf(req, this.hard.signal, count);
    try {
      await this.admit(fn, req, checked);
    } catch {
      const r = await this.runRequest(e, count, fn, req, args);
      return r.state === "stopped" ? this.handBack(e.id, count) : this.ack(e.id);
    }
    const subject = typeof checked.claims?.sub === "string" ? checked.claims.sub : "";
    const key = idempotencyKey(this.service, idempotencyScope(req.fn, subject, req.idempotencyKey));
    const sum = argsHash(req.payload);
    let state = -1;
    let prior = "";
    await this.write(e.id, async () => {
      const r = await this.cmd!.send<unknown[]>(["EVAL", IDEM_BEGIN, "1", key, e.id, String(this.idemWindowMs)]);
      state = Number(r[0]);
      prior = String(r[1] ?? "");
    });
    switch (state) {
      case -1:
        return this.handBack(e.id, count); // stopped before the store answered
      case 3: {
        // A request with the key succeeded: a call with its arguments gets its result.
        const [first, ...rest] = prior.split("|").slice(2);
        const result = rest.join("|");
        if (first !== sum) {
          const err = new FnmeshError(Codes.InvalidArgument, `idempotency key ${JSON.stringify(req.idempotencyKey)} was already used with different arguments for ${this.service}.${req.fn}: use a new key for new arguments`);
          return this.settle(e.id, count, async () => {
            if (req.rt) await this.reply(req.rt, req.id, err);
            else await this.deadLetter(e, err, count);
          });
        }
        return this.settle(e.id, count, async () => {
          if (req.rt) await this.reply(req.rt, req.id, RAW(result || "null"));
        });
      }
      case 2:
        return this.settle(e.id, count, async () => {
          if (req.rt) await this.reply(req.rt, req.id, new FnmeshError(Codes.Unavailable, `a request with idempotency key "${req.idempotencyKey}" is running; try again for its result`));
        });
    }
    const r = await this.runRequest(e, count, fn, req, args);
    switch (r.state) {
      case "stopped":
        return this.handBack(e.id, count); // key kept: the next delivery of this entry runs it
      case "ok":
        try {
          await this.cmd!.send(["SET", key, `d|${e.id}|${sum}|${r.result ?? ""}`, "PX", String(this.idemWindowMs)]);
        } catch (err) {
          this.log.error("could not record an idempotency key as done", { key: req.idempotencyKey, err: errorMessage(err) });
        }
        break;
      case "failed":
        // Failed for good: a later request with the key may try again.
        await this.cmd!.send(["EVAL", IDEM_RELEASE, "1", key, e.id]).catch(() => {});
    }
    this.ack(e.id);
  }

  /** Decodes a request entry (§3), in the order a Go replica checks. */
  private decode(e: Entry): Req {
    const f = e.fields;
    const req: Req = {
      entry: e, id: f.id ?? "", fn: f.fn ?? "", rt: f.rt ?? "", token: f.tok ?? "", caller: f.from ?? "",
      payload: f.p, traceparent: f.tp ?? "", idempotencyKey: f.ik ?? "",
    };
    if (req.rt && !req.rt.startsWith(REPLY_PREFIX)) throw new Malformed(`field "rt" is not a reply stream`);
    if (f.too_large) {
      // The reader kept a prefix of a field above maxPayloadBytes.
      const sp = f.too_large.indexOf(" ");
      const [name, size] = sp < 0 ? [f.too_large, ""] : [f.too_large.slice(0, sp), f.too_large.slice(sp + 1)];
      throw new Malformed(`field ${JSON.stringify(name)} of ${size} bytes exceeds the replica's limit`);
    }
    if (f.v !== undefined && f.v !== PROTOCOL_VERSION) throw new Malformed(`protocol version ${JSON.stringify(f.v)}, want "1"`);
    if (f.dl !== undefined && f.dl !== "") {
      if (!/^\d+$/.test(f.dl) || Number(f.dl) <= 0) throw new Malformed(`field "dl" is not unix milliseconds: ${JSON.stringify(f.dl)}`);
      req.deadline = Number(f.dl);
    }
    if (!req.id) throw new Malformed(`missing field "id"`);
    if (!req.fn) throw new Malformed(`missing field "fn"`);
    return req;
  }

  /** Runs fn's chain: token check, claim checks, validation, the function. Returns the result or a FnmeshError. */
  private async invoke(fn: Fn, req: Req, args: unknown, attempt: number): Promise<unknown> {
    const ctrl = new AbortController();
    const onHard = () => ctrl.abort(new FnmeshError(Codes.Unavailable, "replica stopped"));
    this.hard.signal.addEventListener("abort", onHard, { once: true });
    let timer: NodeJS.Timeout | undefined;
    if (req.deadline !== undefined) {
      timer = setTimeout(() => ctrl.abort(new FnmeshError(Codes.DeadlineExceeded, "deadline passed")), Math.max(0, req.deadline - Date.now()));
    }
    const ctx = this.contextOf(req, ctrl.signal, attempt);
    try {
      await this.admit(fn, req, ctx);
      const violations = fn.spec.validate?.(args);
      if (violations && violations.length) {
        const parts = violations.map((v) => `${v.field} (${v.rule}${v.param ? "=" + v.param : ""})`);
        throw new FnmeshError(Codes.InvalidArgument, `arguments of ${this.service}.${req.fn} failed validation: ${parts.join(", ")}`, violations);
      }
      const result = await fn.spec.handler(args, ctx);
      return result === undefined ? null : result;
    } catch (err) {
      return this.asError(err, ctrl.signal, req);
    } finally {
      clearTimeout(timer);
      this.hard.signal.removeEventListener("abort", onHard);
    }
  }

  private contextOf(req: Req, signal: AbortSignal, attempt: number): Context {
    return {
      id: req.id, service: this.service, function: req.fn, replica: this.id, caller: req.caller,
      deadline: req.deadline === undefined ? undefined : new Date(req.deadline), signal,
      token: req.token, async: !req.rt, attempt, traceparent: req.traceparent, idempotencyKey: req.idempotencyKey,
    };
  }

  /** The token check and the function's claim checks: sets ctx.claims, or throws a FnmeshError. */
  private async admit(fn: Fn, req: Req, ctx: Context): Promise<void> {
    if (this.verify && !(fn.spec.public && !req.token)) {
      if (!req.token) throw new FnmeshError(Codes.Unauthenticated, "missing token");
      try {
        ctx.claims = await this.verify(req.token);
      } catch (err) {
        throw err instanceof FnmeshError && err.code === Codes.Unauthenticated ? err : new FnmeshError(Codes.Unauthenticated, errorMessage(err));
      }
    }
    if (fn.spec.requireRole !== undefined || fn.spec.requireClaims) {
      if (!ctx.claims) throw new FnmeshError(Codes.PermissionDenied, `${this.service}.${req.fn} requires a verified token`);
      if (fn.spec.requireRole !== undefined && !rolesOf(ctx.claims).includes(fn.spec.requireRole)) {
        throw new FnmeshError(Codes.PermissionDenied, `role "${fn.spec.requireRole}" required`);
      }
      try {
        await fn.spec.requireClaims?.(ctx.claims, ctx);
      } catch (err) {
        throw err instanceof FnmeshError ? err : new FnmeshError(Codes.PermissionDenied, errorMessage(err));
      }
    }
  }

  /** Gives any thrown value a code for the wire. */
  private asError(err: unknown, signal: AbortSignal, req: Req): FnmeshError {
    if (err instanceof FnmeshError) {
      if (!validCode(err.code)) return new FnmeshError(Codes.Internal, `function returned invalid error code ${JSON.stringify(err.code)}: ${err.message}`);
      return err;
    }
    if (signal.aborted && (err === signal.reason || (err instanceof Error && err.name === "AbortError"))) {
      return signal.reason instanceof FnmeshError ? signal.reason : new FnmeshError(Codes.DeadlineExceeded, "deadline passed");
    }
    if (err instanceof TypeError || err instanceof ReferenceError || err instanceof RangeError || err instanceof SyntaxError) {
      // A bug, as a panic is in Go: its text may hold anything the function had in hand, so it stays in the log.
      this.log.error("function threw", { function: req.fn, id: req.id, err: errorMessage(err), stack: err.stack });
      return new FnmeshError(Codes.Internal, `${this.service}.${req.fn} threw a ${err.name}; its worker logged it under request id ${req.id}`);
    }
    this.log.debug("function failed", { function: req.fn, id: req.id, err: errorMessage(err) });
    return new FnmeshError(Codes.Internal, errorMessage(err));
  }

  /**
   * §4: answers a call on its caller's inbox; returns the result's JSON (p)
   * on success. With ackEntry, acks that entry in the same pipeline
   * (§7.3). A reply that can never be written (§7.3) throws
   * UnwritableReply if `strict`, else is dropped.
   */
  private async reply(rt: string, id: string, outcome: unknown, strict = false, ackEntry?: string): Promise<string | undefined> {
    const f = ["id", id, "by", this.id];
    let p: string | undefined;
    if (outcome instanceof FnmeshError) {
      f.push("code", outcome.code, "msg", outcome.message);
      if (outcome.fields.length) f.push("det", JSON.stringify({ fields: outcome.fields }));
    } else {
      try {
        p = outcome instanceof RawJSON ? outcome.json : JSON.stringify(outcome);
      } catch (err) {
        return this.reply(rt, id, new FnmeshError(Codes.Internal, `result is not JSON-encodable: ${errorMessage(err)}`), strict, ackEntry);
      }
      if (p === undefined) return this.reply(rt, id, new FnmeshError(Codes.Internal, `result is not JSON-encodable: ${typeof outcome}`), strict, ackEntry);
      f.push("p", p);
    }
    // NOMKSTREAM: a caller whose inbox is gone is gone too.
    const xadd = ["XADD", rt, "NOMKSTREAM", "MAXLEN", "~", String(this.replyMaxLen), "*", ...f];
    try {
      // If the reply fails, the XACK still runs: this replica holds the
      // outcome and writes it again (write) until it can, or stops.
      if (ackEntry !== undefined) await this.cmd!.pipeline([xadd, ["XACK", this.key, GROUP, ackEntry]]);
      else await this.cmd!.send(xadd);
    } catch (err) {
      if (!unwritable(err)) throw err;
      if (strict) throw new UnwritableReply(`the reply cannot be written to ${rt}: ${errorMessage(err)}`);
      this.log.warn("reply cannot be written; dropped", { id, err: errorMessage(err) });
    }
    return p;
  }

  /** §8: the original fields, then why. */
  private async deadLetter(e: Entry, err: FnmeshError, attempts: number): Promise<void> {
    const ours: Record<string, string> = {
      reason: err.message, code: err.code, attempts: String(attempts), by: this.id, at: String(Date.now()), entry: e.id,
    };
    const f: string[] = [];
    for (const [k, v] of Object.entries(e.fields)) if (!(k in ours)) f.push(k, v);
    for (const [k, v] of Object.entries(ours)) f.push(k, v);
    await this.cmd!.send(["XADD", deadLetterKey(this.service), "MAXLEN", "~", String(this.deadMaxLen), "*", ...f]);
  }

  /** Rejects a request that cannot run: answer it if it names an inbox, dead-letter it, ack it. */
  private async reject(e: Entry, count: number, id: string, rt: string, err: FnmeshError): Promise<void> {
    this.log.warn("rejected request", { code: err.code, reason: err.message, entry: e.id });
    return this.settle(e.id, count, async () => {
      if (rt && id) await this.reply(rt, id, err);
      await this.deadLetter(e, err, 0);
    });
  }

  /**
   * Writes an outcome. If it cannot be written, tries again after a
   * pause (the entry stays pending, not acked) until it succeeds, or
   * returns false once the replica's drain time is over.
   */
  private async write(entryId: string, w: () => Promise<void>): Promise<boolean> {
    let pause = 100;
    for (;;) {
      try {
        await w();
        return true;
      } catch (err) {
        this.log.error("cannot record an outcome; will try again", { entry: entryId, err: errorMessage(err) });
        if (this.hard.signal.aborted) return false;
        await sleep(pause, this.hard.signal);
        pause = Math.min(pause * 2, 3200);
      }
    }
  }

  /** Writes an outcome, then acks the entry; hands it back if stopped first. */
  private async settle(entryId: string, count: number, w: () => Promise<void>): Promise<void> {
    if (await this.write(entryId, w)) this.ack(entryId);
    else await this.handBack(entryId, count);
  }

  private ack(entryId: string): void {
    this.cmd!.send(["XACK", this.key, GROUP, entryId]).catch((err) => {
      // Unacked, the entry stays pending: taken over once idle.
      this.log.warn("ack failed", { entry: entryId, err: errorMessage(err) });
    });
  }

  /** §7.5: trim what every group has acknowledged. */
  private async trim(): Promise<void> {
    if (this.stopping) return;
    try {
      const groups = (await this.cmd!.send<unknown[]>(["XINFO", "GROUPS", this.key])) ?? [];
      let min: string | undefined;
      for (const g of groups) {
        const info: Record<string, unknown> = {};
        const flat = g as unknown[];
        for (let i = 0; i + 1 < flat.length; i += 2) info[String(flat[i])] = flat[i + 1];
        let keep: string;
        if (Number(info.pending) > 0) {
          const summary = await this.cmd!.send<unknown[]>(["XPENDING", this.key, String(info.name)]);
          keep = String(summary[1]);
        } else {
          keep = nextId(String(info["last-delivered-id"]));
        }
        if (min === undefined || compareIds(keep, min) < 0) min = keep;
      }
      if (min === undefined || min === "0-0" || min === "0-1") return;
      await this.cmd!.send(["XTRIM", this.key, "MINID", "~", min]);
    } catch (err) {
      this.log.debug("trim failed", { err: errorMessage(err) });
    }
  }

  /** Requests running now. */
  get running(): number {
    return this.inflight.size + this.versions.reduce((n, v) => n + v.running, 0);
  }

  /**
   * Stops taking requests, lets running ones finish for up to
   * drainTimeoutMs, then aborts their signals and hands back to the group
   * what did not finish (another replica takes it at once); disconnects.
   */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    const versions = Promise.all(this.versions.map((v) => v.close()));
    this.stopping = true;
    for (const t of this.timers) clearInterval(t);
    await this.cmd!.unblock(this.reader!);
    await this.announcer?.stop();
    this.slotFreed?.();
    await this.loop;
    const drained = () => (this.inflight.size === 0 ? Promise.resolve() : new Promise<void>((resolve) => (this.drained = resolve)));
    const within = async (ms: number, p: Promise<void>) => {
      const timer = new AbortController(); // so the pause holds no timer once p is done
      await Promise.race([p, sleep(ms, timer.signal)]);
      timer.abort();
    };
    await within(this.drainMs, drained());
    this.hard.abort();
    // Aborted requests hand themselves back; give them a moment, then hand
    // back those whose functions ignore their signal.
    await within(1000, drained());
    for (const [id, count] of this.inflight) await this.handBack(id, count);
    await this.reader!.close();
    await this.claimer!.close();
    await this.cmd!.close();
    await versions;
  }
}

/** A result already encoded as JSON (an idempotent request's first result). */
class RawJSON {
  constructor(readonly json: string) {}
}
const RAW = (json: string) => new RawJSON(json);

// §12, as the Go replica runs them: "r|OWNER" while running, "d|OWNER|RESULT" when done.
const IDEM_BEGIN = `
if redis.call('SET', KEYS[1], 'r|' .. ARGV[1], 'NX', 'PX', ARGV[2]) then return {0, ''} end
local v = redis.call('GET', KEYS[1])
if not v then redis.call('SET', KEYS[1], 'r|' .. ARGV[1], 'PX', ARGV[2]) return {0, ''} end
if v == 'r|' .. ARGV[1] then return {1, ''} end
if string.sub(v, 1, 2) == 'd|' then return {3, v} end
return {2, ''}
`;
const IDEM_RELEASE = `
if redis.call('GET', KEYS[1]) == 'r|' .. ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`;

/** A reply that writing again cannot get through. */
class UnwritableReply extends Error {}

/**
 * §7.3: a server's error reply to a reply's XADD that no retry cures
 * (WRONGTYPE, ERR ...), as opposed to a lost connection or a server that
 * is full, loading or failing over.
 */
function unwritable(err: unknown): boolean {
  let p = err instanceof Error ? Object.getPrototypeOf(err) : null;
  while (p && p !== Error.prototype && p.constructor?.name !== "ErrorReply") p = Object.getPrototypeOf(p);
  if (!p || p === Error.prototype) return false;
  return !/^(OOM|BUSY|TRYAGAIN|LOADING|READONLY|MASTERDOWN|CLUSTERDOWN|MOVED|ASK|NOREPLICAS)\b/.test((err as Error).message);
}
