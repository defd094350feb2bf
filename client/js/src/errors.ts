// Error codes and the error every fnmesh call fails with (PROTOCOL.md §5).

/** The mesh's own codes. Any other code is a function's application code. */
export const Codes = {
  InvalidArgument: "invalid_argument",
  Unauthenticated: "unauthenticated",
  PermissionDenied: "permission_denied",
  NotFound: "not_found",
  DeadlineExceeded: "deadline_exceeded",
  Unavailable: "unavailable",
  ResourceExhausted: "resource_exhausted",
  Canceled: "canceled",
  Internal: "internal",
} as const;

/** One of the mesh's codes. */
export type MeshCode = (typeof Codes)[keyof typeof Codes];

/** A mesh code, or an application code such as "insufficient_funds". */
export type Code = MeshCode | (string & {});

const meshCodes = new Set<string>(Object.values(Codes));

/** Reports whether code is one of the mesh's own codes. */
export function isMeshCode(code: string): code is MeshCode {
  return meshCodes.has(code);
}

/** Reports whether code may cross the wire: [a-z0-9_.], 1 to 64 bytes. */
export function validCode(code: string): boolean {
  return /^[a-z0-9_.]{1,64}$/.test(code);
}

/** One request field that failed validation. */
export interface FieldViolation {
  /** JSON path of the field, e.g. "items[0].qty". */
  field: string;
  /** The failed rule, e.g. "required", "gte". */
  rule: string;
  /** The rule's parameter, e.g. "0" for gte=0. */
  param?: string;
}

/**
 * The error every call rejects with, and the error a function throws to
 * fail with a code of its choice:
 *
 *     throw new FnmeshError("insufficient_funds", "balance 3, price 5")
 */
export class FnmeshError extends Error {
  readonly code: Code;
  readonly fields: FieldViolation[];

  constructor(code: Code, message: string, fields: FieldViolation[] = []) {
    super(message);
    this.name = "FnmeshError";
    this.code = code;
    this.fields = fields;
  }

  /** "code: message", as the Go client prints errors. */
  override toString(): string {
    return this.message ? `${this.code}: ${this.message}` : this.code;
  }
}

/** Reports whether err is a FnmeshError, with the given code if one is given. */
export function isFnmeshError(err: unknown, code?: Code): err is FnmeshError {
  return err instanceof FnmeshError && (code === undefined || err.code === code);
}
