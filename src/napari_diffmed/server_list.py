"""The user's saved servers and tokens: ``$NAPARI_DIFFMED_TOKEN``, else ``servers.json`` in the user's
config folder (never layer metadata or provenance)."""

from __future__ import annotations

import json
import os
from pathlib import Path

ENV_TOKEN = "NAPARI_DIFFMED_TOKEN"
ENV_CONFIG = "NAPARI_DIFFMED_CONFIG"


def config_path() -> Path:
    """The user's server list: ``$NAPARI_DIFFMED_CONFIG``, else ``~/.config/napari-diffmed/servers.json``."""
    if os.environ.get(ENV_CONFIG):
        return Path(os.environ[ENV_CONFIG]).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or "~/.config").expanduser()
    return base / "napari-diffmed" / "servers.json"


def saved_servers() -> list[dict[str, str]]:
    """``[{"url": ..., "token": ...}, ...]`` from the user's server list (empty when there is none)."""
    path = config_path()
    if not path.is_file():
        return []
    try:
        servers = json.loads(path.read_text()).get("servers", [])
    except (ValueError, AttributeError) as err:
        raise ValueError(f"cannot read the server list {path}: {err}") from None
    return [s for s in servers if isinstance(s, dict) and isinstance(s.get("url"), str)]


def save_server(url: str, token: str | None = None) -> Path:
    """Add or update a server in the user's server list (readable by the user only)."""
    url = url.rstrip("/")
    servers = [s for s in saved_servers() if s["url"].rstrip("/") != url] + [
        {"url": url, **({"token": token} if token else {})}]
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"servers": servers}, f, indent=2)
    return path


def token_for(url: str) -> str | None:
    """``$NAPARI_DIFFMED_TOKEN``, else the token saved for ``url``."""
    if os.environ.get(ENV_TOKEN):
        return os.environ[ENV_TOKEN]
    for server in saved_servers():
        if server["url"].rstrip("/") == url.rstrip("/"):
            return server.get("token")
    return None
