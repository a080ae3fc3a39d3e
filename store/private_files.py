"""Owner-only files: the umask of the long-running processes and the data dir's mode.

The data dir holds the SQLite store (and its -wal/-shm), captured traffic, uploads and training
data, adapters, logs, the admin and demo keys and the engine's socket. `loopgate serve`, `up`
and `worker` set the umask to 077 before they write anything, so every file they (and their
children: vLLM, the training worker, SQLite) create is 0600 and every folder 0700; the data dir
itself is created 0700, and one found open to other users is closed (with a warning). A data dir
that cannot be closed (owned by another user) is a configuration error.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from store.settings import ConfigError

log = logging.getLogger("loopgate")

PRIVATE_UMASK = 0o077


def private_dir(path: Path) -> None:
    """Create `path` (0700), or take group/other access away from an existing one."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777
    if not mode & 0o077:
        return
    log.warning("%s was open to other users (%o); making it owner-only (0700)", path, mode)
    try:
        path.chmod(0o700)
    except PermissionError:
        raise ConfigError(
            f"{path} is open to other users (mode {mode:o}) and this user cannot change that: "
            f"chown it to uid {os.getuid()}, or chmod 700 it"
        ) from None


def owner_only(data_dir: Path) -> None:
    """From now on this process (and its children) creates owner-only files; the data dir is
    0700."""
    os.umask(PRIVATE_UMASK)
    private_dir(data_dir)
