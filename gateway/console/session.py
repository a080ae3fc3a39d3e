"""Console sign-in: signed session cookies (HttpOnly, SameSite=Strict, expiring), CSRF tokens on
every form, and who the signed-in person is (`ConsoleUser`).

A session is an HMAC-SHA256-signed cookie naming its role (admin, or one tenant read-only), the
person's name for the audit trail, a CSRF token and an expiry. Signing out deletes the cookie
and records the session as ended in this gateway process until it would have expired. With
`loopgate serve --workers N` every console request is relayed to the primary worker
(gateway.workers), so that one record serves all workers; separate gateways would need it in
the store.
The key is the setting `console_secret`, or a random one kept in `<data_dir>/console_secret`
(0600); processes that share a store must share it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from typing import Literal

import msgspec

from store.errors import PermissionDenied

COOKIE = "loopgate_console"
LOGIN_COOKIE = "loopgate_console_login"  # the sign-in form's CSRF token (double submit)
SECRET_FILE = "console_secret"  # noqa: S105 - the file's name, not a secret
Role = Literal["admin", "tenant"]


class ConsoleUser(msgspec.Struct, frozen=True):
    """Who is signed in: an admin, or one tenant (read-only)."""

    sid: str
    role: Role
    name: str
    csrf: str
    expires_at: float
    tenant_id: str | None = None
    tenant_name: str | None = None

    @property
    def actor(self) -> str:
        """How the audit trail names what this person does through the console."""
        return f"console:{self.name}"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class SignInRequired(Exception):
    """No valid session: pages redirect to the sign-in form, other requests get a 401."""


class Sessions:
    """Issues and checks signed session cookies; remembers sessions that signed out."""

    def __init__(self, secret: str, ttl_s: float):
        if not secret:
            raise ValueError("the console secret must not be empty")
        self._key = hashlib.sha256(b"loopgate-console\0" + secret.encode()).digest()
        self.ttl_s = ttl_s
        self._ended: dict[str, float] = {}  # sid -> when it would have expired

    def issue(
        self,
        role: Role,
        name: str,
        tenant_id: str | None = None,
        tenant_name: str | None = None,
    ) -> tuple[ConsoleUser, str]:
        user = ConsoleUser(
            sid=secrets.token_urlsafe(16),
            role=role,
            name=name,
            csrf=secrets.token_urlsafe(24),
            expires_at=time.time() + self.ttl_s,
            tenant_id=tenant_id,
            tenant_name=tenant_name,
        )
        return user, self._sign(msgspec.json.encode(user))

    def read(self, cookie: str | None) -> ConsoleUser:
        """The session a cookie carries; SignInRequired when absent, forged, expired or ended."""
        if not cookie or "." not in cookie:
            raise SignInRequired
        body, _, mac = cookie.rpartition(".")
        if not hmac.compare_digest(mac, self._mac(body)):
            raise SignInRequired
        try:
            user = msgspec.json.decode(_unb64(body), type=ConsoleUser)
        except (msgspec.DecodeError, ValueError):
            raise SignInRequired from None
        if user.expires_at < time.time() or user.sid in self._ended:
            raise SignInRequired
        return user

    def end(self, user: ConsoleUser) -> None:
        now = time.time()
        self._ended = {sid: at for sid, at in self._ended.items() if at > now}
        self._ended[user.sid] = user.expires_at

    def login_token(self) -> str:
        return secrets.token_urlsafe(24)

    def _sign(self, payload: bytes) -> str:
        body = base64.urlsafe_b64encode(payload).decode().rstrip("=")
        return f"{body}.{self._mac(body)}"

    def _mac(self, body: str) -> str:
        return hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()


def _unb64(body: str) -> bytes:
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))


def check_csrf(user: ConsoleUser, sent: str | None) -> None:
    """Every form a signed-in person posts carries the session's CSRF token."""
    if not sent or not hmac.compare_digest(sent, user.csrf):
        raise PermissionDenied("the form's CSRF token is missing or stale: reload the page")


def require_admin(user: ConsoleUser) -> None:
    if not user.is_admin:
        raise PermissionDenied("a tenant's console view is read-only; sign in as an admin")


def visible_tenant(user: ConsoleUser, tenant_id: str) -> bool:
    """Whether this person may see a tenant's objects (admins see every tenant)."""
    return user.is_admin or user.tenant_id == tenant_id
