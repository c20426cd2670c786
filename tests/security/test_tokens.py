"""Token rules, without a server: every claim checked, the algorithm pinned."""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from realtime.security.tokens import TokenCodec, TokenError, TokenType
from realtime.settings import JwtAlgorithm

SECRET = b"s" * 48
USER, FAMILY = uuid.uuid4(), uuid.uuid4()


def hs(**kwargs: Any) -> TokenCodec:
    options: dict[str, Any] = {
        "algorithm": JwtAlgorithm.HS256,
        "signing_key": SECRET,
        "verifying_key": SECRET,
        "issuer": "squall",
        "audience": "squall",
        "access_ttl_s": 900,
        "refresh_ttl_s": 86400,
    }
    options.update(kwargs)
    return TokenCodec(**options)


def _pems(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> tuple[bytes, bytes]:
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def rsa_pems() -> tuple[bytes, bytes]:
    return _pems(rsa.generate_private_key(public_exponent=65537, key_size=2048))


def ed_pems() -> tuple[bytes, bytes]:
    return _pems(ed25519.Ed25519PrivateKey.generate())


def test_round_trip() -> None:
    codec = hs()
    issued = codec.issue(TokenType.ACCESS, USER, FAMILY)
    claims = codec.verify(issued.token, TokenType.ACCESS)
    assert (claims.user_id, claims.family_id, claims.jti) == (USER, FAMILY, issued.jti)
    assert claims.expires_at - claims.issued_at == 900


def test_types_are_not_interchangeable() -> None:
    codec = hs()
    access = codec.issue(TokenType.ACCESS, USER, FAMILY).token
    refresh = codec.issue(TokenType.REFRESH, USER, FAMILY).token
    with pytest.raises(TokenError, match="expected a refresh"):
        codec.verify(access, TokenType.REFRESH)
    with pytest.raises(TokenError, match="expected a access"):
        codec.verify(refresh, TokenType.ACCESS)


def test_expiry_uses_the_clock() -> None:
    now = [time.time()]
    codec = hs(clock=lambda: now[0])
    token = codec.issue(TokenType.ACCESS, USER, FAMILY).token
    now[0] += 900 + 6
    with pytest.raises(TokenError) as info:
        codec.verify(token, TokenType.ACCESS)
    assert info.value.expired
    # Logging out with an expired token still names its session.
    assert codec.verify(token, TokenType.ACCESS, allow_expired=True).family_id == FAMILY


def test_expired_by_wall_clock() -> None:
    codec = hs(clock=lambda: time.time() - 10_000)
    token = codec.issue(TokenType.ACCESS, USER, FAMILY).token
    with pytest.raises(TokenError) as info:
        hs().verify(token, TokenType.ACCESS)
    assert info.value.expired


@pytest.mark.parametrize(
    "claim", ["sub", "exp", "iat", "jti", "typ", "aud", "iss", "sid"]
)
def test_every_claim_is_required(claim: str) -> None:
    codec = hs()
    payload = jwt.decode(
        codec.issue(TokenType.ACCESS, USER, FAMILY).token,
        options={"verify_signature": False},
    )
    del payload[claim]
    token = jwt.encode(payload, SECRET, algorithm="HS256")
    with pytest.raises(TokenError):
        codec.verify(token, TokenType.ACCESS)


@pytest.mark.parametrize(
    ("claim", "value"),
    [("aud", "other"), ("iss", "other"), ("sub", "not-a-uuid"), ("sid", 7)],
)
def test_wrong_claim_values(claim: str, value: object) -> None:
    codec = hs()
    payload = jwt.decode(
        codec.issue(TokenType.ACCESS, USER, FAMILY).token,
        options={"verify_signature": False},
    )
    payload[claim] = value
    with pytest.raises(TokenError):
        codec.verify(jwt.encode(payload, SECRET, algorithm="HS256"), TokenType.ACCESS)


def test_alg_none() -> None:
    codec = hs()
    payload = jwt.decode(
        codec.issue(TokenType.ACCESS, USER, FAMILY).token,
        options={"verify_signature": False},
    )
    token = jwt.encode(payload, None, algorithm="none")
    with pytest.raises(TokenError):
        codec.verify(token, TokenType.ACCESS)


def test_forged_signature() -> None:
    token = hs(signing_key=b"x" * 48).issue(TokenType.ACCESS, USER, FAMILY).token
    with pytest.raises(TokenError):
        hs().verify(token, TokenType.ACCESS)


@pytest.mark.parametrize("garbage", ["", "a.b.c", "not a token", "e30.e30.", "...."])
def test_garbage(garbage: str) -> None:
    with pytest.raises(TokenError):
        hs().verify(garbage, TokenType.ACCESS)


def test_rs256_with_key_id_and_hs_confusion() -> None:
    private, public = rsa_pems()
    codec = hs(
        algorithm=JwtAlgorithm.RS256,
        signing_key=private,
        verifying_key=public,
        key_id="k1",
    )
    issued = codec.issue(TokenType.ACCESS, USER, FAMILY)
    assert jwt.get_unverified_header(issued.token) == {
        "alg": "RS256",
        "kid": "k1",
        "typ": "JWT",
    }
    assert codec.verify(issued.token, TokenType.ACCESS).user_id == USER

    # The classic confusion: sign HS256 with the public key as the secret.
    payload = jwt.decode(issued.token, options={"verify_signature": False})
    forged = _hmac_jwt(payload, public, kid="k1")
    with pytest.raises(TokenError):
        codec.verify(forged, TokenType.ACCESS)

    # A token naming another key is refused before any signature check.
    other_kid = jwt.encode(payload, private, algorithm="RS256", headers={"kid": "k2"})
    with pytest.raises(TokenError, match="key id"):
        codec.verify(other_kid, TokenType.ACCESS)


def test_hs_node_refuses_rs_tokens() -> None:
    private, _ = rsa_pems()
    payload = jwt.decode(
        hs().issue(TokenType.ACCESS, USER, FAMILY).token,
        options={"verify_signature": False},
    )
    with pytest.raises(TokenError):
        hs().verify(jwt.encode(payload, private, algorithm="RS256"), TokenType.ACCESS)


def test_eddsa() -> None:
    private, public = ed_pems()
    codec = hs(algorithm=JwtAlgorithm.EDDSA, signing_key=private, verifying_key=public)
    token = codec.issue(TokenType.REFRESH, USER, FAMILY).token
    assert jwt.get_unverified_header(token)["alg"] == "EdDSA"
    assert codec.verify(token, TokenType.REFRESH).family_id == FAMILY


def _hmac_jwt(payload: dict[str, Any], secret: bytes, kid: str) -> str:
    """HS256 by hand: PyJWT itself refuses a PEM key as an HMAC secret."""
    import base64
    import hashlib
    import hmac
    import json

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = b64(json.dumps(payload).encode())
    signature = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64(signature)}"
