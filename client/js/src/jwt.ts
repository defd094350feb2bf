// Token checks for replicas (PROTOCOL.md §9): JWTs signed with HS256/384/512
// or RS256/384/512, as the Go security package verifies them.

import { createHmac, createPublicKey, createVerify, timingSafeEqual, type KeyObject } from "node:crypto";

import { Codes, FnmeshError } from "./errors.js";

/** A verified token's claims. */
export type Claims = Record<string, unknown>;

/** Checks a token and returns its claims, or throws FnmeshError unauthenticated. */
export type Verifier = (token: string) => Claims | Promise<Claims>;

/** Options of jwtVerifier: give hmacSecret, publicKeys, or both. */
export interface JwtOptions {
  /** Verifies HS256/384/512. At least 32 bytes. */
  hmacSecret?: string | Buffer;
  /** Verify RS256/384/512, chosen by the token's kid ("" or the only key without one). PEM text or KeyObject. */
  publicKeys?: Record<string, string | KeyObject>;
  /** Algorithms allowed. Default: those the keys given can check. "none" is never accepted. */
  algorithms?: string[];
  /** When set, must equal the iss claim. */
  issuer?: string;
  /** When set, must be among the aud claim. */
  audience?: string;
  /** Clock skew tolerated on exp, nbf and iat, in seconds. Default 30. */
  leewaySec?: number;
  /** Accept tokens without exp. Default false. */
  allowNoExpiry?: boolean;
}

const HMAC = ["HS256", "HS384", "HS512"];
const RSA = ["RS256", "RS384", "RS512"];
const hashOf = (alg: string) => "sha" + alg.slice(2);

const unauthenticated = (msg: string) => new FnmeshError(Codes.Unauthenticated, msg);

function b64json(part: string): Record<string, unknown> {
  const v = JSON.parse(Buffer.from(part, "base64url").toString("utf8"));
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw new Error("not an object");
  return v as Record<string, unknown>;
}

/** Returns a Verifier for JWTs. Throws on a bad configuration. */
export function jwtVerifier(opts: JwtOptions): Verifier {
  const secret = opts.hmacSecret === undefined ? undefined : Buffer.from(opts.hmacSecret);
  const keys = new Map<string, KeyObject>();
  for (const [kid, k] of Object.entries(opts.publicKeys ?? {})) keys.set(kid, typeof k === "string" ? createPublicKey(k) : k);
  if (!secret && keys.size === 0) throw new Error("fnmesh: jwtVerifier needs hmacSecret or publicKeys");
  if (secret && secret.length < 32) throw new Error(`fnmesh: jwtVerifier hmacSecret has ${secret.length} bytes, want at least 32`);
  const algs = opts.algorithms ?? [...(secret ? HMAC : []), ...(keys.size ? RSA : [])];
  for (const a of algs) {
    if (HMAC.includes(a) ? !secret : RSA.includes(a) ? keys.size === 0 : true) {
      throw new Error(`fnmesh: jwtVerifier algorithm ${a} is not supported with the keys given`);
    }
  }
  const leeway = opts.leewaySec ?? 30;

  return (token: string): Claims => {
    if (!token) throw unauthenticated("missing token");
    const parts = token.split(".");
    if (parts.length !== 3) throw unauthenticated("token is malformed");
    let header: Record<string, unknown>;
    let claims: Claims;
    try {
      header = b64json(parts[0]);
      claims = b64json(parts[1]);
    } catch {
      throw unauthenticated("token is malformed");
    }
    const alg = String(header.alg ?? "");
    if (!algs.includes(alg)) throw unauthenticated(`token cannot be verified: signing method ${alg || "none"} is invalid`);
    const signed = Buffer.from(`${parts[0]}.${parts[1]}`);
    const sig = Buffer.from(parts[2], "base64url");
    let ok = false;
    if (HMAC.includes(alg)) {
      const want = createHmac(hashOf(alg), secret!).update(signed).digest();
      ok = want.length === sig.length && timingSafeEqual(want, sig);
    } else {
      const kid = typeof header.kid === "string" ? header.kid : "";
      const key = keys.get(kid) ?? (kid === "" && keys.size === 1 ? [...keys.values()][0] : undefined);
      if (!key) throw unauthenticated(`token cannot be verified: no key for kid "${kid}"`);
      ok = createVerify(`RSA-${hashOf(alg).toUpperCase()}`).update(signed).verify(key, sig);
    }
    if (!ok) throw unauthenticated("token signature is invalid");

    const now = Date.now() / 1000;
    const num = (k: string) => (typeof claims[k] === "number" ? (claims[k] as number) : undefined);
    const exp = num("exp");
    if (exp === undefined) {
      if (!opts.allowNoExpiry) throw unauthenticated("token lacks a required claim: exp");
    } else if (now > exp + leeway) {
      throw unauthenticated("token expired");
    }
    const nbf = num("nbf");
    if (nbf !== undefined && now + leeway < nbf) throw unauthenticated("token not valid yet");
    const iat = num("iat");
    if (iat !== undefined && now + leeway < iat) throw unauthenticated("token issued in the future");
    if (opts.issuer !== undefined && claims.iss !== opts.issuer) throw unauthenticated("token has the wrong issuer");
    if (opts.audience !== undefined) {
      const aud = Array.isArray(claims.aud) ? claims.aud : [claims.aud];
      if (!aud.includes(opts.audience)) throw unauthenticated("token has the wrong audience");
    }
    return claims;
  };
}

/** The roles claim (an array of strings), or the role claim as one role. */
export function rolesOf(claims: Claims | undefined): string[] {
  if (!claims) return [];
  const split = (v: unknown) => (typeof v === "string" ? v.split(" ").filter(Boolean) : Array.isArray(v) ? v.filter((x): x is string => typeof x === "string") : undefined);
  return split(claims.roles) ?? split(claims.role) ?? [];
}

/** Signs an HS256 token, for tests and tools. */
export function signHS256(secret: string | Buffer, claims: Claims): string {
  const enc = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const head = `${enc({ alg: "HS256", typ: "JWT" })}.${enc(claims)}`;
  return `${head}.${createHmac("sha256", Buffer.from(secret)).update(head).digest("base64url")}`;
}
