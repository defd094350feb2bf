// Token checks (PROTOCOL.md §9): JWTs verified with the jose package,
// HS256/384/512 with a shared secret, RS*, PS*, ES* and EdDSA with public
// keys by kid or a JWKS (a document, or a URL fetched and cached).

import { createHmac, createPublicKey, type KeyObject } from "node:crypto";

import { createLocalJWKSet, createRemoteJWKSet, decodeProtectedHeader, errors, jwtVerify, type JSONWebKeySet, type JWTVerifyGetKey } from "jose";

import { Codes, FnmeshError } from "./errors.js";

/** A verified token's claims. */
export type Claims = Record<string, unknown>;

/** Checks a token and returns its claims, or throws FnmeshError unauthenticated. */
export type Verifier = (token: string) => Claims | Promise<Claims>;

/** Options of jwtVerifier: give hmacSecret, publicKeys, jwks or jwksUrl (one or more). */
export interface JwtOptions {
  /** Verifies HS256/384/512. At least 32 bytes. */
  hmacSecret?: string | Buffer;
  /** Verify RS*, PS*, ES* and EdDSA, chosen by the token's kid ("" or the only key without one). PEM text or KeyObject. */
  publicKeys?: Record<string, string | KeyObject>;
  /** A JSON Web Key Set document: its keys, chosen by kid. */
  jwks?: JSONWebKeySet;
  /** A JWKS URL (an identity provider's), fetched and cached; refetched for a kid it does not know. */
  jwksUrl?: string | URL;
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
const ASYMMETRIC = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"];

const unauthenticated = (msg: string) => new FnmeshError(Codes.Unauthenticated, msg);

/** Returns a Verifier for JWTs. Throws on a bad configuration. */
export function jwtVerifier(opts: JwtOptions): Verifier {
  const secret = opts.hmacSecret === undefined ? undefined : Buffer.from(opts.hmacSecret);
  const keys = new Map<string, KeyObject>();
  for (const [kid, k] of Object.entries(opts.publicKeys ?? {})) keys.set(kid, typeof k === "string" ? createPublicKey(k) : k);
  const sets: JWTVerifyGetKey[] = [];
  if (opts.jwks) sets.push(createLocalJWKSet(opts.jwks));
  if (opts.jwksUrl) sets.push(createRemoteJWKSet(new URL(opts.jwksUrl)));
  const asymmetric = keys.size > 0 || sets.length > 0;
  if (!secret && !asymmetric) throw new Error("fnmesh: jwtVerifier needs hmacSecret, publicKeys, jwks or jwksUrl");
  if (secret && secret.length < 32) throw new Error(`fnmesh: jwtVerifier hmacSecret has ${secret.length} bytes, want at least 32`);
  const algs = opts.algorithms ?? [...(secret ? HMAC : []), ...(asymmetric ? ASYMMETRIC : [])];
  for (const a of algs) {
    if (HMAC.includes(a) ? !secret : ASYMMETRIC.includes(a) ? !asymmetric : true) {
      throw new Error(`fnmesh: jwtVerifier algorithm ${a} is not supported with the keys given`);
    }
  }
  const leeway = opts.leewaySec ?? 30;

  // The key for a token: the secret for HMAC; by kid among the keys given,
  // then in the key sets.
  const getKey: JWTVerifyGetKey = async (header, token) => {
    if (HMAC.includes(header.alg)) return secret!;
    const kid = header.kid ?? "";
    const key = keys.get(kid) ?? (kid === "" && keys.size === 1 && sets.length === 0 ? [...keys.values()][0] : undefined);
    if (key) return key;
    for (const set of sets) {
      try {
        return await set(header, token);
      } catch (err) {
        if (!(err instanceof errors.JWKSNoMatchingKey)) throw err;
      }
    }
    throw unauthenticated(`token cannot be verified: no key for kid "${kid}"`);
  };

  return async (token: string): Promise<Claims> => {
    if (!token) throw unauthenticated("missing token");
    let alg: string;
    try {
      alg = String(decodeProtectedHeader(token).alg ?? "");
    } catch {
      throw unauthenticated("token is malformed");
    }
    if (!algs.includes(alg)) throw unauthenticated(`token cannot be verified: signing method ${alg || "none"} is invalid`);
    let claims: Claims;
    try {
      ({ payload: claims } = await jwtVerify(token, getKey, {
        algorithms: [alg],
        clockTolerance: leeway,
        issuer: opts.issuer,
        audience: opts.audience,
        requiredClaims: opts.allowNoExpiry ? [] : ["exp"],
      }));
    } catch (err) {
      throw asUnauthenticated(err);
    }
    const iat = typeof claims.iat === "number" ? claims.iat : undefined;
    if (iat !== undefined && Date.now() / 1000 + leeway < iat) throw unauthenticated("token issued in the future");
    return claims;
  };
}

function asUnauthenticated(err: unknown): FnmeshError {
  if (err instanceof FnmeshError) return err;
  if (err instanceof errors.JWTExpired) return unauthenticated("token expired");
  if (err instanceof errors.JWTClaimValidationFailed) {
    switch (err.claim) {
      case "nbf":
        return unauthenticated("token not valid yet");
      case "iss":
        return unauthenticated("token has the wrong issuer");
      case "aud":
        return unauthenticated("token has the wrong audience");
    }
    if (err.reason === "missing") return unauthenticated(`token lacks a required claim: ${err.claim}`);
    return unauthenticated(`token claim ${err.claim} is invalid`);
  }
  if (err instanceof errors.JWSSignatureVerificationFailed) return unauthenticated("token signature is invalid");
  if (err instanceof errors.JOSEAlgNotAllowed) return unauthenticated("token cannot be verified: signing method is invalid");
  if (err instanceof errors.JWKSNoMatchingKey) return unauthenticated("token cannot be verified: no matching key");
  if (err instanceof errors.JWSInvalid || err instanceof errors.JWTInvalid) return unauthenticated("token is malformed");
  return unauthenticated(`token cannot be verified: ${err instanceof Error ? err.message : String(err)}`);
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
