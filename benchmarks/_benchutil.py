"""Shared pieces of the benchmarks: the machine, thread setup, interleaved medians, peak memory, docs tables."""

from __future__ import annotations

import datetime
import os
import platform
import re
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Callable

DOC = Path(__file__).resolve().parents[1] / "docs" / "performance.md"


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine() -> str:
    """One line: CPU model, cores, accelerator, torch, threads, load average, time."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        found = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        cpu = found.group(1).strip() if found else cpu
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"{cpu}, {cores()} cores usable, {gpu}; torch {torch.__version__}, {torch.get_num_threads()} torch "
            f"threads; load average {load}; {stamp}")


def interleaved(runs: dict[str, Callable[[], Any]], repeats: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Run every callable once per round, ``repeats`` rounds; (median seconds, last output) per name."""
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    times: dict[str, list[float]] = {k: [] for k in runs}
    outputs: dict[str, Any] = {}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            outputs[name] = fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}, outputs


class PeakMemory:
    """Peak resident memory (MiB) of this process while the block runs, sampled every 50 ms; on CUDA
    also torch's peak allocated memory."""

    def __enter__(self):
        import torch

        self.peak, self.cuda = self._rss(), None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc):
        import torch

        self._stop.set()
        self._thread.join()
        if torch.cuda.is_available():
            self.cuda = torch.cuda.max_memory_allocated() / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> float:
        try:
            pages = int(Path("/proc/self/statm").read_text().split()[1])
            return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
        except (OSError, ValueError):
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(name: str, text: str, doc: Path = DOC) -> None:
    """Replace (or append) the part of ``doc`` between ``<!-- name -->`` and ``<!-- /name -->``."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    body = doc.read_text() if doc.exists() else "# Performance\n"
    block = f"{start}\n{text.strip()}\n{end}"
    if start in body and end in body:
        body = body[: body.index(start)] + block + body[body.index(end) + len(end):]
    else:
        body = body.rstrip() + "\n\n" + block + "\n"
    doc.write_text(body)
