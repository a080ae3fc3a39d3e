"""`loopgate adapter ...`: adapter versions and live swaps, through the running gateway's admin API
(swaps must happen in the process that routes the traffic)."""

from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import httpx
import msgspec

from store.settings import Settings


def add_adapter_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ad = sub.add_parser(
        "adapter", aliases=["adapters"], help="adapter versions and live swaps (via the admin API)"
    )
    ad.add_argument("--url", default=None, help="gateway URL (default: http://HOST:PORT)")
    acts = ad.add_subparsers(required=True, metavar="ACTION")
    reg = acts.add_parser("register", help="upload a peft adapter folder as a new version")
    reg.add_argument("tenant")
    reg.add_argument("folder", type=Path)
    reg.add_argument("--name", default="adapter")
    reg.set_defaults(func=_http_cmd(_adapter_register))
    for action, help_text in (("list", "list a tenant's versions"),):
        p = acts.add_parser(action, help=help_text)
        p.add_argument("tenant")
        p.set_defaults(func=_http_cmd(_adapter_list))
    for action, help_text in (
        ("show", "a version with its lineage and placements"),
        ("retire", "retire a version that no alias serves"),
        ("delete", "delete a version that no alias serves"),
    ):
        p = acts.add_parser(action, help=help_text)
        p.add_argument("tenant")
        p.add_argument("version")
        p.set_defaults(func=_http_cmd(_adapter_version_op), action=action)
    pro = acts.add_parser("promote", help="swap an alias to a version live (load, probe, flip)")
    pro.add_argument("tenant")
    pro.add_argument("alias")
    pro.add_argument("version")
    pro.add_argument("--reason", default=None)
    pro.add_argument(
        "--require-change",
        action="store_true",
        help="refuse if the adapter answers the probe exactly like the base",
    )
    pro.add_argument(
        "--force",
        action="store_true",
        help="skip the eval gate (needs --reason; recorded as a forced promotion)",
    )
    pro.set_defaults(func=_http_cmd(_adapter_promote))
    rb = acts.add_parser("rollback", help="return an alias to its previous version")
    rb.add_argument("tenant")
    rb.add_argument("alias")
    rb.add_argument("--reason", default=None)
    rb.set_defaults(func=_http_cmd(_adapter_rollback))
    rt = acts.add_parser(
        "retrain",
        help="retrain an alias on its cleaned data (erased and opted-out data left out); the new "
        "version goes through a rollout (prints the loop run)",
    )
    rt.add_argument("tenant")
    rt.add_argument("alias")
    rt.add_argument("--version", default=None, help="the version to replace (default: live)")
    rt.add_argument("--reason", default=None)
    rt.set_defaults(func=_http_cmd(_adapter_retrain))


def _http_cmd(
    fn: Callable[[httpx.Client, argparse.Namespace], httpx.Response],
) -> Callable[[Settings, argparse.Namespace], int]:
    def run(settings: Settings, args: argparse.Namespace) -> int:
        key = settings.admin_key
        key_file = settings.data_dir / "admin_key"
        if not key and key_file.exists():
            key = key_file.read_text().strip()
        if not key:
            print("error: no admin key: set LOOPGATE_ADMIN_KEY", file=sys.stderr)
            return 2
        headers = {
            "Authorization": f"Bearer {key}",
            "x-loopgate-actor": f"cli:{os.environ.get('USER', '?')}",
        }
        return http_call(args.url or f"http://{settings.host}:{settings.port}", headers, fn, args)

    return run


def http_call(
    url: str,
    headers: dict[str, str],
    fn: Callable[[httpx.Client, argparse.Namespace], httpx.Response],
    args: argparse.Namespace,
) -> int:
    """Run one API call; print the JSON answer, or the error message (exit 1)."""
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=900) as client:
            resp = fn(client, args)
    except httpx.HTTPError as exc:
        print(f"error: cannot reach the gateway at {url}: {exc}", file=sys.stderr)
        return 1
    if resp.status_code >= 400:
        message = resp.json().get("error", {}).get("message", resp.text) if resp.content else ""
        print(f"error ({resp.status_code}): {message}", file=sys.stderr)
        return 1
    print(msgspec.json.format(resp.content).decode() if resp.content else "ok")
    return 0


def _adapter_register(client: httpx.Client, args: argparse.Namespace) -> httpx.Response:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for file in sorted(Path(args.folder).iterdir()):
            if file.is_file() and not file.is_symlink():
                archive.add(file, arcname=file.name)
    return client.post(
        f"/admin/tenants/{args.tenant}/adapters",
        params={"name": args.name},
        content=buffer.getvalue(),
        headers={"content-type": "application/gzip"},
    )


def _adapter_list(client: httpx.Client, args: argparse.Namespace) -> httpx.Response:
    return client.get(f"/admin/tenants/{args.tenant}/adapters")


def _adapter_version_op(client: httpx.Client, args: argparse.Namespace) -> httpx.Response:
    path = f"/admin/tenants/{args.tenant}/adapters/{args.version}"
    if args.action == "show":
        return client.get(path)
    if args.action == "retire":
        return client.post(path + "/retire")
    return client.delete(path)


def _adapter_promote(client: httpx.Client, args: argparse.Namespace) -> httpx.Response:
    body = {
        "version": args.version,
        "reason": args.reason,
        "require_change": args.require_change,
        "force": args.force,
    }
    return client.post(f"/admin/tenants/{args.tenant}/aliases/{args.alias}/promote", json=body)


def _adapter_rollback(client: httpx.Client, args: argparse.Namespace) -> httpx.Response:
    return client.post(
        f"/admin/tenants/{args.tenant}/aliases/{args.alias}/rollback", json={"reason": args.reason}
    )


def _adapter_retrain(client: httpx.Client, args: argparse.Namespace) -> httpx.Response:
    body = {"version": args.version, "reason": args.reason}
    return client.post(f"/admin/tenants/{args.tenant}/aliases/{args.alias}/retrain", json=body)
