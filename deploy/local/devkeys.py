"""The local stack's token signing key, until the auth service issues tokens.

At first start the launcher makes an Ed25519 key: the private JWK stays in
`.tickertap/<profile>/secrets/dev-signing-key.json` (0600), the public JWKS goes
to `.tickertap/<profile>/dev-jwks.json`, which services verify tokens against.
`python deploy/local/devtoken.py` mints tokens with it for curl and tests.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from config import StackConfig
from joserfc import jwt
from joserfc.jwk import OKPKey
from processes import write_private

ISSUER = "tickertap-local"
AUDIENCE = "tickertap"
ALGORITHM = "Ed25519"  # RFC 9864's name for EdDSA over Ed25519


def jwks_path(cfg: StackConfig) -> Path:
    return cfg.state_dir / "dev-jwks.json"


def private_key_path(cfg: StackConfig) -> Path:
    return cfg.secrets_dir / "dev-signing-key.json"


def ensure_keys(cfg: StackConfig) -> Path:
    """Make the key pair on first use; returns the public JWKS path."""
    private = private_key_path(cfg)
    if not private.exists():
        kid = f"dev-{secrets.token_hex(4)}"
        key = OKPKey.generate_key(
            "Ed25519", parameters={"kid": kid, "use": "sig", "alg": ALGORITHM}
        )
        write_private(private, json.dumps(key.as_dict(private=True)))
    key = OKPKey.import_key(json.loads(private.read_text()))
    public = jwks_path(cfg)
    public.write_text(json.dumps({"keys": [key.as_dict(private=False)]}, indent=2))
    return public


def mint(
    key_path: Path,
    subject: str,
    roles: Iterable[str] = (),
    scopes: Iterable[str] = (),
    ttl_s: int = 900,
    **claims: Any,
) -> str:
    """A signed access token for `subject`; `key_path` is the private JWK's file."""
    key = OKPKey.import_key(json.loads(key_path.read_text()))
    now = int(time.time())
    body = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": subject,
        "iat": now,
        "nbf": now,
        "exp": now + ttl_s,
        "jti": str(uuid.uuid4()),
        "roles": sorted(roles),
        "scope": " ".join(sorted(scopes)),
        **claims,
    }
    header = {"alg": ALGORITHM, "kid": key.kid, "typ": "at+jwt"}
    return jwt.encode(header, body, key, algorithms=[ALGORITHM])
