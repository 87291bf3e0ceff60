"""Start ``napari-diffmed serve`` in a subprocess on 127.0.0.1 (CPU) for the remote tests."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(folder: Path, model_paths, *options: str,
          token: bool = True) -> Iterator[tuple[str, str | None, subprocess.Popen]]:
    """(url, token, process) of a server that sees the models at ``model_paths`` by name."""
    import httpx

    key = secrets.token_urlsafe(24) if token else None
    argv = [sys.executable, "-m", "napari_diffmed.cli", "serve", "--host", "127.0.0.1", "--port", str(free_port()),
            "--device", "cpu", "--log-level", "warning", *options]
    if key:
        token_file = folder / "token"
        token_file.write_text(key + "\n")
        token_file.chmod(0o600)
        argv += ["--token-file", str(token_file)]
    dirs = sorted({str(Path(p).parent) for p in model_paths})
    # one torch thread, as local runs compare under :func:`one_thread`: float sums depend on how work is split
    env = {**os.environ, "NAPARI_DIFFMED_MODELS": os.pathsep.join(dirs), "OMP_NUM_THREADS": "1"}
    log = open(folder / "server.log", "w+")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{argv[argv.index('--port') + 1]}"
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"the server exited ({proc.returncode}): {log.read()}")
            try:
                if httpx.get(f"{url}/health", headers=headers, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not answer within 120 s")
            time.sleep(0.2)
        yield url, key, proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Local runs on one torch thread, like the test servers."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
