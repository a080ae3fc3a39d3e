"""The `loopgate` command: run the stack, prepare the model, manage tenants, keys and aliases."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import msgspec

from gateway.cache_salt import secret_file
from gateway.cli_adapters import add_adapter_commands
from gateway.cli_finetuning import add_finetuning_commands
from gateway.cli_judges import add_judge_commands
from gateway.logs import configure_logging
from gateway.tenancy import Admin
from store import AliasTarget, Completion, Feedback, open_store
from store.errors import LoopgateError
from store.private_files import owner_only
from store.records import tool_calls_of
from store.settings import ConfigError, Settings, describe

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger("loopgate")

DEMO_TENANT = "demo"
# The long-running commands: everything they and their children write is owner-only
# (store.private_files).
PRIVATE_COMMANDS = frozenset({"up", "serve", "worker"})


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = (
            Settings.from_env(
                host=args.host, port=args.port, workers=getattr(args, "workers", None)
            )
            if hasattr(args, "host")
            else Settings.from_env()
        )
        configure_logging(settings.log_level, settings.log_format)
        if args.command in PRIVATE_COMMANDS:
            owner_only(settings.data_dir)
        result: int = args.func(settings, args)
        return result
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except LoopgateError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loopgate", description=__doc__)
    sub = p.add_subparsers(required=True, metavar="COMMAND", dest="command")

    up = sub.add_parser(
        "up", help="prepare the model, start engine + gateway, create a demo tenant"
    )
    serve = sub.add_parser(
        "serve", help="start the gateway (and the embedded engine unless external)"
    )
    for cmd in (up, serve):
        cmd.add_argument("--host", default=None, help="listen address (LOOPGATE_HOST)")
        cmd.add_argument("--port", type=int, default=None, help="listen port (LOOPGATE_PORT)")
    up.add_argument("--no-demo", action="store_true", help="do not create the demo tenant")
    up.set_defaults(func=cmd_up)
    serve.add_argument(
        "--workers", type=int, default=None, help="gateway processes on the port (LOOPGATE_WORKERS)"
    )
    serve.set_defaults(func=cmd_serve)

    model = sub.add_parser("model", help="the base model").add_subparsers(
        required=True, metavar="ACTION"
    )
    prep = model.add_parser("prepare", help="convert the bundled GGUF into a verified HF folder")
    prep.add_argument("--force", action="store_true", help="prepare again even if verified")
    prep.set_defaults(func=cmd_model_prepare)
    model.add_parser("verify", help="verify the prepared model").set_defaults(func=cmd_model_verify)

    tenant = sub.add_parser("tenant", help="tenants").add_subparsers(
        required=True, metavar="ACTION"
    )
    tc = tenant.add_parser("create", help="create a tenant (with the default base alias)")
    tc.add_argument("name")
    tc.set_defaults(func=_store_cmd(_tenant_create))
    tenant.add_parser("list", help="list tenants").set_defaults(func=_store_cmd(_tenant_list))

    key = sub.add_parser("key", help="API keys").add_subparsers(required=True, metavar="ACTION")
    kc = key.add_parser("create", help="issue a key for a tenant (printed once)")
    kc.add_argument("tenant")
    kc.add_argument("--name", default="default")
    kc.set_defaults(func=_store_cmd(_key_create))
    kl = key.add_parser("list", help="list a tenant's keys (never the secrets)")
    kl.add_argument("tenant")
    kl.set_defaults(func=_store_cmd(_key_list))
    kr = key.add_parser("revoke", help="revoke a key by id")
    kr.add_argument("key_id")
    kr.set_defaults(func=_store_cmd(_key_revoke))

    alias = sub.add_parser("alias", help="model aliases").add_subparsers(
        required=True, metavar="ACTION"
    )
    al_set = alias.add_parser("set", help="point a tenant's alias at the base model")
    al_set.add_argument("tenant")
    al_set.add_argument("name")
    al_set.set_defaults(func=_store_cmd(_alias_set))
    al_list = alias.add_parser("list", help="list a tenant's aliases")
    al_list.add_argument("tenant")
    al_list.set_defaults(func=_store_cmd(_alias_list))
    al_del = alias.add_parser("delete", help="delete a tenant's alias")
    al_del.add_argument("tenant")
    al_del.add_argument("name")
    al_del.set_defaults(func=_store_cmd(_alias_delete))

    add_adapter_commands(sub)
    add_finetuning_commands(sub)
    add_judge_commands(sub)
    _add_data_commands(sub)
    return p


def _add_data_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    exp = sub.add_parser("export", help="a tenant's captured traffic + feedback as chat JSONL")
    exp.add_argument("tenant")
    exp.add_argument("--out", type=Path, default=None, help="file to write (default: stdout)")
    exp.set_defaults(func=cmd_export)

    era = sub.add_parser(
        "erase",
        help="erase a tenant's captured traffic (or one end user's) and what was derived from it: "
        "snapshot files rewritten, eval answers and reports removed, adapters marked",
    )
    era.add_argument("tenant")
    era.add_argument("--end-user", default=None, help="only this end user's data (`user`)")
    era.set_defaults(func=cmd_erase)

    cfg = sub.add_parser("config", help="print the configuration reference")
    cfg.add_argument("--markdown", action="store_true", help="as a Markdown table")
    cfg.set_defaults(func=cmd_config)


# --- running the stack --------------------------------------------------------------------


def cmd_serve(settings: Settings, _: argparse.Namespace) -> int:
    if settings.workers > 1:
        from gateway import workers

        return workers.serve(settings, _listen(settings))
    _check_port_free(settings)
    on_uvloop(_serve(settings, banner=None))
    return 0


def _listen(settings: Settings) -> list[socket.socket]:
    """One listening socket per worker, all on the gateway's port (bound here, before any worker).

    SO_REUSEPORT: the kernel spreads new connections over the sockets by a hash of the client's
    address and port. On one shared socket the worker that woke first took every connection a
    burst of clients opened (measured: one worker at 0.97 of a core, the other at 0.01, 64
    keep-alive connections). The parent keeps every socket, so a restarted worker accepts the
    connections its socket queued while it was down.
    """
    _check_port_free(settings)
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    socks = []
    for _ in range(settings.workers):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((settings.host, settings.port))
        sock.listen(2048)
        sock.set_inheritable(True)
        socks.append(sock)
    return socks


def _check_port_free(settings: Settings) -> None:
    """Fail before starting an engine when the gateway's address is taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((settings.host, settings.port))
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {settings.host}:{settings.port} ({exc.strerror}); "
                "set LOOPGATE_PORT or --port to a free port"
            ) from None


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    from replicas.base_model import prepare_in_child

    _check_port_free(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if not settings.admin_key:
        settings = settings.with_overrides(
            admin_key=secret_file(settings.data_dir / "admin_key", "lg-admin-")
        )
    print(f"loopgate: data in {settings.data_dir}; preparing the base model...", flush=True)
    prepare_in_child(settings)  # in a child: the serving process never imports torch
    demo_key = None if args.no_demo else asyncio.run(_ensure_demo(settings))
    on_uvloop(_serve(settings, banner=lambda: _banner(settings, demo_key)))
    return 0


def server_config(settings: Settings, app: Any = None) -> uvicorn.Config:
    """The HTTP server `loopgate serve` runs (the gateway app on uvloop + httptools); `app`:
    a worker's (gateway.workers), instead of the gateway app alone."""
    import uvicorn

    from gateway.app import create_app
    from gateway.relay import ServerSend

    return uvicorn.Config(
        ServerSend(app if app is not None else create_app(settings)),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_level=settings.log_level.lower(),
        log_config=None,  # uvicorn's records go through our handler (text or JSON)
        access_log=False,
        timeout_keep_alive=settings.keepalive_timeout_s,
        timeout_graceful_shutdown=30,
    )


def on_uvloop(main: Coroutine[object, object, None]) -> None:
    """Run the server on uvloop. (uvicorn's `loop="uvloop"` only applies when uvicorn creates
    the loop itself; a server awaited inside `asyncio.run` ran on asyncio's own loop, whose
    Python transports cost the relay ~2x the CPU per chunk.)"""
    import uvloop

    uvloop.run(main)


async def _serve(settings: Settings, banner: Callable[[], str] | None) -> None:
    from gateway.heap import Server

    server = Server(server_config(settings))
    # uvicorn drains on SIGTERM, then re-raises the signal once it has restored the previous
    # handler; a no-op handler makes a drained SIGTERM shutdown exit 0 instead of -15.
    signal.signal(signal.SIGTERM, lambda *_: None)
    if banner is None:
        await server.serve()
        return
    waiter = asyncio.create_task(_print_when_ready(settings, banner))
    try:
        await server.serve()
    finally:
        waiter.cancel()


async def _print_when_ready(settings: Settings, banner: Callable[[], str]) -> None:
    url = f"http://{settings.host}:{settings.port}/ready"
    async with httpx.AsyncClient(timeout=2.0) as client:
        while True:
            await asyncio.sleep(1.0)
            try:
                if (await client.get(url)).status_code == 200:
                    break
            except httpx.HTTPError:
                continue
    print(banner(), flush=True)


async def _ensure_demo(settings: Settings) -> str:
    """The demo tenant's key: created on first run and kept in <data_dir>/demo_key (0600)."""
    key_file = settings.data_dir / "demo_key"
    store = open_store(settings.store_url)
    await store.open()
    try:
        admin = Admin(store, settings.default_alias)
        if await store.get_tenant(DEMO_TENANT) is None:
            await admin.create_tenant(DEMO_TENANT)
        if key_file.exists():
            return key_file.read_text().strip()
        issued = await admin.issue_key(DEMO_TENANT, "demo")
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(issued.key + "\n")
        return issued.key
    finally:
        await store.close()


def _banner(settings: Settings, demo_key: str | None) -> str:
    base = f"http://{settings.host}:{settings.port}/v1"
    lines = [
        "",
        "=" * 72,
        f"loopgate is ready at {base}",
        f"admin key: {settings.data_dir / 'admin_key'}",
    ]
    if settings.console_enabled:
        console = f"http://{settings.host}:{settings.port}/console"
        lines.append(f"console: {console} (sign in with the admin key)")
    if demo_key:
        model = settings.default_alias or "<alias>"
        lines += [
            f"demo tenant '{DEMO_TENANT}' API key: {demo_key}",
            "",
            "try it:",
            f"  curl {base}/chat/completions -H 'Authorization: Bearer {demo_key}' \\",
            "    -H 'Content-Type: application/json' \\",
            f'    -d \'{{"model": "{model}", "messages": '
            '[{"role": "user", "content": "What is the capital of France?"}], "temperature": 0}\'',
            "",
            '  python -c "from openai import OpenAI; '
            f"c = OpenAI(base_url='{base}', api_key='{demo_key}'); "
            f"print(c.chat.completions.create(model='{model}', "
            "messages=[{'role': 'user', 'content': 'Hi!'}]).choices[0].message.content)\"",
        ]
    lines += ["Ctrl-C stops everything.", "=" * 72]
    return "\n".join(lines)


# --- model --------------------------------------------------------------------------------


def cmd_model_prepare(settings: Settings, args: argparse.Namespace) -> int:
    from replicas.base_model import (
        bundled_dir,
        nf4_dir,
        prepare_bundled,
        prepare_nf4,
        resolve_model,
    )
    from replicas.supervisor import served_dtype

    if args.force and settings.base_model == "bundled":
        prepare_bundled(bundled_dir(settings), force=True)
    if args.force and settings.engine_weights == "nf4":
        source = resolve_model(settings.with_overrides(engine_weights="full"))
        dtype = served_dtype(settings)
        prepare_nf4(source, nf4_dir(settings, source, dtype), dtype=dtype, force=True)
    print(resolve_model(settings))  # prepares what is missing, verifies what is there
    return 0


def cmd_model_verify(settings: Settings, _: argparse.Namespace) -> int:
    from replicas.base_model import ModelError, resolve_model

    try:
        print(f"ok: {resolve_model(settings, prepare=False)}")
    except ModelError as exc:
        print(f"not verified: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_export(settings: Settings, args: argparse.Namespace) -> int:
    """One JSON object per line: the conversation (the correction, if any, as the answer)."""

    async def rows() -> list[bytes]:
        store = open_store(settings.store_url)
        await store.open()
        try:
            tenant = await Admin(store, settings.default_alias).tenant(args.tenant)
            return [export_line(c, f) for c, f in await store.export_completions(tenant.id)]
        finally:
            await store.close()

    lines = asyncio.run(rows())
    out = args.out.open("wb") if args.out else sys.stdout.buffer
    try:
        for line in lines:
            out.write(line + b"\n")
    finally:
        if args.out:
            out.close()
    print(f"exported {len(lines)} conversations", file=sys.stderr)
    return 0


def cmd_erase(settings: Settings, args: argparse.Namespace) -> int:
    """The admin API's erase, run on the store and files here (gateway.erasure)."""
    from gateway.erasure import DataErasure

    async def erase() -> dict[str, object]:
        store = open_store(settings.store_url)
        await store.open()
        try:
            tenant = await Admin(store, settings.default_alias).tenant(args.tenant)
            roots = (settings.training_path / "datasets", settings.data_dir / "evals")
            actor = f"cli:{os.environ.get('USER', '?')}"
            done = await DataErasure(store, *roots).erase(tenant.id, args.end_user, actor)
            return done.to_json()
        finally:
            await store.close()

    print(msgspec.json.format(msgspec.json.encode(asyncio.run(erase()))).decode())
    return 0


def export_line(c: Completion, feedback: list[Feedback]) -> bytes:
    request = json.loads(c.request or "{}")
    messages = list(request.get("messages") or [{"role": "user", "content": request.get("prompt")}])
    corrected = next((f.correction for f in reversed(feedback) if f.correction), None)
    answer: dict[str, object] = {"role": "assistant", "content": corrected or c.response}
    calls = tool_calls_of(c.tool_calls)
    if calls and not corrected:  # the model's answer called tools (a correction is text)
        answer["tool_calls"] = msgspec.to_builtins(calls)
        answer["content"] = c.response or None
    messages.append(answer)
    record = {
        "messages": messages,
        **({"tools": request["tools"]} if request.get("tools") else {}),
        "completion_id": c.id,
        "alias": c.alias,
        "adapter_version": c.adapter_version,
        "end_user": c.end_user,
        "do_not_train": c.do_not_train,
        "metadata": c.metadata,
        "feedback": [msgspec.to_builtins(f) for f in feedback],
    }
    return msgspec.json.encode(record)


def cmd_config(_: Settings, args: argparse.Namespace) -> int:
    if args.markdown:
        print("| variable | default | meaning |\n|---|---|---|")
    for name, default, help_text in describe():
        if args.markdown:
            print(f"| `{name}` | `{default}` | {help_text} |")
        else:
            print(f"{name:<40} {default:<22} {help_text}")
    return 0


# --- tenants, keys, aliases (straight to the store) -------------------------------------------


def _store_cmd(
    fn: Callable[[Admin, argparse.Namespace], Awaitable[object]],
) -> Callable[[Settings, argparse.Namespace], int]:
    def run(settings: Settings, args: argparse.Namespace) -> int:
        async def go() -> object:
            store = open_store(settings.store_url)
            await store.open()
            try:
                return await fn(Admin(store, settings.default_alias), args)
            finally:
                await store.close()

        result = asyncio.run(go())
        print(msgspec.json.format(msgspec.json.encode(result)).decode())
        return 0

    return run


async def _tenant_create(admin: Admin, args: argparse.Namespace) -> object:
    return await admin.create_tenant(args.name)


async def _tenant_list(admin: Admin, _: argparse.Namespace) -> object:
    return await admin.store.list_tenants()


async def _key_create(admin: Admin, args: argparse.Namespace) -> object:
    return await admin.issue_key(args.tenant, args.name)


async def _key_list(admin: Admin, args: argparse.Namespace) -> object:
    tenant = await admin.tenant(args.tenant)
    return [
        {"id": k.id, "name": k.name, "created_at": k.created_at, "revoked_at": k.revoked_at}
        for k in await admin.store.list_keys(tenant.id)
    ]


async def _key_revoke(admin: Admin, args: argparse.Namespace) -> object:
    key = await admin.store.revoke_key(args.key_id)
    return {"id": key.id, "revoked_at": key.revoked_at}


async def _alias_set(admin: Admin, args: argparse.Namespace) -> object:
    return await admin.set_alias(args.tenant, args.name, AliasTarget())


async def _alias_list(admin: Admin, args: argparse.Namespace) -> object:
    tenant = await admin.tenant(args.tenant)
    return await admin.store.list_aliases(tenant.id)


async def _alias_delete(admin: Admin, args: argparse.Namespace) -> object:
    tenant = await admin.tenant(args.tenant)
    await admin.store.delete_alias(tenant.id, args.name)
    return {"deleted": args.name}


if __name__ == "__main__":
    sys.exit(main())
