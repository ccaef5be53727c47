"""Vault (OpenBao) access for tickerTap services.

AppRole login, dynamic database credentials with renewal and rotation, and
transit encryption / HMAC for field-level protection of PII.
"""

from tickertap.secrets.rotation import CredentialRotator, TokenKeeper
from tickertap.secrets.vault import (
    AppRoleLogin,
    DatabaseCredentials,
    Lease,
    Vault,
    VaultDenied,
    VaultError,
    VaultUnavailable,
)

__all__ = [
    "AppRoleLogin",
    "CredentialRotator",
    "DatabaseCredentials",
    "Lease",
    "TokenKeeper",
    "Vault",
    "VaultDenied",
    "VaultError",
    "VaultUnavailable",
]
