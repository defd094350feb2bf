// A circuit breaker per target function, as the Go client has
// (client/breaker.go, sony/gobreaker's two-step breaker): after
// consecutive failures of the target it fails calls at once with
// unavailable, then lets trial calls through.

import { Codes, FnmeshError } from "./errors.js";

/** Options of the breaker in front of each target function. */
export interface BreakerOptions {
  /** Turns breakers off. */
  disabled?: boolean;
  /** Opens the breaker after this many failures in a row. Default 5. */
  consecutiveFailures?: number;
  /** How long an open breaker fails calls before letting trial calls through (half-open), ms. Default 5000. */
  openTimeoutMs?: number;
  /** How many trial calls a half-open breaker lets through; that many successes close it. Default 1. */
  halfOpenCalls?: number;
  /**
   * A deadline_exceeded counts against the target only when the call
   * allowed it at least this long, ms: a caller's own tiny timeout says
   * nothing about the target. Default 200.
   */
  minTimeoutMs?: number;
  /** Told of every change, e.g. for logs. */
  onStateChange?: (fn: string, from: BreakerState, to: BreakerState) => void;
}

export type BreakerState = "closed" | "half-open" | "open";

/** What an outcome tells the breaker. */
export type Outcome = "success" | "failure" | "ignored";

/**
 * The outcome of a call for its target's breaker: the failures of the
 * target or of the way to it (unavailable, deadline_exceeded, internal)
 * count; a caller's bad argument, token or permission, and a function's
 * own application error, show the target healthy; canceled is ignored.
 */
export function outcomeOf(err: unknown): Outcome {
  if (err === undefined) return "success";
  const code = err instanceof FnmeshError ? err.code : Codes.Internal;
  if (code === Codes.Canceled) return "ignored";
  if (code === Codes.Unavailable || code === Codes.DeadlineExceeded || code === Codes.Internal) return "failure";
  return "success";
}

export class Breaker {
  private state: BreakerState = "closed";
  private generation = 0;
  private failures = 0; // in a row
  private successes = 0; // in a row, half-open
  private trials = 0; // half-open calls let through and not settled
  private expiry = 0;
  private readonly max: number;
  private readonly openMs: number;
  private readonly trialsMax: number;

  constructor(private readonly fn: string, private readonly opts: BreakerOptions = {}) {
    this.max = opts.consecutiveFailures ?? 5;
    this.openMs = opts.openTimeoutMs ?? 5000;
    this.trialsMax = opts.halfOpenCalls ?? 1;
  }

  /** The state now ("closed", "half-open" or "open"). */
  get current(): BreakerState {
    this.tick(Date.now());
    return this.state;
  }

  /**
   * Lets a call through, or throws unavailable when open (or half-open
   * with its trial calls taken). Returns the function that settles it.
   */
  allow(): (outcome: Outcome) => void {
    const now = Date.now();
    this.tick(now);
    if (this.state === "open") throw new FnmeshError(Codes.Unavailable, `circuit breaker for ${this.fn}: circuit breaker is open`);
    if (this.state === "half-open") {
      if (this.trials >= this.trialsMax) throw new FnmeshError(Codes.Unavailable, `circuit breaker for ${this.fn}: too many requests`);
      this.trials++;
    }
    const gen = this.generation;
    let settled = false;
    return (outcome) => {
      if (settled) return;
      settled = true;
      this.tick(Date.now());
      if (gen !== this.generation) return; // from before a change of state
      if (this.state === "half-open") this.trials--;
      if (outcome === "success") this.onSuccess();
      else if (outcome === "failure") this.onFailure();
    };
  }

  private onSuccess(): void {
    this.failures = 0;
    if (this.state === "half-open" && ++this.successes >= this.trialsMax) this.set("closed");
  }

  private onFailure(): void {
    this.successes = 0;
    if (this.state === "half-open") return this.set("open");
    if (++this.failures >= this.max) this.set("open");
  }

  private tick(now: number): void {
    if (this.state === "open" && now >= this.expiry) this.set("half-open");
  }

  private set(to: BreakerState): void {
    const from = this.state;
    if (from === to) return;
    this.state = to;
    this.generation++;
    this.failures = 0;
    this.successes = 0;
    this.trials = 0;
    this.expiry = to === "open" ? Date.now() + this.openMs : 0;
    this.opts.onStateChange?.(this.fn, from, to);
  }
}
