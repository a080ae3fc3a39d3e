"""The adapter registry: immutable, content-addressed versions on disk plus their lineage.

A version's files live at `<adapters_dir>/<tenant id>/<content hash>/`, written once through a
staging folder and an atomic rename, then made read-only. Importing the same bytes twice for a
tenant returns the existing version. Every path into the registry goes through validation.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import re
import secrets
import shutil
import time
from pathlib import Path

from adapters.validation import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    AdapterManifest,
    BaseModelInfo,
    Limits,
    unpack_archive,
    validate_folder,
)
from store import AdapterStatus, AdapterVersion, Store, Tenant
from store.errors import Conflict, InvalidRequest, NotFound, Unprocessable

VERSION_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # fullmatch: no "\n"
ALIAS_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:-]{0,127}")


def check_alias_name(name: str) -> None:
    """Alias names are matched exactly (case and whitespace count), so refuse ambiguous ones."""
    if not ALIAS_NAME_RE.fullmatch(name):
        raise InvalidRequest(
            "alias must be 1-128 chars of letters, digits and . _ @ : - "
            "starting with a letter or digit",
            param="name",
        )


class Transition(enum.Enum):
    PROMOTE = "promote"
    REPLACE = "replace"  # another version took over its last alias
    RETIRE = "retire"


_ALLOWED: dict[tuple[AdapterStatus, Transition], AdapterStatus] = {
    ("candidate", Transition.PROMOTE): "live",
    ("retired", Transition.PROMOTE): "live",
    ("live", Transition.PROMOTE): "live",  # serving a second alias
    ("live", Transition.REPLACE): "retired",
    ("candidate", Transition.RETIRE): "retired",
    ("live", Transition.RETIRE): "retired",
}


def next_status(current: AdapterStatus, transition: Transition) -> AdapterStatus:
    """The lifecycle as a pure function; an illegal move is a 409."""
    try:
        return _ALLOWED[(current, transition)]
    except KeyError:
        raise Conflict(f"a {current} adapter version cannot {transition.value}") from None


def version_id(tenant_id: str, content: str) -> str:
    return "av-" + hashlib.sha256(f"{tenant_id}:{content}".encode()).hexdigest()[:20]


class Registry:
    def __init__(self, store: Store, root: Path, base: BaseModelInfo, limits: Limits):
        self.store = store
        self.root = root
        self.base = base
        self.limits = limits

    async def import_archive(
        self,
        tenant: Tenant,
        data: bytes,
        *,
        name: str,
        created_by: str,
        expected_sha256: str | None = None,
        dataset_id: str | None = None,
    ) -> AdapterVersion:
        if len(data) > self.limits.max_bytes:
            raise Unprocessable(
                f"the upload is {len(data)} bytes; the limit is {self.limits.max_bytes}"
            )
        if expected_sha256 is not None:
            actual = hashlib.sha256(data).hexdigest()
            if actual != expected_sha256.lower():
                raise Unprocessable(
                    f"the upload's SHA-256 is {actual}, not the expected {expected_sha256}",
                    param="sha256",
                )
        staging = self._staging()
        try:
            await asyncio.to_thread(unpack_archive, data, staging, self.limits.max_bytes)
            return await self._finalize(tenant, staging, name, created_by, dataset_id)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    async def import_folder(
        self,
        tenant: Tenant,
        source: Path,
        *,
        name: str,
        created_by: str,
        dataset_id: str | None = None,
    ) -> AdapterVersion:
        """Import a peft output folder (validated in place, then copied and validated again)."""
        if not await asyncio.to_thread(source.is_dir):
            raise InvalidRequest(f"{source} is not a folder", param="path")
        await asyncio.to_thread(validate_folder, source, self.base, self.limits)
        staging = self._staging()
        try:
            staging.mkdir(parents=True)
            for file in (CONFIG_FILE, WEIGHTS_FILE):
                await asyncio.to_thread(shutil.copyfile, source / file, staging / file)
            return await self._finalize(tenant, staging, name, created_by, dataset_id)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _staging(self) -> Path:
        return self.root / ".staging" / secrets.token_hex(8)

    async def _finalize(
        self, tenant: Tenant, staging: Path, name: str, created_by: str, dataset_id: str | None
    ) -> AdapterVersion:
        if not VERSION_NAME_RE.fullmatch(name):
            raise InvalidRequest(
                "adapter name must be 1-64 chars of letters, digits, . _ -", param="name"
            )
        manifest: AdapterManifest = await asyncio.to_thread(
            validate_folder, staging, self.base, self.limits
        )
        existing = await self.store.find_adapter(tenant.id, manifest.content_hash)
        if existing is not None:
            return existing
        dest = self.root / tenant.id / manifest.content_hash
        await asyncio.to_thread(_install, staging, dest)
        version = AdapterVersion(
            id=version_id(tenant.id, manifest.content_hash),
            tenant_id=tenant.id,
            name=name,
            content_hash=manifest.content_hash,
            base_model=self.base.name,
            base_hash=self.base.weights_hash,
            rank=manifest.rank,
            alpha=manifest.alpha,
            target_modules=manifest.target_modules,
            created_by=created_by,
            status="candidate",
            path=str(dest),
            size_bytes=manifest.size_bytes,
            created_at=time.time(),
            dataset_id=dataset_id,
        )
        await self.store.add_adapter(version)
        # The store marks it `trained_on_erased` when its dataset is already tainted.
        return await self.store.get_adapter(version.id) or version

    async def get(self, tenant: Tenant, version_ref: str) -> AdapterVersion:
        version = await self.store.get_adapter(version_ref)
        if version is None or version.tenant_id != tenant.id:
            raise NotFound(f"no adapter version '{version_ref}' for this tenant", param="version")
        return version

    async def delete(self, tenant: Tenant, version_ref: str) -> AdapterVersion:
        version = await self.get(tenant, version_ref)
        if version.status == "live" or await self.store.aliases_to(version.id):
            raise Conflict("the version is live (an alias points at it); retire it first")
        await self.store.delete_adapter(version.id)
        await asyncio.to_thread(shutil.rmtree, version.path, True)
        return version


def _install(staging: Path, dest: Path) -> None:
    """Move a validated staging folder into place, read-only (immutable from here on)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():  # identical content already installed (same hash): keep it
        return
    for file in staging.iterdir():
        file.chmod(0o444)
    staging.rename(dest)
    dest.chmod(0o555)
