"""Per-tenant prefix-cache salts: no tenant ever hits another tenant's cached prompt prefix.

vLLM reuses the KV cache of a prompt prefix it has seen, and a hit shows as a faster first
token: without a salt, a tenant could time its requests to learn whether another tenant
recently sent the same prefix. vLLM mixes a request's `cache_salt` into the hash of its first
cache block, so prefixes are shared only between requests with the same salt. The gateway sets
it on every engine request it sends for a tenant: HMAC-SHA256(secret, tenant id), never taken
from a client (a client's `cache_salt` is a 400, `gateway.protocol`). The secret is the setting
`cache_salt_secret`, or a random one kept in `<data_dir>/cache_salt_secret` (0600); gateways
that share a store should share it, or they merely share fewer cache hits.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

SECRET_FILE = "cache_salt_secret"  # noqa: S105 - the file's name, not a secret


def secret_file(path: Path, prefix: str = "") -> str:
    """A secret kept in a 0600 file, created once (by whoever gets there first)."""
    if path.exists():
        return path.read_text().strip()
    secret = prefix + secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it just now
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
    return secret


class CacheSalts:
    """The salt of each tenant, derived once and remembered."""

    def __init__(self, secret: str):
        if not secret:
            raise ValueError("the cache-salt secret must not be empty")
        self._key = secret.encode()
        self._salts: dict[str, str] = {}

    @classmethod
    def for_data_dir(cls, configured: str, data_dir: Path) -> CacheSalts:
        return cls(configured or secret_file(data_dir / SECRET_FILE))

    def of(self, tenant_id: str) -> str:
        salt = self._salts.get(tenant_id)
        if salt is None:
            salt = hmac.new(self._key, tenant_id.encode(), hashlib.sha256).hexdigest()
            self._salts[tenant_id] = salt
        return salt
