// Package security verifies callers' tokens and carries their claims.
//
// A service checks tokens with a Verifier (NewJWTVerifier: HS256/384/512
// with a shared secret, RS256/384/512 with public keys), and a function
// reads the caller's claims from its context with ClaimsFromContext.
// Callers mint tokens with a Signer.
package security
