"""Token checks (PROTOCOL.md §9): JWTs verified with PyJWT."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Union

import jwt
from jwt.algorithms import get_default_algorithms

from .errors import UNAUTHENTICATED, FnmeshError

Claims = dict[str, Any]
"""A verified token's claims."""

Verifier = Callable[[str], Union[Claims, Awaitable[Claims]]]
"""Checks a token and returns its claims, or raises FnmeshError unauthenticated."""

HMAC = ("HS256", "HS384", "HS512")
ASYMMETRIC = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "EdDSA")


class JWTAuth:
    """Verifies JWTs: HS256/384/512 with a shared secret, RS*, PS*, ES* and
    EdDSA with public keys (PEM text, key objects or JWKs, by kid) or a JWKS
    document. exp is required (unless require_exp=False), with 30 s
    leeway; alg "none" is never accepted::

        JWTAuth(hmac_secret=os.environ["FNMESH_SECRET"])
        JWTAuth(jwks=open("jwks.json").read(), issuer="https://idp.example.com")
    """

    def __init__(
        self,
        *,
        hmac_secret: str | bytes | None = None,
        public_keys: Mapping[str, Any] | None = None,
        jwks: str | Mapping[str, Any] | None = None,
        algorithms: list[str] | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        leeway: float = 30.0,
        require_exp: bool = True,
    ) -> None:
        self._secret = hmac_secret.encode() if isinstance(hmac_secret, str) else hmac_secret
        if self._secret is not None and len(self._secret) < 32:
            raise ValueError(f"fnmesh: JWTAuth hmac_secret has {len(self._secret)} bytes, want at least 32")
        self._keys: dict[str, Any] = {}
        self._key_algs: dict[str, str] = {}  # kid -> the alg its JWK names
        for kid, k in (public_keys or {}).items():
            self._keys[kid] = self._load(k, kid)
        if jwks is not None:
            doc = json.loads(jwks) if isinstance(jwks, str) else jwks
            for jwk in doc.get("keys", []):
                if jwk.get("use", "sig") != "sig":
                    continue
                kid = str(jwk.get("kid", ""))
                self._keys[kid] = self._load(jwk, kid)
        if self._secret is None and not self._keys:
            raise ValueError("fnmesh: JWTAuth needs hmac_secret, public_keys or jwks")
        if algorithms is None:
            algorithms = [*(HMAC if self._secret is not None else ()), *(ASYMMETRIC if self._keys else ())]
        supported = get_default_algorithms()
        for a in algorithms:
            if a not in supported or a == "none":
                raise ValueError(f"fnmesh: JWTAuth algorithm {a} is not supported")
            if (a in HMAC and self._secret is None) or (a not in HMAC and not self._keys):
                raise ValueError(f"fnmesh: JWTAuth algorithm {a} is not supported with the keys given")
        self._algs = list(algorithms)
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway
        self._require_exp = require_exp

    def _load(self, k: Any, kid: str) -> Any:
        if isinstance(k, Mapping):  # a JWK
            if "alg" in k:
                self._key_algs[kid] = str(k["alg"])
            return jwt.PyJWK(dict(k)).key
        if isinstance(k, (str, bytes)):
            from cryptography.hazmat.primitives.serialization import load_pem_public_key

            return load_pem_public_key(k.encode() if isinstance(k, str) else k)
        return k

    def __call__(self, token: str) -> Claims:
        if not token:
            raise FnmeshError(UNAUTHENTICATED, "missing token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise FnmeshError(UNAUTHENTICATED, "token is malformed") from None
        alg = str(header.get("alg") or "")
        if alg not in self._algs:
            raise FnmeshError(UNAUTHENTICATED, f"token cannot be verified: signing method {alg or 'none'} is invalid")
        if alg in HMAC:
            key: Any = self._secret
        else:
            kid = header.get("kid") if isinstance(header.get("kid"), str) else ""
            key = self._keys.get(kid)
            if key is None and kid == "" and len(self._keys) == 1:
                key = next(iter(self._keys.values()))
            if key is None:
                raise FnmeshError(UNAUTHENTICATED, f'token cannot be verified: no key for kid "{kid}"')
            if kid in self._key_algs and self._key_algs[kid] != alg:
                raise FnmeshError(UNAUTHENTICATED, f"token cannot be verified: key {kid} is for {self._key_algs[kid]}, not {alg}")
        options: dict[str, Any] = {"require": ["exp"] if self._require_exp else [], "verify_aud": self._audience is not None}
        try:
            claims = jwt.decode(
                token, key, algorithms=[alg], leeway=self._leeway, options=options,
                issuer=self._issuer, audience=self._audience,
            )
        except jwt.ExpiredSignatureError:
            raise FnmeshError(UNAUTHENTICATED, "token expired") from None
        except jwt.ImmatureSignatureError:
            raise FnmeshError(UNAUTHENTICATED, "token not valid yet") from None
        except jwt.MissingRequiredClaimError as e:
            raise FnmeshError(UNAUTHENTICATED, f"token lacks a required claim: {e.claim}") from None
        except jwt.InvalidIssuerError:
            raise FnmeshError(UNAUTHENTICATED, "token has the wrong issuer") from None
        except jwt.InvalidAudienceError:
            raise FnmeshError(UNAUTHENTICATED, "token has the wrong audience") from None
        except jwt.InvalidSignatureError:
            raise FnmeshError(UNAUTHENTICATED, "token signature is invalid") from None
        except jwt.PyJWTError as e:
            raise FnmeshError(UNAUTHENTICATED, f"token is invalid: {e}") from None
        if not isinstance(claims, dict):
            raise FnmeshError(UNAUTHENTICATED, "token is malformed")
        return claims


def roles_of(claims: Mapping[str, Any] | None) -> list[str]:
    """The roles claim (a list of strings, or one string of space-separated
    roles); when it is absent, the role claim in the same forms."""
    if not claims:
        return []
    for k in ("roles", "role"):
        v = claims.get(k)
        if isinstance(v, str):
            return v.split()
        if isinstance(v, list):
            return [x for x in v if isinstance(x, str)]
    return []


def sign_hs256(secret: str | bytes, claims: Mapping[str, Any]) -> str:
    """Signs an HS256 token, for tests and tools."""
    return jwt.encode(dict(claims), secret, algorithm="HS256")
