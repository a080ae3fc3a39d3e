"""The whole suite's header: the CPU's capability and the dtypes the defaults choose on it, so
every run's timings say what hardware and numerics they come from."""

from __future__ import annotations

from replicas.supervisor import detect_device, engine_dtype
from store.numerics import choose_cpu_dtype, describe_cpu
from store.settings import Settings


def pytest_report_header() -> list[str]:
    settings = Settings.from_env()
    device = detect_device(settings.engine_device)
    return [
        f"loopgate numerics: {describe_cpu()}; engine ({device}) --dtype "
        f"{engine_dtype(settings, device)}; training on CPU computes in "
        f"{choose_cpu_dtype(settings.training_dtype)}"
    ]
