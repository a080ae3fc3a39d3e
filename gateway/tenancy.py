"""Tenants and their credentials: key minting and checking, alias resolution, admin operations.

A key looks like `lg-<key id>-<secret>`. Only SHA-256 of the whole key is stored (keys are
256-bit random, so a fast hash is the right tool; there is nothing to brute-force), and the
check is a constant-time comparison of digests. The key id lets the lookup be an index hit
without revealing anything about the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

import msgspec

from adapters.registry import check_alias_name
from store import Alias, AliasTarget, ApiKey, Store, Tenant
from store.errors import AuthenticationFailed, InvalidRequest, NotFound

KEY_PREFIX = "lg"
# Matched with fullmatch: `$` would also accept a trailing newline ("support\n").
_KEY_RE = re.compile(r"lg-([0-9a-f]{16})-([A-Za-z0-9_-]{43})")
TENANT_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def mint_key() -> tuple[str, str]:
    """A new (key id, plaintext key)."""
    key_id = secrets.token_hex(8)
    return key_id, f"{KEY_PREFIX}-{key_id}-{secrets.token_urlsafe(32)}"


def keys_match(plaintext: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_key(plaintext), stored_hash)


def bearer_token(authorization: str | None) -> str:
    """The credential of `Bearer <credential>`, or "" for any other header.

    Only HTTP's own whitespace (SP, HTAB) is trimmed: `str.strip()` would also drop bytes such
    as 0xA0 or 0x85 (obs-text, legal in a header), so a key with one of them appended would
    still be accepted."""
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip(" \t") if scheme.lower() == "bearer" else ""


@dataclass(frozen=True, slots=True)
class Caller:
    tenant_id: str
    tenant_name: str
    key_id: str
    store_default: bool = True
    redact_pii: bool = True
    do_not_train: bool = False  # its captured rows are never trained on (an LLM judge's calls)


class IssuedKey(msgspec.Struct):
    """A freshly minted key: the only time the plaintext exists outside the client."""

    id: str
    tenant_id: str
    name: str
    key: str
    created_at: float


class Directory:
    """Who is calling and what a model name means for them; lookups cached for `ttl_s`."""

    def __init__(self, store: Store, ttl_s: float):
        self.store = store
        self.ttl_s = ttl_s
        self._callers: dict[str, tuple[float, Caller | None]] = {}
        self._aliases: dict[tuple[str, str], tuple[float, Alias | None]] = {}

    def invalidate(self) -> None:
        self._callers.clear()
        self._aliases.clear()

    async def authenticate(self, authorization: str | None) -> Caller:
        if not authorization:
            raise AuthenticationFailed("missing API key: send 'Authorization: Bearer <key>'")
        token = bearer_token(authorization)
        if not token:
            raise AuthenticationFailed("malformed Authorization header: expected 'Bearer <key>'")
        digest = hash_key(token)  # the cache never holds plaintext keys
        now = time.monotonic()
        cached = self._callers.get(digest)
        if cached is not None and cached[0] > now:
            caller = cached[1]
        else:
            caller = await self._lookup(token, digest)
            if len(self._callers) > 10_000:
                self._callers.clear()
            self._callers[digest] = (now + self.ttl_s, caller)
        if caller is None:
            raise AuthenticationFailed("invalid API key", code="invalid_api_key")
        return caller

    async def _lookup(self, token: str, digest: str) -> Caller | None:
        match = _KEY_RE.fullmatch(token)
        if match is None:
            return None
        key = await self.store.get_key(match.group(1))
        if (
            key is None
            or key.revoked_at is not None
            or not hmac.compare_digest(digest, key.key_hash)
        ):
            return None
        tenant = await self.store.get_tenant(key.tenant_id)
        if tenant is None or tenant.disabled:
            return None
        return Caller(tenant.id, tenant.name, key.id, tenant.store_default, tenant.redact_pii)

    async def resolve(self, caller: Caller, model: str) -> Alias:
        """The caller's alias named `model`; anything else is 'not found' (no existence leak)."""
        cache_key = (caller.tenant_id, model)
        now = time.monotonic()
        cached = self._aliases.get(cache_key)
        if cached is not None and cached[0] > now:
            alias = cached[1]
        else:
            alias = await self.store.get_alias(caller.tenant_id, model)
            if len(self._aliases) > 10_000:
                self._aliases.clear()
            self._aliases[cache_key] = (now + self.ttl_s, alias)
        if alias is None:
            raise NotFound(
                f"The model '{model}' does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        return alias


class Admin:
    """Operations behind the admin API and the CLI; the store is the only state."""

    def __init__(self, store: Store, default_alias: str):
        self.store = store
        self.default_alias = default_alias

    async def tenant(self, id_or_name: str) -> Tenant:
        tenant = await self.store.get_tenant(id_or_name)
        if tenant is None:
            raise NotFound(f"no tenant '{id_or_name}'", param="tenant")
        return tenant

    async def create_tenant(self, name: str) -> Tenant:
        if not TENANT_NAME_RE.fullmatch(name):
            raise InvalidRequest(
                "tenant name must be 1-63 chars of a-z, 0-9, '-' or '_', starting with a letter "
                "or digit",
                param="name",
            )
        tenant = await self.store.create_tenant("ten_" + secrets.token_hex(8), name)
        if self.default_alias:
            await self.store.set_alias(tenant.id, self.default_alias, AliasTarget())
        return tenant

    async def issue_key(self, tenant_ref: str, name: str = "default") -> IssuedKey:
        tenant = await self.tenant(tenant_ref)
        key_id, plaintext = mint_key()
        record = ApiKey(key_id, tenant.id, name[:128], hash_key(plaintext), time.time())
        await self.store.add_key(record)
        return IssuedKey(key_id, tenant.id, record.name, plaintext, record.created_at)

    async def set_alias(self, tenant_ref: str, name: str, target: AliasTarget) -> Alias:
        check_alias_name(name)
        if target.kind == "adapter":
            raise InvalidRequest(
                "point an alias at an adapter version with POST "
                "/admin/tenants/{tenant}/aliases/{alias}/promote (it loads, probes and swaps live)",
                param="target",
            )
        tenant = await self.tenant(tenant_ref)
        return await self.store.set_alias(tenant.id, name, target)
