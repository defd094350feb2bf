// Registry announcements (PROTOCOL.md, "Registry"): a replica writes its
// record and heartbeats it, with the same keys and script as Go replicas,
// so that fnmesh ls/describe show it and callers' registry checks find it.
import { hostname } from "node:os";
import type { Conn } from "./conn.js";

const beatScript = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id, ttl, keep = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
if ARGV[1] == 'beat' then
  local exp = redis.call('ZSCORE', KEYS[1], id)
  if redis.call('HEXISTS', KEYS[2], id) == 0 or not exp or tonumber(exp) <= now then
    return -1
  end
  redis.call('HSET', KEYS[3], id, ARGV[5])
else
  redis.call('HSET', KEYS[2], id, ARGV[5])
  redis.call('HDEL', KEYS[3], id)
end
redis.call('ZADD', KEYS[1], now + ttl, id)
for i = 6, #ARGV do
  redis.call('HSET', KEYS[4], ARGV[i], now)
end
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, d in ipairs(dead) do
  redis.call('HDEL', KEYS[2], d)
  redis.call('HDEL', KEYS[3], d)
  redis.call('ZREM', KEYS[1], d)
end
local known = redis.call('HGETALL', KEYS[4])
for i = 1, #known, 2 do
  if tonumber(known[i + 1]) < now - keep then
    redis.call('HDEL', KEYS[4], known[i])
  end
end
for i = 1, 4 do
  redis.call('PEXPIRE', KEYS[i], keep)
end
return now
`;

export interface AnnounceOptions {
  heartbeatMs: number; // default 1000
  ttlMs: number; // default 5 heartbeats
  keepMs: number; // how long functions stay known: default 24h
}

/** Keeps one replica in the registry until stop(). */
export class Announcer {
  private timer?: NodeJS.Timeout;
  private readonly keys: string[];
  private readonly fns: string[];
  private readonly record: string;

  constructor(
    private readonly conn: Conn,
    private readonly service: string,
    private readonly id: string,
    functions: { name: string; access: string }[],
    private readonly opts: AnnounceOptions,
  ) {
    this.keys = ["beats", "replicas", "stats", "known"].map((k) => `fnmesh:{${service}}:${k}`);
    this.fns = functions.map((f) => f.name);
    this.record = JSON.stringify({
      service, id, host: hostname(), pid: process.pid, started_at: new Date().toISOString(),
      functions: functions.map((f) => ({ name: f.name, access: f.access, request: {}, response: {} })),
    });
  }

  private async run(mode: "announce" | "beat", body: string): Promise<number> {
    const now = Number(await this.conn.send(["EVAL", beatScript, "4", ...this.keys, mode, this.id, String(this.opts.ttlMs), String(this.opts.keepMs), body, ...this.fns]));
    if (now > 0) {
      await this.conn.send(["ZADD", "fnmesh:services", String(now), this.service]);
      await this.conn.send(["ZREMRANGEBYSCORE", "fnmesh:services", "-inf", String(now - this.opts.keepMs)]);
      await this.conn.send(["PEXPIRE", "fnmesh:services", String(this.opts.keepMs)]);
    }
    return now;
  }

  async start(): Promise<void> {
    await this.run("announce", this.record);
    this.timer = setInterval(() => {
      void (async () => {
        try {
          if ((await this.run("beat", "{}")) < 0) await this.run("announce", this.record);
        } catch {
          // the next heartbeat retries; the record lives ttlMs meanwhile
        }
      })();
    }, this.opts.heartbeatMs);
  }

  /** Stops heartbeating and removes the record at once. */
  async stop(): Promise<void> {
    clearInterval(this.timer);
    try {
      await this.conn.send(["ZREM", this.keys[0], this.id]);
      await this.conn.send(["HDEL", this.keys[1], this.id]);
      await this.conn.send(["HDEL", this.keys[2], this.id]);
    } catch {
      // it expires by itself within ttlMs
    }
  }
}
