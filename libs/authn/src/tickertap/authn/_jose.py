"""The few joserfc pieces the verifier and the minter share.

Algorithms are taken from joserfc's JWS algorithm table directly rather than
through `JWSRegistry.get_alg`, which emits a `SecurityWarning` for "EdDSA" on
every call (RFC 9864 deprecates the name in favour of "Ed25519"); the allow
list is ours and is checked before a model is looked up.
"""

from __future__ import annotations

import json
from typing import Any

from joserfc import jws  # noqa: F401  (importing it registers the JWS algorithms)
from joserfc.jwa import JWSAlgModel
from joserfc.jws import JWSRegistry
from joserfc.util import urlsafe_b64decode, urlsafe_b64encode

# signature algorithms whose keys are public: a verifier never holds a secret
ASYMMETRIC_ALGORITHMS = frozenset(
    {
        "EdDSA",
        "Ed25519",
        "Ed448",
        "ES256",
        "ES384",
        "ES512",
        "RS256",
        "RS384",
        "RS512",
        "PS256",
        "PS384",
        "PS512",
    }
)

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "algorithm",
    "b64decode",
    "b64encode",
    "json_segment",
]


def algorithm(name: str) -> JWSAlgModel:
    """The joserfc model of an asymmetric JWS algorithm; KeyError for any other name."""
    if name not in ASYMMETRIC_ALGORITHMS:
        raise KeyError(name)
    return JWSRegistry.algorithms[name]


def b64encode(data: bytes) -> bytes:
    return urlsafe_b64encode(data)


def b64decode(segment: bytes) -> bytes:
    """base64url without padding; ValueError unless the encoding is canonical."""
    return urlsafe_b64decode(segment)


def json_segment(value: dict[str, Any]) -> bytes:
    return b64encode(json.dumps(value, separators=(",", ":"), ensure_ascii=True).encode())
