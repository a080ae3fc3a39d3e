"""`loopgate worker` and `loopgate finetune ...`: training workers, and files, datasets and jobs
through the running gateway's API with a tenant key (LOOPGATE_API_KEY or --key)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from gateway.cli_adapters import http_call
from store.settings import Settings

Call = Callable[[httpx.Client, argparse.Namespace], httpx.Response]
TERMINAL = ("succeeded", "failed", "cancelled")


def add_finetuning_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    worker = sub.add_parser(
        "worker", help="run a fine-tuning worker (claims queued jobs from the store)"
    )
    worker.set_defaults(func=cmd_worker)
    loop = sub.add_parser(
        "loop", help="dataset → QLoRA → eval → gate → promote for a tenant alias (admin API)"
    )
    loop.add_argument("tenant")
    loop.add_argument("--alias", required=True, help="the alias to improve")
    loop.add_argument(
        "--base", default=None, help="alias whose base model to train (default: --alias)"
    )
    loop.add_argument("--suffix", default="loop")
    loop.add_argument("--epochs", type=int, default=None)
    loop.add_argument("--lr-multiplier", type=float, default=None)
    loop.add_argument("--no-promote", action="store_true", help="stop after the gate's verdict")
    loop.add_argument(
        "--allow-flagged",
        action="store_true",
        help="after a review stop: train without the examples the poisoning guards flagged",
    )
    loop.add_argument(
        "--keep-flagged",
        action="store_true",
        help="after a review stop: the flagged examples were reviewed and are fine; keep them",
    )
    loop.add_argument("--reason", default=None, help="why (recorded; needed by the two above)")
    loop.add_argument("--url", default=None, help="gateway URL (default: http://HOST:PORT)")
    loop.set_defaults(func=cmd_loop)
    ft = sub.add_parser("finetune", help="files, datasets and fine-tuning jobs (tenant API)")
    ft.add_argument("--url", default=None, help="gateway URL (default: http://HOST:PORT)")
    ft.add_argument("--key", default=None, help="tenant API key (default: $LOOPGATE_API_KEY)")
    acts = ft.add_subparsers(required=True, metavar="ACTION")
    up = acts.add_parser("upload", help="upload a chat JSONL training file (purpose fine-tune)")
    up.add_argument("file", type=Path)
    up.set_defaults(func=_tenant_cmd(_upload))
    ds = acts.add_parser("dataset", help="snapshot the tenant's captured traffic + feedback")
    ds.add_argument("--include-unrated", action="store_true", default=None)
    ds.add_argument("--max-author-share", type=float, default=None)
    ds.add_argument("--eval-fraction", type=float, default=None)
    ds.set_defaults(func=_tenant_cmd(_dataset))
    cr = acts.add_parser("create", help="create a fine-tuning job")
    cr.add_argument("--model", required=True, help="the alias to fine-tune (its base model)")
    cr.add_argument("--training-file", required=True, help="a file-... or ds-... id")
    cr.add_argument("--suffix", default=None)
    cr.add_argument("--epochs", type=int, default=None)
    cr.add_argument("--lr-multiplier", type=float, default=None)
    cr.add_argument("--batch-size", type=int, default=None)
    cr.add_argument("--seed", type=int, default=None)
    cr.add_argument("--wait", action="store_true", help="follow the job's events until it ends")
    cr.set_defaults(func=_create)
    acts.add_parser("list", help="list jobs").set_defaults(func=_tenant_cmd(_list))
    for action, help_text in (
        ("show", "one job"),
        ("events", "a job's events, newest first"),
        ("cancel", "cancel a queued or running job"),
    ):
        p = acts.add_parser(action, help=help_text)
        p.add_argument("job")
        p.set_defaults(func=_tenant_cmd(_job_op), action=action)


def cmd_worker(settings: Settings, _: argparse.Namespace) -> int:
    from training.worker import serve  # torch and friends load only for this command

    return asyncio.run(serve(settings))


def _base(settings: Settings, args: argparse.Namespace) -> tuple[str, dict[str, str]] | None:
    key = args.key or os.environ.get("LOOPGATE_API_KEY", "")
    if not key:
        print("error: no tenant key: pass --key or set LOOPGATE_API_KEY", file=sys.stderr)
        return None
    return args.url or f"http://{settings.host}:{settings.port}", {"Authorization": f"Bearer {key}"}


def _tenant_cmd(fn: Call) -> Callable[[Settings, argparse.Namespace], int]:
    def run(settings: Settings, args: argparse.Namespace) -> int:
        base = _base(settings, args)
        return 2 if base is None else http_call(*base, fn, args)

    return run


def _upload(client: httpx.Client, args: argparse.Namespace) -> httpx.Response:
    data = Path(args.file).read_bytes()
    return client.post(
        "/v1/files", files={"file": (Path(args.file).name, data)}, data={"purpose": "fine-tune"}
    )


def _dataset(client: httpx.Client, args: argparse.Namespace) -> httpx.Response:
    body = {
        "include_unrated": args.include_unrated,
        "max_author_share": args.max_author_share,
        "eval_fraction": args.eval_fraction,
    }
    return client.post("/v1/datasets", json={k: v for k, v in body.items() if v is not None})


def _list(client: httpx.Client, _: argparse.Namespace) -> httpx.Response:
    return client.get("/v1/fine_tuning/jobs", params={"limit": 100})


def _job_op(client: httpx.Client, args: argparse.Namespace) -> httpx.Response:
    path = f"/v1/fine_tuning/jobs/{args.job}"
    if args.action == "show":
        return client.get(path)
    if args.action == "events":
        return client.get(path + "/events", params={"limit": 100})
    return client.post(path + "/cancel")


def _create_call(client: httpx.Client, args: argparse.Namespace) -> httpx.Response:
    hyper = {
        "n_epochs": args.epochs,
        "learning_rate_multiplier": args.lr_multiplier,
        "batch_size": args.batch_size,
    }
    body = {
        "model": args.model,
        "training_file": args.training_file,
        "suffix": args.suffix,
        "seed": args.seed,
        "hyperparameters": {k: v for k, v in hyper.items() if v is not None},
    }
    return client.post(
        "/v1/fine_tuning/jobs", json={k: v for k, v in body.items() if v is not None}
    )


def _create(settings: Settings, args: argparse.Namespace) -> int:
    base = _base(settings, args)
    if base is None:
        return 2
    if not args.wait:
        return http_call(*base, _create_call, args)
    with httpx.Client(base_url=base[0], headers=base[1], timeout=60) as client:
        resp = _create_call(client, args)
        if resp.status_code >= 400:
            print(f"error ({resp.status_code}): {resp.json()['error']['message']}", file=sys.stderr)
            return 1
        return _follow(client, resp.json()["id"])


def _follow(client: httpx.Client, job_id: str) -> int:
    """Print the job's events as they come, until it ends; exit 0 only when it succeeded."""
    print(f"job {job_id} created; following its events (Ctrl-C stops following, not the job)")
    seen: set[str] = set()
    while True:
        events = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 100}).json()
        for event in reversed(events["data"]):
            if event["id"] not in seen:
                seen.add(event["id"])
                print(
                    f"[{time.strftime('%H:%M:%S', time.localtime(event['created_at']))}] "
                    f"{event['message']}"
                )
        job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        if job["status"] in TERMINAL:
            print(f"job {job_id} {job['status']}; model: {job['fine_tuned_model']}")
            return 0 if job["status"] == "succeeded" else 1
        time.sleep(2)


def _admin_key(settings: Settings) -> str:
    key = settings.admin_key
    key_file = settings.data_dir / "admin_key"
    if not key and key_file.exists():
        key = key_file.read_text().strip()
    return key


def cmd_loop(settings: Settings, args: argparse.Namespace) -> int:
    """Start the loop through the admin API and print its steps until it ends."""
    key = _admin_key(settings)
    if not key:
        print("error: no admin key: set LOOPGATE_ADMIN_KEY", file=sys.stderr)
        return 2
    hyper = {"n_epochs": args.epochs, "learning_rate_multiplier": args.lr_multiplier}
    body: dict[str, object] = {
        "alias": args.alias,
        "suffix": args.suffix,
        "promote": not args.no_promote,
        "hyperparameters": {k: v for k, v in hyper.items() if v is not None},
    }
    if args.base:
        body["base"] = args.base
    if args.allow_flagged or args.keep_flagged:
        body["dataset"] = {
            "allow_flagged": args.allow_flagged,
            "keep_flagged": args.keep_flagged,
            "reason": args.reason,
        }
    url = args.url or f"http://{settings.host}:{settings.port}"
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        resp = c.post(f"/admin/tenants/{args.tenant}/loops", json=body)
        if resp.status_code >= 400:
            print(f"error ({resp.status_code}): {resp.json()['error']['message']}", file=sys.stderr)
            return 1
        run_id, shown = resp.json()["id"], 0
        while True:
            run = c.get(f"/admin/tenants/{args.tenant}/loops/{run_id}").json()
            for step in run["steps"][shown:]:
                stamp = time.strftime("%H:%M:%S", time.localtime(step["at"]))
                print(f"[{stamp}] {step['message']}", flush=True)
            shown = len(run["steps"])
            if run["status"] != "running":
                break
            time.sleep(2)
    if run.get("eval_id"):
        print(f"report: {url}/admin/tenants/{args.tenant}/evals/{run['eval_id']}/report.html")
    print(f"loop {run_id}: {run['status']} ({run['seconds']})")
    return 0 if run["status"] in ("promoted", "refused") else 1
