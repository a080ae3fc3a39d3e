"""A child process for tests of process handling: sleeps until SIGTERM (exit 0), or ignores
SIGTERM when SLEEPER_IGNORE_TERM is set. With SLEEPER_READY, it creates that file once its
handler is in place."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path


def main() -> None:
    if os.environ.get("SLEEPER_IGNORE_TERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if ready := os.environ.get("SLEEPER_READY"):
        Path(ready).touch()
    time.sleep(120)


if __name__ == "__main__":
    main()
