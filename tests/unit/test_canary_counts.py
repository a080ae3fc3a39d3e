"""Canary counts shared through the store: two gateways on one store see every request."""

from __future__ import annotations

from pathlib import Path

from litestar.testing import TestClient

from gateway.app import create_app
from gateway.canary import ArmStats
from store import ArmCounts
from store.latency import bucket_of
from tests.unit.conftest import ADMIN, Env, make_settings
from tests.unit.test_canary import CANARY, promote, show, start, upload


def ask(client: TestClient, key: str, user: str) -> str:  # type: ignore[type-arg]
    body = {"model": "support", "messages": [{"role": "user", "content": "hi"}], "user": user}
    resp = client.post(
        "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    )
    assert resp.status_code == 200, resp.text
    return str(resp.headers["x-loopgate-adapter-version"])


def test_an_arm_hands_out_its_counts_once() -> None:
    arm = ArmStats()
    assert arm.take() is None
    arm.served(0.010, "c1")
    arm.served(0.012, None)
    arm.failed()
    taken = arm.take()
    assert taken == ArmCounts(3, 1, {bucket_of(10.0): 1, bucket_of(12.0): 1})
    assert arm.take() is None  # handed out: a second flush adds nothing
    assert list(arm.completions) == ["c1"]  # the feedback sample stays
    signals = arm.signals(ArmCounts(10, 1, {bucket_of(10.0): 9}))
    assert (signals.requests, signals.errors, signals.error_rate) == (10, 1, 0.1)
    assert signals.latency_samples == 9
    assert signals.p50_latency_ms is not None and 8.5 < signals.p50_latency_ms < 11.5


def test_counts_are_summed_over_two_gateways_sharing_a_store(env: Env, tmp_path: Path) -> None:
    v1, v2 = upload(env, tmp_path, 1), upload(env, tmp_path, 2)
    promote(env, v1)
    start(env, v2, 50, min_requests=1000)
    # This gateway serves first: the other's start-up reconciles the shared fake engine to
    # what it knows (each unit-test gateway owns its engine names).
    here = [ask(env.client, env.acme_key, f"user-{i}") for i in range(30)]
    other_app = create_app(make_settings(tmp_path), transport=env.engine.transport())
    with TestClient(other_app) as other:  # a second gateway process on the same store
        there = [ask(other, env.acme_key, f"user-{i}") for i in range(30, 70)]
        report = other.get(CANARY.format(t="acme", a="support"), headers=ADMIN).json()
        # its own, flushed by the report, and whatever this one flushed already (every 1 s)
        assert report["active"]["canary_arm"]["requests"] >= there.count(v2)
    active = show(env)["active"]  # flushes this gateway's counts, then reads the sums
    assert isinstance(active, dict)
    served = here + there
    assert 0 < served.count(v2) < len(served)
    assert active["canary_arm"]["requests"] == served.count(v2)
    assert active["live_arm"]["requests"] == served.count(v1)
    assert active["canary_arm"]["latency_samples"] == served.count(v2)
    assert active["canary_arm"]["p50_latency_ms"] > 0
    assert active["canary_arm"]["p95_latency_ms"] >= active["canary_arm"]["p50_latency_ms"]


def test_a_gateway_that_stops_hands_in_its_last_counts(env: Env, tmp_path: Path) -> None:
    v1, v2 = upload(env, tmp_path, 1), upload(env, tmp_path, 2)
    promote(env, v1)
    start(env, v2, 100, min_requests=1000)
    with TestClient(create_app(make_settings(tmp_path), transport=env.engine.transport())) as other:
        assert {ask(other, env.acme_key, f"u{i}") for i in range(5)} == {v2}
    # the other gateway stopped without a report or a monitor pass: its shutdown flushed
    active = show(env)["active"]
    assert isinstance(active, dict) and active["canary_arm"]["requests"] == 5
