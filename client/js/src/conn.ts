// Redis connections for commands. Stream reads (blocking ones, and
// XAUTOCLAIM's) go on connections of their own (streamconn.ts).

import { createClient } from "redis";

/** Connection settings shared by callers and replicas. */
export interface RedisOptions {
  /** redis://[user:password@]host:port[/db], or rediss:// for TLS. Default $REDIS_URL, else redis://127.0.0.1:6379. */
  url?: string;
}

/** Where logs go. Default: warnings and errors on stderr. */
export interface Logger {
  debug(msg: string, attrs?: Record<string, unknown>): void;
  info(msg: string, attrs?: Record<string, unknown>): void;
  warn(msg: string, attrs?: Record<string, unknown>): void;
  error(msg: string, attrs?: Record<string, unknown>): void;
}

/** The ACL user a connection logs in as ("" for the default user). */
export function aclUser(opts: RedisOptions): string {
  const url = opts.url ?? process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
  try {
    const user = decodeURIComponent(new URL(url).username);
    return user === "default" ? "" : user;
  } catch {
    return "";
  }
}

export const defaultLogger: Logger = {
  debug() {},
  info() {},
  warn(msg, attrs) {
    console.error(`fnmesh: ${msg}`, attrs ?? "");
  },
  error(msg, attrs) {
    console.error(`fnmesh: ${msg}`, attrs ?? "");
  },
};

export type Args = ReadonlyArray<string>;

/** A connection that sends raw commands (RESP2 replies: arrays and strings). */
// The part of node-redis's client used here, typed loosely: replies are
// read as RESP2 arrays and strings.
interface RedisClient {
  on(event: string, listener: (...args: any[]) => void): unknown;
  connect(): Promise<unknown>;
  sendCommand(args: string[]): Promise<unknown>;
  multi(): { addCommand(args: string[]): any; exec(): Promise<unknown>; execAsPipeline(): Promise<unknown> };
  readonly isReady: boolean;
  readonly isOpen: boolean;
  close(): Promise<void>;
  destroy(): void;
}

export class Conn {
  private clientId = 0;

  private constructor(private readonly client: RedisClient, private readonly log: Logger, name: string) {
    // Without a listener, a connection error would crash the process.
    client.on("error", (err: Error) => log.debug(`redis connection (${name})`, { err: err.message }));
    // Every (re)connection has a new CLIENT ID; learn it before anything
    // else is sent, as a blocking read would hold the question up.
    client.on("ready", () => {
      this.clientId = 0;
      client.sendCommand(["CLIENT", "ID"]).then(
        (id) => (this.clientId = Number(id)),
        () => {},
      );
    });
  }

  static async open(opts: RedisOptions, log: Logger, name: string): Promise<Conn> {
    const url = opts.url ?? process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
    const client = createClient({
      url,
      RESP: 2,
      // Fail commands at once while disconnected: a call then fails with
      // unavailable instead of waiting in a queue past its deadline.
      disableOfflineQueue: true,
      socket: { reconnectStrategy: (retries: number) => Math.min(50 * 2 ** retries, 2000) },
    }) as unknown as RedisClient;
    const c = new Conn(client, log, name);
    await client.connect();
    await c.learnId();
    return c;
  }

  private async learnId(): Promise<void> {
    this.clientId = Number(await this.send(["CLIENT", "ID"]));
  }

  send<T = unknown>(args: Args): Promise<T> {
    return this.client.sendCommand(args as string[]) as Promise<T>;
  }

  /** Runs commands in MULTI/EXEC and returns their replies. */
  async multi(cmds: Args[]): Promise<unknown[]> {
    let m = this.client.multi();
    for (const c of cmds) m = m.addCommand(c as string[]);
    return (await m.exec()) as unknown[];
  }

  /**
   * Sends commands in one write, without MULTI, and returns their replies.
   * Throws if any command fails (the others have run).
   */
  async pipeline(cmds: Args[]): Promise<unknown[]> {
    let m = this.client.multi();
    for (const c of cmds) m = m.addCommand(c as string[]);
    return (await m.execAsPipeline()) as unknown[];
  }

  /** This connection's CLIENT ID, for CLIENT UNBLOCK; 0 while unknown. */
  get id(): number {
    return this.clientId;
  }

  /**
   * Ends a blocking read in progress on reader (it returns as if BLOCK ran
   * out), sent on this connection. Without a known id, closes reader.
   */
  async unblock(reader: { readonly id: number; destroy(): void }): Promise<void> {
    const id = reader.id;
    if (!id) {
      reader.destroy();
      return;
    }
    try {
      await this.send(["CLIENT", "UNBLOCK", String(id)]);
    } catch {
      reader.destroy();
    }
  }

  get ready(): boolean {
    return this.client.isReady;
  }

  async close(): Promise<void> {
    if (!this.client.isOpen) return;
    try {
      await this.client.close();
    } catch {
      this.client.destroy();
    }
  }

  destroy(): void {
    if (this.client.isOpen) this.client.destroy();
  }
}

export const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
