// The worker: one replica of a service, a consumer of the service's group
// (PROTOCOL.md §2, §7, §8), with the semantics of a Go replica.

import { randomBytes } from "node:crypto";
import { setMaxListeners } from "node:events";
import { hostname } from "node:os";

import { Conn, defaultLogger, errorMessage, sleep, type Logger, type RedisOptions } from "./conn.js";
import { Codes, FnmeshError, validCode, type FieldViolation } from "./errors.js";
import { jwtVerifier, rolesOf, type Claims, type JwtOptions, type Verifier } from "./jwt.js";
import {
  FUNCTION_RE, GROUP, PROTOCOL_VERSION, REPLY_PREFIX, SERVICE_RE,
  compareIds, deadLetterKey, nextId, parseStreams, requestKey, type Entry,
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
  private cmd?: Conn;
  private reader?: Conn;
  private inflight = 0;
  private slotFreed?: () => void;
  private drained?: () => void;
  private stopping = false;
  private readonly hard = new AbortController(); // aborted when the drain time is over
  private loop?: Promise<void>;
  private trimTimer?: NodeJS.Timeout;
  private closing?: Promise<void>;

  constructor(service: string, fns: Functions, private readonly opts: ServeOptions) {
    const problems: string[] = [];
    if (!SERVICE_RE.test(service)) problems.push(`service name ${JSON.stringify(service)}: want lower case letters, digits, '-' and '_', up to 63`);
    if (opts.auth === undefined && !opts.allowUnauthenticated) problems.push("auth is not set: give a token verifier, or set allowUnauthenticated to run every function open");
    if (opts.auth !== undefined && opts.allowUnauthenticated) problems.push("auth and allowUnauthenticated are both set: choose one");
    const serviceRetry = { ...defaultRetry, ...opts.retry };
    for (const [name, f] of Object.entries(fns)) {
      if (!FUNCTION_RE.test(name)) problems.push(`function name ${JSON.stringify(name)}: want letters, digits, '_', '-', '.', '@'`);
      const spec = typeof f === "function" ? { handler: f } : f;
      if (typeof spec?.handler !== "function") problems.push(`function ${name}: no handler`);
      this.fns.set(name, { name, spec, retry: { ...serviceRetry, ...spec.retry } });
    }
    if (this.fns.size === 0) problems.push(`service ${service} has no functions`);
    this.concurrency = opts.concurrency ?? 64;
    this.maxPayload = opts.maxPayloadBytes ?? 1 << 20;
    this.drainMs = opts.drainTimeoutMs ?? 30_000;
    this.trimMs = opts.trimIntervalMs ?? 5_000;
    this.blockMs = opts.blockMs ?? 2_000;
    this.replyMaxLen = opts.replyMaxLen ?? 10_000;
    this.deadMaxLen = opts.deadLetterMaxLen ?? 100_000;
    for (const [k, v] of Object.entries({ concurrency: this.concurrency, maxPayloadBytes: this.maxPayload, trimIntervalMs: this.trimMs, blockMs: this.blockMs, replyMaxLen: this.replyMaxLen, deadLetterMaxLen: this.deadMaxLen })) {
      if (!(Number.isInteger(v) && v > 0)) problems.push(`${k} is ${v}, want a whole number above 0`);
    }
    if (!(this.drainMs >= 0)) problems.push(`drainTimeoutMs is ${this.drainMs}, want 0 or more`);
    if (!(serviceRetry.maxAttempts >= 1) || !(serviceRetry.multiplier >= 1) || !(serviceRetry.jitter >= 0 && serviceRetry.jitter <= 1)) problems.push("retry: want maxAttempts >= 1, multiplier >= 1, jitter 0..1");
    if (problems.length) throw new Error("fnmesh: serve: " + problems.join("; "));
    if (typeof opts.auth === "function") this.verify = opts.auth;
    else if (opts.auth) this.verify = jwtVerifier(opts.auth);
    this.service = service;
    this.key = requestKey(service);
    this.id = opts.replicaId ?? `${hostname()}-${process.pid}-${randomBytes(3).toString("hex")}`;
    this.log = opts.logger ?? defaultLogger;
    setMaxListeners(0, this.hard.signal); // one listener per running request
  }

  /** The names of the functions served. */
  get functions(): string[] {
    return [...this.fns.keys()].sort();
  }

  /** @internal serve() calls it. */
  async start(): Promise<void> {
    this.cmd = await Conn.open(this.opts, this.log, "replica");
    this.reader = await this.cmd.duplicate("replica reader");
    await this.ensureGroup();
    this.loop = this.run();
    this.trimTimer = setInterval(() => void this.trim(), this.trimMs);
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
      const free = this.concurrency - this.inflight;
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
      for (const e of entries) {
        if (!e.present) {
          // A pending entry trimmed away: nothing to run.
          this.ack(e.id);
          continue;
        }
        this.inflight++;
        void this.handle(e, history === undefined ? 1 : 2).finally(() => this.release());
      }
      if (history !== undefined) history = entries.length < count ? undefined : entries[entries.length - 1].id;
    }
  }

  private release(): void {
    this.inflight--;
    this.slotFreed?.();
    this.slotFreed = undefined;
    if (this.inflight === 0) this.drained?.();
  }

  /** §7.2: one entry, from decoding to ack. Never throws. */
  private async handle(e: Entry, delivery: number): Promise<void> {
    let req: Req;
    try {
      req = this.decode(e);
    } catch (err) {
      const rt = e.fields.rt?.startsWith(REPLY_PREFIX) ? e.fields.rt : "";
      return this.reject(e, e.fields.id ?? "", rt, new FnmeshError(Codes.InvalidArgument, `malformed entry: ${errorMessage(err)}`));
    }
    const size = req.payload === undefined ? 0 : Buffer.byteLength(req.payload);
    if (size > this.maxPayload) {
      return this.reject(e, req.id, req.rt, new FnmeshError(Codes.InvalidArgument, `arguments of ${size} bytes exceed the limit of ${this.maxPayload}`));
    }
    let args: unknown;
    if (req.payload) {
      try {
        args = JSON.parse(req.payload);
      } catch {
        return this.reject(e, req.id, req.rt, new FnmeshError(Codes.InvalidArgument, `malformed entry: field "p" is not valid JSON`));
      }
    }
    const fn = this.fns.get(req.fn);
    if (!fn) return this.reject(e, req.id, req.rt, new FnmeshError(Codes.NotFound, `function ${this.service}.${req.fn} not found`));
    if (req.deadline !== undefined && Date.now() >= req.deadline) {
      // The caller has given up: never run it. A send is recorded.
      if (req.rt) return this.settle(e.id, () => Promise.resolve());
      return this.settle(e.id, () => this.deadLetter(e, new FnmeshError(Codes.DeadlineExceeded, "deadline passed before the request was run"), 0));
    }
    if (req.rt) {
      const outcome = await this.invoke(fn, req, args, delivery);
      return this.settle(e.id, () => this.reply(req.rt, req.id, outcome));
    }
    // A send: retried with backoff, then dead-lettered.
    for (let attempt = delivery; ; attempt++) {
      const outcome = await this.invoke(fn, req, args, attempt);
      if (!(outcome instanceof FnmeshError)) return this.settle(e.id, () => Promise.resolve());
      if (final.has(outcome.code) || attempt >= fn.retry.maxAttempts) {
        if (attempt > 1 || !final.has(outcome.code)) this.log.warn("request failed for good", { function: req.fn, id: req.id, attempts: attempt, code: outcome.code, reason: outcome.message });
        return this.settle(e.id, () => this.deadLetter(e, outcome, attempt));
      }
      const pause = backoff(fn.retry, attempt);
      if (req.deadline !== undefined && Date.now() + pause > req.deadline) {
        const err = new FnmeshError(Codes.DeadlineExceeded, `deadline passed while retrying, last error: ${outcome}`);
        return this.settle(e.id, () => this.deadLetter(e, err, attempt));
      }
      await sleep(pause, this.hard.signal);
      if (this.hard.signal.aborted) return; // stopped: the entry stays pending, delivered again later
    }
  }

  /** Decodes a request entry (§3), in the order a Go replica checks. */
  private decode(e: Entry): Req {
    const f = e.fields;
    const req: Req = {
      entry: e, id: f.id ?? "", fn: f.fn ?? "", rt: f.rt ?? "", token: f.tok ?? "", caller: f.from ?? "",
      payload: f.p, traceparent: f.tp ?? "", idempotencyKey: f.ik ?? "",
    };
    if (req.rt && !req.rt.startsWith(REPLY_PREFIX)) throw new Malformed(`field "rt" is not a reply stream`);
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
    const ctx: Context = {
      id: req.id, service: this.service, function: req.fn, replica: this.id, caller: req.caller,
      deadline: req.deadline === undefined ? undefined : new Date(req.deadline), signal: ctrl.signal,
      token: req.token, async: !req.rt, attempt, traceparent: req.traceparent, idempotencyKey: req.idempotencyKey,
    };
    try {
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

  /** Gives any thrown value a code for the wire. */
  private asError(err: unknown, signal: AbortSignal, req: Req): FnmeshError {
    if (err instanceof FnmeshError) {
      if (!validCode(err.code)) return new FnmeshError(Codes.Internal, `function returned invalid error code ${JSON.stringify(err.code)}: ${err.message}`);
      return err;
    }
    if (signal.aborted && (err === signal.reason || (err instanceof Error && err.name === "AbortError"))) {
      return signal.reason instanceof FnmeshError ? signal.reason : new FnmeshError(Codes.DeadlineExceeded, "deadline passed");
    }
    this.log.debug("function failed", { function: req.fn, id: req.id, err: errorMessage(err) });
    return new FnmeshError(Codes.Internal, errorMessage(err));
  }

  /** §4: answers a call on its caller's inbox. */
  private async reply(rt: string, id: string, outcome: unknown): Promise<void> {
    const f = ["id", id, "by", this.id];
    if (outcome instanceof FnmeshError) {
      f.push("code", outcome.code, "msg", outcome.message);
      if (outcome.fields.length) f.push("det", JSON.stringify({ fields: outcome.fields }));
    } else {
      let p: string | undefined;
      try {
        p = JSON.stringify(outcome);
      } catch (err) {
        return this.reply(rt, id, new FnmeshError(Codes.Internal, `result is not JSON-encodable: ${errorMessage(err)}`));
      }
      if (p === undefined) return this.reply(rt, id, new FnmeshError(Codes.Internal, `result is not JSON-encodable: ${typeof outcome}`));
      f.push("p", p);
    }
    // NOMKSTREAM: a caller whose inbox is gone is gone too.
    await this.cmd!.send(["XADD", rt, "NOMKSTREAM", "MAXLEN", "~", String(this.replyMaxLen), "*", ...f]);
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
  private async reject(e: Entry, id: string, rt: string, err: FnmeshError): Promise<void> {
    this.log.warn("rejected request", { code: err.code, reason: err.message, entry: e.id });
    return this.settle(e.id, async () => {
      if (rt && id) await this.reply(rt, id, err);
      await this.deadLetter(e, err, 0);
    });
  }

  /**
   * Records an outcome, then acks the entry. If the outcome cannot be
   * written, the entry is not acked: it stays pending and the write is
   * tried again after a pause, until it succeeds or the replica is stopped.
   */
  private async settle(entryId: string, write: () => Promise<void>): Promise<void> {
    let pause = 100;
    for (;;) {
      try {
        await write();
        break;
      } catch (err) {
        this.log.error("cannot record an outcome; will try again", { entry: entryId, err: errorMessage(err) });
        if (this.hard.signal.aborted) return;
        await sleep(pause, this.hard.signal);
        pause = Math.min(pause * 2, 3200);
      }
    }
    this.ack(entryId);
  }

  private ack(entryId: string): void {
    this.cmd!.send(["XACK", this.key, GROUP, entryId]).catch((err) => {
      // Unacked, the entry stays pending: delivered again after a restart
      // under this name, or claimed by another replica.
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
    return this.inflight;
  }

  /**
   * Stops taking requests, lets running ones finish for up to
   * drainTimeoutMs (then aborts their signals), and disconnects. Requests
   * not finished stay pending.
   */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    this.stopping = true;
    clearInterval(this.trimTimer);
    await this.cmd!.unblock(this.reader!);
    this.slotFreed?.();
    await this.loop;
    if (this.inflight > 0) {
      const drained = new Promise<void>((resolve) => (this.drained = resolve));
      const timer = setTimeout(() => this.hard.abort(), this.drainMs);
      await drained;
      clearTimeout(timer);
    }
    this.hard.abort();
    await this.reader!.close();
    await this.cmd!.close();
  }
}
