"""A session folder on disk: atomic JSON writes and the lock that keeps a second session out.

Every file is written to a temporary name in the same folder and moved over the old one with
``os.replace``, so a crash mid-write leaves the previous version whole. The lock is a file created
exclusively (``O_EXCL``) holding the owner's host, pid and start time; a lock left by a process that
no longer runs on this host is stale and taken over, any other lock refuses the session.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

LOCK_NAME = "session.lock"


class SessionLocked(FileExistsError):
    """Another live session holds the folder (its lock file exists)."""


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON atomically (temp file in the same folder, fsync, ``os.replace``)."""
    from ..io import atomic_write

    text = json.dumps(data, indent=1, default=str)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); restore it or start a new output folder") from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class FolderLock:
    """An exclusive lock on a session folder (``session.lock``); ``release`` removes it."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self.held = False
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(self.owner, fh)
            self.held = True
            return
        raise SessionLocked(f"{self.path.parent} is locked by another session")

    def _take_over_if_stale(self) -> None:
        try:
            other = json.loads(self.path.read_text() or "{}")
        except (OSError, json.JSONDecodeError):
            other = {}
        host, pid = other.get("host"), other.get("pid")
        if host == self.owner["host"] and isinstance(pid, int) and not _alive(pid):
            self.path.unlink(missing_ok=True)  # its process is gone: a stale lock
            return
        who = f"pid {pid} on {host} since {other.get('since')}" if host else "an unreadable lock file"
        raise SessionLocked(f"{self.path.parent} is in use by another labeling session ({who}); close that "
                            f"session, or delete {self.path} if it is no longer running")

    def release(self) -> None:
        if self.held:
            try:
                if json.loads(self.path.read_text()).get("pid") == self.owner["pid"]:
                    self.path.unlink()
            except (OSError, json.JSONDecodeError):
                pass
            self.held = False
