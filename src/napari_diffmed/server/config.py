"""The server's settings and the checks made before it binds a socket (no web stack, no torch)."""

from __future__ import annotations

import ipaddress
import os
import stat
from dataclasses import dataclass
from pathlib import Path

MIN_TOKEN_LENGTH = 16


@dataclass(frozen=True)
class ServerConfig:
    """How a server runs: where, on which device, for whom, and within which limits.

    ``token`` None lets any local process in (loopback only); ``max_request_bytes`` bounds one
    upload, ``max_dims``/``max_voxels`` one array, ``max_queue`` the jobs waiting behind the
    running ones; results are deleted ``result_ttl`` seconds after their job ends; previews go
    out at most every ``preview_interval`` seconds with at most ``preview_voxels`` voxels.
    """

    host: str = "127.0.0.1"
    port: int = 8765
    device: str = "auto"
    token: str | None = None
    concurrency: int = 1
    max_request_bytes: int = 1 << 30
    max_dims: int = 3
    max_voxels: int = 1 << 26
    max_queue: int = 16
    result_ttl: float = 600.0
    preview_interval: float = 0.5
    preview_voxels: int = 1 << 18
    heartbeat: float = 2.0

    def __post_init__(self) -> None:
        for name in ("concurrency", "max_request_bytes", "max_dims", "max_voxels", "max_queue", "preview_voxels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        for name in ("result_ttl", "preview_interval", "heartbeat"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be a number of seconds > 0, got {getattr(self, name)!r}")
        check_bind(self.host, self.token)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (127.0.0.0/8, ::1 or "localhost")."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # another host name: it may resolve to any interface


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without a token, and tokens too short to guess."""
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"the token must have at least {MIN_TOKEN_LENGTH} characters, got {len(token)}")
    if token is None and not is_loopback(host):
        raise ValueError(f"refusing to listen on {host!r} without a token: anyone who reaches it could run jobs on "
                         "this machine; give --token-file PATH, or bind 127.0.0.1")


def read_token(path: str | os.PathLike) -> str:
    """The first line of a token file, which others must not be able to read."""
    file = Path(path).expanduser()
    try:
        text = file.read_text().strip().splitlines()
    except OSError as err:
        raise ValueError(f"cannot read the token file {file}: {err.strerror}") from None
    if not text or not text[0].strip():
        raise ValueError(f"the token file {file} is empty")
    if os.name == "posix" and file.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(f"the token file {file} can be read by other users; run chmod 600 {file}")
    return text[0].strip()
