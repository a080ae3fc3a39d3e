"""`loopgate judge ...`: a tenant's LLM judge through the running gateway's admin API (the API
key is read from an environment variable, never from the command line, where `ps` shows it)."""

from __future__ import annotations

import argparse
import os

import httpx

from gateway.cli_adapters import _http_cmd as admin_cmd


def add_judge_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    judge = sub.add_parser("judge", help="a tenant's LLM judge for evals (via the admin API)")
    judge.add_argument("--url", default=None, help="gateway URL (default: http://HOST:PORT)")
    acts = judge.add_subparsers(required=True, metavar="ACTION")
    use = acts.add_parser("set", help="judge with one of the tenant's aliases, or an endpoint")
    use.add_argument("tenant")
    which = use.add_mutually_exclusive_group(required=True)
    which.add_argument("--alias", help="one of the tenant's models (served like its traffic)")
    which.add_argument("--base-url", help="an OpenAI-compatible endpoint, e.g. .../v1")
    use.add_argument("--model", help="the external endpoint's model")
    use.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="the environment variable holding the external endpoint's API key",
    )
    use.add_argument("--max-tokens", type=int, default=256)
    use.add_argument("--timeout-s", type=float, default=60.0)
    use.add_argument("--max-concurrent", type=int, default=4, help="the judge's own limit")
    use.add_argument("--requests-per-minute", type=int, default=None)
    use.set_defaults(func=admin_cmd(_set))
    for action, help_text in (("show", "the judge (its key masked)"), ("delete", "remove it")):
        p = acts.add_parser(action, help=help_text)
        p.add_argument("tenant")
        p.set_defaults(func=admin_cmd(_show if action == "show" else _delete))


def set_body(args: argparse.Namespace) -> dict[str, object]:
    """The PUT body from the arguments (the key from its environment variable)."""
    limits = {
        "max_concurrent": args.max_concurrent,
        "requests_per_minute": args.requests_per_minute,
    }
    body: dict[str, object] = {
        "max_tokens": args.max_tokens,
        "timeout_s": args.timeout_s,
        "limits": limits,
    }
    if args.alias is not None:
        return {**body, "alias": args.alias}
    body |= {"base_url": args.base_url, "model": args.model}
    if args.api_key_env:
        key = os.environ.get(args.api_key_env, "")
        if not key:
            raise SystemExit(f"error: the environment variable {args.api_key_env} is not set")
        body["api_key"] = key
    return body


def _set(client: httpx.Client, args: argparse.Namespace) -> httpx.Response:
    return client.put(f"/admin/tenants/{args.tenant}/judge", json=set_body(args))


def _show(client: httpx.Client, args: argparse.Namespace) -> httpx.Response:
    return client.get(f"/admin/tenants/{args.tenant}/judge")


def _delete(client: httpx.Client, args: argparse.Namespace) -> httpx.Response:
    return client.delete(f"/admin/tenants/{args.tenant}/judge")
