"""Spec conformance, not just self-consistency: tokens built and checked with `cryptography`
alone, by hand from RFC 7515 (JWS), RFC 7518 section 3.4 (ES256 signatures are R || S) and
RFC 8037 (EdDSA), against the verifier and the minter, and the RFC 8037 test vector."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from joserfc import jwt
from joserfc.jwk import OKPKey, generate_key

from tickertap.authn import AccessTokenVerifier, InvalidToken, StaticJwks
from tickertap.authn._jose import algorithm
from tickertap.authn.testing import TokenMinter

ISSUER = "https://auth.tickertap.test"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def json_b64(value: dict[str, Any]) -> str:
    return b64(json.dumps(value).encode("utf-8"))


def claims() -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": ISSUER,
        "aud": ["ledger"],
        "sub": "hand-made",
        "iat": now,
        "exp": now + 120,
        "roles": ["trader"],
        "scope": "ledger:read",
    }


def hand_eddsa(kid: str) -> tuple[str, dict[str, Any]]:
    """An EdDSA token and its public JWK, with nothing but `cryptography` and the RFCs."""
    private = Ed25519PrivateKey.generate()
    x = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64(x), "kid": kid, "use": "sig"}
    signing_input = f"{json_b64({'alg': 'EdDSA', 'kid': kid})}.{json_b64(claims())}"
    return f"{signing_input}.{b64(private.sign(signing_input.encode()))}", jwk


def hand_es256(kid: str) -> tuple[str, dict[str, Any]]:
    private = ec.generate_private_key(ec.SECP256R1())
    numbers = private.public_key().public_numbers()
    jwk = {
        "kty": "EC",
        "crv": "P-256",
        "x": b64(numbers.x.to_bytes(32, "big")),
        "y": b64(numbers.y.to_bytes(32, "big")),
        "kid": kid,
    }
    header = {"typ": "at+jwt", "alg": "ES256", "kid": kid}
    signing_input = f"{json_b64(header)}.{json_b64(claims())}"
    r, s = decode_dss_signature(private.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}", jwk


@pytest.mark.parametrize("build", [hand_eddsa, hand_es256])
async def test_the_verifier_accepts_tokens_built_by_hand(build):
    token, jwk = build("hand-1")
    verifier = AccessTokenVerifier(StaticJwks({"keys": [jwk]}), issuer=ISSUER, audience="ledger")
    principal = await verifier.verify(token)
    assert principal.subject == "hand-made"
    assert principal.roles == {"trader"}
    assert principal.scopes == {"ledger:read"}
    # and a hand-made token under another key with the same kid is refused
    other, _ = build("hand-1")
    with pytest.raises(InvalidToken):
        await verifier.verify(other)


def hand_verify(token: str, jwks: dict[str, Any]) -> dict[str, Any]:
    """The claims of a valid EdDSA or ES256 compact JWS, or an exception."""
    header_b64, payload_b64, signature_b64 = token.split(".")
    header = json.loads(unb64(header_b64))
    (jwk,) = [k for k in jwks["keys"] if k["kid"] == header["kid"]]
    signing_input = f"{header_b64}.{payload_b64}".encode("ascii")
    signature = unb64(signature_b64)
    if header["alg"] == "EdDSA":
        assert jwk["kty"] == "OKP"
        assert jwk["crv"] == "Ed25519"
        Ed25519PublicKey.from_public_bytes(unb64(jwk["x"])).verify(signature, signing_input)
    else:
        assert header["alg"] == "ES256"
        assert jwk["kty"] == "EC"
        assert jwk["crv"] == "P-256"
        assert len(signature) == 64
        public = ec.EllipticCurvePublicNumbers(
            int.from_bytes(unb64(jwk["x"]), "big"),
            int.from_bytes(unb64(jwk["y"]), "big"),
            ec.SECP256R1(),
        ).public_key()
        r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        public.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(hashes.SHA256()))
    result: dict[str, Any] = json.loads(unb64(payload_b64))
    return result


@pytest.mark.parametrize("alg", ["EdDSA", "ES256"])
def test_minted_tokens_verify_by_hand(alg):
    minter = TokenMinter(ISSUER, "ledger", alg)
    jwk = minter.jwks["keys"][0]
    assert "d" not in jwk  # the published set holds public keys only
    token = minter.mint("user-1", roles=["trader"], scopes=["a", "b"])
    header = json.loads(unb64(token.split(".")[0]))
    assert header == {"alg": alg, "kid": minter.kid, "typ": "at+jwt"}
    claims = hand_verify(token, minter.jwks)
    assert claims["sub"] == "user-1"
    assert claims["iss"] == ISSUER
    assert claims["aud"] == "ledger"
    assert claims["roles"] == ["trader"]
    assert claims["scope"] == "a b"
    assert claims["exp"] - claims["iat"] == 300


def test_the_eddsa_primitive_reproduces_the_rfc_8037_test_vector():
    # RFC 8037 appendix A.1, A.4 and A.5
    jwk = {
        "kty": "OKP",
        "crv": "Ed25519",
        "d": "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A",
        "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
    }
    signing_input = b"eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc"
    expected = (
        "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
    )
    eddsa = algorithm("EdDSA")
    assert b64(eddsa.sign(signing_input, OKPKey.import_key(jwk))) == expected
    public = OKPKey.import_key({k: v for k, v in jwk.items() if k != "d"})
    assert eddsa.verify(signing_input, unb64(expected), public)
    assert not eddsa.verify(signing_input + b"x", unb64(expected), public)
    # and plain `cryptography` agrees with the RFC
    Ed25519PublicKey.from_public_bytes(unb64(jwk["x"])).verify(unb64(expected), signing_input)


@pytest.mark.parametrize(
    ("alg", "kty", "crv"), [("Ed25519", "OKP", "Ed25519"), ("ES256", "EC", "P-256")]
)
async def test_tokens_from_joserfc_jwt_encode_verify(alg, kty, crv):
    # the path the local stack's dev tokens take (deploy/local/devkeys.py): an empty scope too
    key = generate_key(kty, crv, parameters={"kid": "k1", "use": "sig", "alg": alg})
    body = claims() | {"scope": "", "nbf": int(time.time())}
    token = jwt.encode({"alg": alg, "kid": "k1", "typ": "at+jwt"}, body, key, algorithms=[alg])
    jwks = {"keys": [key.as_dict(private=False)]}
    verifier = AccessTokenVerifier(
        StaticJwks(jwks), issuer=ISSUER, audience="ledger", algorithms=[alg]
    )
    principal = await verifier.verify(token)
    assert principal.scopes == frozenset()
