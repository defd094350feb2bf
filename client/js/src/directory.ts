// The caller's registry check (PROTOCOL.md §14): a call or send to a
// function no replica serves fails at once, from a cached view of the
// registry, instead of waiting out its deadline or queueing a request no
// replica will read.
import type { Conn, Logger } from "./conn.js";
import { errorMessage } from "./conn.js";
import { Codes, FnmeshError } from "./errors.js";

interface View {
  live: Set<string>;
  known: Set<string>;
  readAt: number;
  failed: boolean; // the read failed: let calls through
}

/** Views older than refreshMs are read again; a miss reads again once the view is older than recheckMs. */
export class Directory {
  private readonly views = new Map<string, View>();
  private readonly reading = new Map<string, Promise<View>>();
  private warnedAt = 0;

  constructor(
    private readonly conn: Conn,
    private readonly log: Logger,
    private readonly refreshMs = 1000,
    private readonly recheckMs = 100,
    private readonly maxServices = 4096,
  ) {}

  /** Resolves when fn of service may be called (or sent, async); rejects with not_found or unavailable. */
  async check(service: string, fn: string, async: boolean): Promise<void> {
    let v = this.views.get(service);
    if (v && Date.now() - v.readAt <= this.refreshMs && passes(v, fn, async)) return;
    if (!v || Date.now() - v.readAt > this.recheckMs) v = await this.read(service);
    if (passes(v, fn, async)) return;
    if (v.known.has(fn)) throw new FnmeshError(Codes.Unavailable, `no live replica of service ${service} serves ${fn} (it did lately)`);
    if (v.live.size === 0 && v.known.size === 0) throw new FnmeshError(Codes.NotFound, `service ${service} is not in the registry: no replica of it ran lately`);
    throw new FnmeshError(Codes.NotFound, `service ${service} has no function ${fn} (it serves ${[...v.live].sort().join(", ")})`);
  }

  private read(service: string): Promise<View> {
    let p = this.reading.get(service);
    if (!p) {
      p = this.fetch(service).finally(() => this.reading.delete(service));
      this.reading.set(service, p);
    }
    return p;
  }

  private async fetch(service: string): Promise<View> {
    const v: View = { live: new Set(), known: new Set(), readAt: Date.now(), failed: false };
    try {
      const [time, beats, recs, known] = (await this.conn.multi([
        ["TIME"],
        ["ZRANGE", `fnmesh:{${service}}:beats`, "0", "-1", "WITHSCORES"],
        ["HGETALL", `fnmesh:{${service}}:replicas`],
        ["HKEYS", `fnmesh:{${service}}:known`],
      ])) as [string[], string[], string[], string[]];
      const now = Number(time[0]) * 1000 + Math.floor(Number(time[1]) / 1000);
      const records = new Map<string, string>();
      for (let i = 0; i + 1 < recs.length; i += 2) records.set(recs[i], recs[i + 1]);
      for (let i = 0; i + 1 < beats.length; i += 2) {
        const rec = records.get(beats[i]);
        if (Number(beats[i + 1]) <= now || !rec) continue;
        try {
          for (const f of (JSON.parse(rec) as { functions?: { name: string }[] }).functions ?? []) v.live.add(f.name);
        } catch {
          // one bad record must not fail the reader
        }
      }
      for (const k of known) v.known.add(k);
    } catch (err) {
      v.failed = true;
      if (Date.now() - this.warnedAt > 60_000) {
        this.warnedAt = Date.now();
        this.log.warn("registry: cannot read; calls are not checked until it can be", { service, err: errorMessage(err) });
      }
    }
    if (this.views.size >= this.maxServices && !this.views.has(service)) {
      for (const [k, old] of this.views) if (old.live.size === 0 && old.known.size === 0) this.views.delete(k);
    }
    this.views.set(service, v);
    return v;
  }
}

function passes(v: View, fn: string, async: boolean): boolean {
  return v.failed || v.live.has(fn) || (async && v.known.has(fn));
}
