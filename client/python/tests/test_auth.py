"""Token checks on a Python replica: HS256, RS256 and ES256 (PEM and JWKS),
roles, public functions, and what is refused."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
from conftest import redis_url, run, unique
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import fnmesh
from fnmesh import Context, FnmeshError, Function, JWTAuth

SECRET = "test-secret-of-at-least-32-bytes!!"


def pem(key: Any) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "ada", "exp": int(time.time()) + 60, **extra}


def me(_: None, ctx: Context) -> dict[str, Any]:
    return {"sub": (ctx.claims or {}).get("sub")}


FNS = {
    "me": me,
    "admin": Function(lambda: "admin only", require_role="admin"),
    "ping": Function(lambda: "pong", public=True),
    "ada": Function(lambda: "hi ada", require_claims=lambda c, ctx: None if c.get("sub") == "ada" else (_ for _ in ()).throw(ValueError("only ada"))),
}


async def codes(svc: str, token: str | None, fn: str = "me") -> str:
    c = await fnmesh.connect(url=redis_url(), token=token)
    try:
        await c.call(f"{svc}.{fn}", timeout=5)
        return "ok"
    except FnmeshError as e:
        return e.code
    finally:
        await c.close()


def test_hs256_roles_and_public() -> None:
    async def main() -> None:
        svc = unique("auth")
        r = await fnmesh.serve(svc, FNS, url=redis_url(), auth=JWTAuth(hmac_secret=SECRET))
        try:
            good = jwt.encode(claims(), SECRET, algorithm="HS256")
            c = await fnmesh.connect(url=redis_url(), token=good)
            assert await c.call(f"{svc}.me") == {"sub": "ada"}
            await c.close()
            assert await codes(svc, None) == fnmesh.UNAUTHENTICATED
            assert await codes(svc, good + "x") == fnmesh.UNAUTHENTICATED
            assert await codes(svc, "not.a.jwt") == fnmesh.UNAUTHENTICATED
            assert await codes(svc, jwt.encode(claims(exp=int(time.time()) - 120), SECRET, algorithm="HS256")) == fnmesh.UNAUTHENTICATED
            assert await codes(svc, jwt.encode({"sub": "ada"}, SECRET, algorithm="HS256")) == fnmesh.UNAUTHENTICATED  # no exp
            assert await codes(svc, jwt.encode(claims(), "another-secret-of-32-bytes-or-more", algorithm="HS256")) == fnmesh.UNAUTHENTICATED
            none = jwt.encode(claims(), None, algorithm="none")
            assert await codes(svc, none) == fnmesh.UNAUTHENTICATED
            assert await codes(svc, good, "admin") == fnmesh.PERMISSION_DENIED
            assert await codes(svc, jwt.encode(claims(roles=["admin"]), SECRET, algorithm="HS256"), "admin") == "ok"
            assert await codes(svc, jwt.encode(claims(roles="ops admin"), SECRET, algorithm="HS256"), "admin") == "ok"
            assert await codes(svc, jwt.encode(claims(role="admin"), SECRET, algorithm="HS256"), "admin") == "ok"
            assert await codes(svc, None, "ping") == "ok"
            assert await codes(svc, good + "x", "ping") == fnmesh.UNAUTHENTICATED  # a bad token is still refused
            assert await codes(svc, good, "ada") == "ok"
            assert await codes(svc, jwt.encode(claims(sub="bob"), SECRET, algorithm="HS256"), "ada") == fnmesh.PERMISSION_DENIED
        finally:
            await r.close()

    run(main())


def test_rs256_and_es256_by_kid_and_jwks() -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    # RFC 7518 §6.2.1.2: coordinates are the full 32 bytes. (PyJWT 2.6's
    # to_jwk drops leading zero bytes, and its from_jwk then refuses them.)
    nums = other.public_key().public_numbers()
    b64 = lambda n: base64.urlsafe_b64encode(n.to_bytes(32, "big")).rstrip(b"=").decode()  # noqa: E731
    jwk = {"kty": "EC", "crv": "P-256", "x": b64(nums.x), "y": b64(nums.y), "kid": "k3", "alg": "ES256", "use": "sig"}

    async def main() -> None:
        svc = unique("asym")
        auth = JWTAuth(public_keys={"k1": pem(rsa_key), "k2": pem(ec_key)}, jwks={"keys": [jwk]})
        r = await fnmesh.serve(svc, FNS, url=redis_url(), auth=auth)
        try:
            assert await codes(svc, jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "k1"})) == "ok"
            assert await codes(svc, jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "k2"})) == "ok"
            assert await codes(svc, jwt.encode(claims(), other, algorithm="ES256", headers={"kid": "k3"})) == "ok"
            # Signed by another key than the kid names; an unknown kid; HS256 without a secret.
            assert await codes(svc, jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "k3"})) == fnmesh.UNAUTHENTICATED
            assert await codes(svc, jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "nope"})) == fnmesh.UNAUTHENTICATED
            assert await codes(svc, jwt.encode(claims(), SECRET, algorithm="HS256", headers={"kid": "k1"})) == fnmesh.UNAUTHENTICATED
        finally:
            await r.close()

    run(main())


def test_configuration_is_checked() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        JWTAuth(hmac_secret="short")
    with pytest.raises(ValueError):
        JWTAuth()
    with pytest.raises(ValueError, match="not supported"):
        JWTAuth(hmac_secret=SECRET, algorithms=["RS256"])
    with pytest.raises(ValueError, match="auth is not set"):
        fnmesh.Replica("svc", {"f": lambda: 1})
    with pytest.raises(ValueError, match="service name"):
        fnmesh.Replica("Bad Name", {"f": lambda: 1}, allow_unauthenticated=True)


def test_idempotency_key_never_skips_the_token_and_role_checks() -> None:
    async def main() -> None:
        svc = unique("authidem")
        runs: list[str] = []

        def admin(_: Any, ctx: Context) -> dict[str, Any]:
            runs.append((ctx.claims or {})["sub"])
            return {"secret": "admin data", "run": len(runs)}

        r = await fnmesh.serve(svc, {"admin": Function(admin, require_role="admin")}, url=redis_url(), auth=JWTAuth(hmac_secret=SECRET))

        async def call(token: str | None) -> Any:
            c = await fnmesh.connect(url=redis_url(), token=token)
            try:
                return await c.call(f"{svc}.admin", {"q": 1}, idempotency_key="k-1", timeout=5)
            except FnmeshError as e:
                return e.code
            finally:
                await c.close()

        try:
            ada_admin = jwt.encode(claims(roles=["admin"]), SECRET, algorithm="HS256")
            assert await call(ada_admin) == {"secret": "admin data", "run": 1}
            # The same subject without the role, no token, a bad token: refused, not the stored result.
            assert await call(jwt.encode(claims(), SECRET, algorithm="HS256")) == fnmesh.PERMISSION_DENIED
            assert await call(None) == fnmesh.UNAUTHENTICATED
            assert await call(ada_admin + "x") == fnmesh.UNAUTHENTICATED
            assert await call(ada_admin) == {"secret": "admin data", "run": 1}
            # Another admin's key of the same name is theirs: it runs.
            assert await call(jwt.encode(claims(sub="bob", roles=["admin"]), SECRET, algorithm="HS256")) == {"secret": "admin data", "run": 2}
            assert runs == ["ada", "bob"]
        finally:
            await r.close()

    run(main())
