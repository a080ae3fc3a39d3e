"""Which road a Responses API request should take: vLLM's own `/v1/responses`, or loopgate's
translation onto the chat path (what loopgate serves).

One vLLM-CPU process (the bundled model, the embedded mode's flags, on loopback) and one
`loopgate serve` in external mode in front of it. For the same prompts, greedy, a fixed
`max_output_tokens`, it times in interleaved rounds, one request at a time (the engine is the
bottleneck; concurrency would only measure it):

- vLLM `/v1/responses` direct (non-streaming and streaming: total time, time to first delta);
- vLLM `/v1/chat/completions` direct, same messages (what the translation sends);
- loopgate `/v1/responses` (the translation + capture + storage);

and compares the texts: the translation must answer token for token what vLLM's own endpoint
answers. It also records what vLLM's endpoint does with `store` and `previous_response_id`
(vLLM keeps stored responses in process memory only when VLLM_ENABLE_RESPONSES_API_STORE=1).

    python -m benchmarks.responses_route            # 4 rounds x 8 prompts
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from benchmarks.engine import Children, Options, start_engine, start_gateway
from store.numerics import describe_cpu
from store.settings import Settings

PROMPTS = [
    "What is the capital of France?",
    "Name three fruits.",
    "Write one sentence about the sea.",
    "What is 12 times 12?",
    "Give a synonym for happy.",
    "Describe a cat in five words.",
    "What colour is the sky on a clear day?",
    "Say hello in Spanish.",
]
ADMIN = "responses-route-admin"


def timed(call: Callable[[str], str], prompt: str) -> tuple[float, str]:
    started = time.perf_counter()
    text = call(prompt)
    return (time.perf_counter() - started) * 1000, text


def responses_text(body: dict[str, object]) -> str:
    parts = []
    for item in body.get("output", []):  # type: ignore[union-attr]
        for content in item.get("content", []) or []:
            if content.get("type") == "output_text":
                parts.append(content["text"])
    return "".join(parts)


def first_delta_ms(client: httpx.Client, path: str, body: dict[str, object]) -> float:
    started = time.perf_counter()
    with client.stream("POST", path, json={**body, "stream": True}) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if '"response.output_text.delta"' in line or '"delta":{"content"' in line:
                return (time.perf_counter() - started) * 1000
    raise RuntimeError(f"{path}: no text delta in the stream")


class Roads:
    """The three ways to ask for one answer."""

    def __init__(self, vllm: httpx.Client, ours: httpx.Client, base: str, max_tokens: int):
        self.vllm, self.ours, self.base, self.max_tokens = vllm, ours, base, max_tokens

    def vllm_body(self, prompt: str) -> dict[str, object]:
        return {
            "model": self.base,
            "input": prompt,
            "temperature": 0,
            "max_output_tokens": self.max_tokens,
            "store": False,
        }

    def our_body(self, prompt: str) -> dict[str, object]:
        return {
            "model": "smollm2",
            "input": prompt,
            "temperature": 0,
            "max_output_tokens": self.max_tokens,
        }

    def vllm_resp(self, prompt: str) -> str:
        resp = self.vllm.post("/v1/responses", json=self.vllm_body(prompt))
        return responses_text(resp.raise_for_status().json())

    def vllm_chat(self, prompt: str) -> str:
        body = {
            "model": self.base,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }
        resp = self.vllm.post("/v1/chat/completions", json=body).raise_for_status()
        return str(resp.json()["choices"][0]["message"]["content"])

    def loopgate_resp(self, prompt: str) -> str:
        resp = self.ours.post("/v1/responses", json=self.our_body(prompt))
        return responses_text(resp.raise_for_status().json())


def one_round(
    roads: Roads, reverse: bool, times: dict[str, list[float]], ttft: dict[str, list[float]]
) -> tuple[int, int]:
    same = differ = 0
    for prompt in PROMPTS:
        order = ["vllm_resp", "vllm_chat", "loopgate_resp"]
        texts = {}
        for name in reversed(order) if reverse else order:  # drift falls on every road alike
            ask: Callable[[str], str] = getattr(roads, name)
            ms, texts[name] = timed(ask, prompt)
            times[name].append(ms)
        if texts["vllm_resp"] == texts["loopgate_resp"]:
            same += 1
        else:
            differ += 1
        ttft["vllm_resp"].append(
            first_delta_ms(roads.vllm, "/v1/responses", roads.vllm_body(prompt))
        )
        ttft["loopgate_resp"].append(
            first_delta_ms(roads.ours, "/v1/responses", roads.our_body(prompt))
        )
    return same, differ


def tenant_key(gateway: str) -> str:
    admin = {"Authorization": f"Bearer {ADMIN}"}
    with httpx.Client(base_url=gateway, timeout=60, headers=admin) as c:
        c.post("/admin/tenants", json={"name": "acme"}).raise_for_status()
        return str(c.post("/admin/tenants/acme/keys", json={}).json()["key"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=32)
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="lg-responses-route-"))
    children = Children(workdir)
    times: dict[str, list[float]] = {k: [] for k in ("vllm_resp", "vllm_chat", "loopgate_resp")}
    ttft: dict[str, list[float]] = {"vllm_resp": [], "loopgate_resp": []}
    same = differ = 0
    try:
        engine = start_engine(children, workdir, Options(pin=False))
        gateway = start_gateway(children, workdir, Options(pin=False), engine, ADMIN)
        vllm_auth = {"Authorization": f"Bearer {engine.api_key}"}
        our_auth = {"Authorization": f"Bearer {tenant_key(gateway)}"}
        with (
            httpx.Client(base_url=engine.url, timeout=120, headers=vllm_auth) as vllm,
            httpx.Client(base_url=gateway, timeout=120, headers=our_auth) as ours,
        ):
            roads = Roads(vllm, ours, Settings().base_model_name, args.max_tokens)
            for r in range(args.rounds):
                s, d = one_round(roads, bool(r % 2), times, ttft)
                same, differ = same + s, differ + d
            first = vllm.post("/v1/responses", json={**roads.vllm_body("Hi"), "store": True})
            chained = vllm.post(
                "/v1/responses",
                json={**roads.vllm_body("Again"), "previous_response_id": first.json().get("id")},
            )
    finally:
        children.stop_all()
    print(
        f"{describe_cpu()}; {args.rounds} rounds x {len(PROMPTS)} prompts, greedy, "
        f"max {args.max_tokens} tokens, one request at a time"
    )
    print(f"{'road':<34} {'p50 ms':>8} {'p95 ms':>8}")
    for name, ms in times.items():
        ms.sort()
        print(f"{name:<34} {statistics.median(ms):>8.1f} {ms[int(0.95 * (len(ms) - 1))]:>8.1f}")
    for name, ms in ttft.items():
        print(f"{name + ' first delta':<34} {statistics.median(ms):>8.1f}")
    print(f"same greedy text, vLLM /v1/responses vs loopgate /v1/responses: {same}/{same + differ}")
    print(f"vLLM previous_response_id: HTTP {chained.status_code} {chained.text[:200]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
