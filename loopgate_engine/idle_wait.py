"""vLLM's engine processes wait for each other without spinning a core, on CPU.

vLLM 0.32 passes each step's work and results between its engine core and its model worker
through a shared-memory queue whose reader, after any read, polls the queue in a tight loop
(`sched_yield` between checks) for a second before it blocks on a notification socket. On a
GPU the worker's process is idle while the device computes; on CPU it is the one computing,
and the engine core spins for the whole of every step: measured on vLLM-CPU alone, the engine
core process used 0.89-0.99 of a core while serving (py-spy: 77 % of its samples in
`sched_yield`). Each replica keeps such a process runnable all the time, beside its API server,
the gateway and any other replica on the host's cores.

`apply` turns that loop's yield into a nap of NAP_S, on the CPU platform only: each check
then costs a few microseconds every NAP_S instead of a core, and a step (tens to hundreds of
milliseconds on CPU) is seen at most NAP_S late. Blocking on the notification socket instead
is not safe: with it after every read, a dropped notification stalled the engine for the
socket's 5 s recheck interval (tried; the engine ran at 0.1 tokens/s).
"""

from __future__ import annotations

import importlib
import logging
import time

log = logging.getLogger("vllm.loopgate_engine")

MODULE = "vllm.distributed.device_communicators.shm_broadcast"
NAP_S = 0.0002
NAPS = "__loopgate_naps__"


def nap() -> None:
    """What a waiting reader (or a writer facing a full queue) does between checks."""
    time.sleep(NAP_S)


setattr(nap, NAPS, True)


def on_cpu() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def apply() -> bool:
    """The queue's waits nap instead of spinning (CPU platform only); True when they (now) do."""
    try:
        module = importlib.import_module(MODULE)
    except ImportError:
        return False
    current = getattr(module, "sched_yield", None)
    if current is None:
        return False
    if getattr(current, NAPS, False):
        return True
    if not on_cpu():
        return False
    setattr(module, "sched_yield", nap)  # noqa: B010 (the module is found at run time)
    log.info("loopgate: vLLM's shared-memory queue waits nap %.1f ms instead of spinning (CPU)",
             NAP_S * 1000)  # fmt: skip
    return True
