"""The serving process stays light: no ML, statistics or plotting library is imported by the app,
at start-up or by any route (issue #22: heavy work runs in worker processes).

A fresh interpreter builds the app in front of the fake engine, runs its lifespan, sends one
request to every route the app registers and reports which forbidden packages ever reached
`sys.modules`; the test asserts there are none, and that no route answered 500.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

FORBIDDEN = frozenset(
    {
        "torch",
        "transformers",
        "peft",
        "trl",
        "scipy",
        "matplotlib",
        "datasketch",
        "rouge_score",
        "datasets",
        "accelerate",
        "bitsandbytes",
    }
)
ROOT = Path(__file__).resolve().parents[2]
PARAM = re.compile(r"\{(\w+)(?::(\w+))?\}")
# Plausible bodies for the routes whose work is worth reaching; the rest get `{}`.
BODIES: dict[str, object] = {
    "/v1/chat/completions": {
        "model": "acme-model",
        "messages": [{"role": "user", "content": "hi"}],
    },
    "/v1/completions": {"model": "acme-model", "prompt": "hi"},
    "/v1/datasets": {},
    "/v1/fine_tuning/jobs": {"model": "acme-model", "training_file": "file-x"},
    "/admin/tenants": {"name": "probe"},
}
PATH_VALUES = {"tenant": "acme", "name": "acme-model", "alias": "acme-model"}


def loaded() -> list[str]:
    return sorted({m.split(".")[0] for m in sys.modules} & FORBIDDEN)


def fill(path: str) -> str:
    """A route's path with its parameters filled: known names, else a dummy of the right type."""

    def value(m: re.Match[str]) -> str:
        name, kind = m.group(1), m.group(2) or "str"
        if kind == "int":
            return "1"
        return PATH_VALUES.get(name, f"{name}-x")

    return PARAM.sub(value, path)


def probe(data_dir: str) -> None:
    """Run in the fresh interpreter: start the app, hit every route, print what was loaded."""
    from litestar.testing import TestClient

    from gateway.app import create_app
    from store.settings import Settings
    from tests.unit.fake_engine import FakeEngine

    settings = Settings(
        data_dir=Path(data_dir),
        cache_dir=Path(data_dir) / "cache",
        engine_mode="external",
        engine_urls=("http://engine.test",),
        admin_key="admin-secret",
        auth_cache_ttl_s=0.0,
        training_worker=False,
        dataset_build_timeout_s=0.2,  # no worker here: a build answers 504 quickly
    )
    app = create_app(settings, transport=FakeEngine().transport())
    report: dict[str, object] = {}
    with TestClient(app) as client:
        report["after_start"] = loaded()
        admin = {"Authorization": "Bearer admin-secret"}
        client.post("/admin/tenants", json={"name": "acme"}, headers=admin)
        key = client.post("/admin/tenants/acme/keys", json={"name": "k"}, headers=admin).json()
        tenant = {"Authorization": f"Bearer {key['key']}"}
        statuses: dict[str, int] = {}
        for route in app.routes:
            for method in sorted(getattr(route, "methods", ())):
                if method in ("HEAD", "OPTIONS"):
                    continue
                path = fill(route.path)
                auth = admin if route.path.startswith(("/admin", "/metrics")) else tenant
                body = BODIES.get(route.path, {}) if method in ("POST", "PUT", "PATCH") else None
                resp = client.request(method, path, json=body, headers=auth)
                statuses[f"{method} {route.path}"] = resp.status_code
        report["statuses"] = statuses
        report["after_requests"] = loaded()
    report["after_stop"] = loaded()
    print("PROBE " + json.dumps(report))


def run_probe(tmp_path: Path) -> dict[str, object]:
    code = f"from tests.unit.test_light_gateway import probe; probe({str(tmp_path)!r})"
    done = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("PROBE ")]
    assert done.returncode == 0 and lines, done.stderr[-4000:]
    report: dict[str, object] = json.loads(lines[-1].removeprefix("PROBE "))
    return report


def test_the_gateway_never_imports_heavy_packages(tmp_path: Path) -> None:
    report = run_probe(tmp_path)
    statuses = report["statuses"]
    assert isinstance(statuses, dict)
    assert len(statuses) > 40  # every route was reached (not an app that failed to register)
    assert report["after_start"] == [], "imported at start-up"
    assert report["after_requests"] == [], "imported by a request"
    assert report["after_stop"] == [], "imported at shut-down"
    server_errors = {route: code for route, code in statuses.items() if code == 500}
    assert server_errors == {}
    # The dataset build was queued for a worker, which is absent here: a clean 504, not a hang.
    assert statuses["POST /v1/datasets"] == 504
