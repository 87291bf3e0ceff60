"""How long napari's GUI thread is blocked while each widget runs a job, and how fast Cancel stops it.

    python benchmarks/bench_gui.py            # starts a virtual X display (xvfb-run) when there is none
    python benchmarks/bench_gui.py --write    # also put the table into docs/performance.md

A 10 ms QTimer runs on the GUI thread; its lateness (time between two timeouts minus 10 ms) is how
long the event loop was held by something else: preview updates, progress, adding the result layers,
or, on a loaded machine, no core free for the GUI thread. The GUI thread's own CPU time between two
timeouts is also kept: its longest is the block that the GUI thread's own work makes, which other
processes' load does not lengthen (it is what an idle machine would show as lateness).
Each widget runs a short job with the shipped model on a small phantom, on the CPU, without the
template registration (the phantom is no head). The first job of the process also imports torch and
MONAI (in the job's thread). Then a long job is started, Cancel is pressed after its second progress
event, and two times are measured against the time of one step (the median gap between progress
events): until the worker thread has stopped, and until the widget is ready for the next run (the
worker's end has reached the GUI thread and the preview layer is gone).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time

import numpy as np
from _benchutil import machine, table, write_section


class Lateness:
    """A 10 ms timer on the GUI thread recording how late each timeout is."""

    def __init__(self, period_ms: int = 10) -> None:
        from qtpy.QtCore import QTimer

        self.period = period_ms / 1000
        self.late: list[float] = []
        self.busy: list[float] = []  # the GUI thread's CPU seconds between two timeouts
        self.timer = QTimer()
        self.timer.setInterval(period_ms)
        self.timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        now, cpu = time.perf_counter(), time.thread_time()
        self.late.append(max(0.0, now - self.last - self.period))
        self.busy.append(cpu - self.cpu)
        self.last, self.cpu = now, cpu

    def __enter__(self):
        self.late.clear()
        self.busy.clear()
        self.last, self.cpu = time.perf_counter(), time.thread_time()
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.timer.stop()


def wait(worker, timeout: float = 600.0) -> None:
    """Run the Qt event loop until ``worker`` has finished (its signals are queued to this thread, so
    none is lost before the loop starts)."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    worker.finished.connect(loop.quit)
    QTimer.singleShot(int(timeout * 1000), loop.quit)
    loop.exec()


def wait_ready(widget, timeout: float = 600.0) -> None:
    """Run the Qt event loop until the widget takes the next job (its result layers are all added)."""
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + timeout
    while widget.runner.running and time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.002)


def wait_for_events(events: list, n: int, timeout: float = 120.0) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + timeout
    while len(events) < n and time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.002)


def setups(viewer):
    """(name, widget factory, short-job settings, long-job settings) per widget; shipped models."""
    from napari_diffmed._qt.anomaly import AnomalyWidget
    from napari_diffmed._qt.inpainting import InpaintingWidget
    from napari_diffmed._qt.segmentation import SegmentationWidget
    from napari_diffmed._qt.synthesis import SynthesisWidget
    from napari_diffmed.models.registry import SHIPPED_DIR
    from napari_diffmed.sample_data import make_phantom

    p = make_phantom(shape=(4, 48, 48), spacing=(3.0, 2.0, 2.0), seed=0)
    viewer.add_image(p.image, name="scan", scale=p.spacing, translate=p.translate, metadata={"spacing": p.spacing})
    painted = np.zeros(p.image.shape, np.uint8)
    painted[1:3, 20:28, 20:28] = 1
    viewer.add_labels(painted, name="painted", scale=p.spacing, translate=p.translate)
    shipped = lambda name: str(SHIPPED_DIR / f"{name}.safetensors")  # noqa: E731
    return [
        ("synthesis", SynthesisWidget, dict(model_file=shipped("mni_t1_axial_64_v"), n_samples=4, steps=10),
         dict(steps=1000, scheduler="ddpm")),
        ("segmentation", SegmentationWidget, dict(model_file=shipped("mni_wm_seg_96"), members=4, steps=5),
         dict(steps=200)),
        ("inpainting", InpaintingWidget, dict(model_file=shipped("mni_t1_axial_64"), mask="painted", steps=6,
                                              jump_length=2, resamplings=1, proposals=2),
         dict(mode="quality", steps=1000)),
        ("anomaly", AnomalyWidget, dict(model_file=shipped("mni_t1_axial_64"), method="gaussian", steps=20),
         dict(steps=1000, level=999)),
    ]


def configure(widget, settings: dict) -> None:
    widget.device.value = "cpu"
    if hasattr(widget, "prep"):  # the phantom is no head: no registration to the template
        widget.prep.use_template.value = False
    for key, value in settings.items():
        getattr(widget, key).value = value


def measure(viewer, name, factory, short, long) -> list:
    from qtpy.QtCore import Qt

    widget = factory(viewer)
    viewer.window.add_dock_widget(widget, name=name)
    configure(widget, short)
    events: list = []
    with Lateness() as clock:
        start = time.perf_counter()
        worker = widget.run()
        if worker is None:
            raise RuntimeError(f"{name} refused to run: {widget.status.value}")
        worker.yielded.connect(lambda e: events.append(time.perf_counter()))
        wait(worker)
        wait_ready(widget)
        seconds = time.perf_counter() - start
    late, busy = sorted(clock.late), max(clock.busy, default=0.0)
    configure(widget, long)
    stamps: list = []
    worker = widget.run()
    if worker is None:
        raise RuntimeError(f"{name} refused the long job: {widget.status.value}")
    worker.yielded.connect(lambda e: stamps.append(time.perf_counter()))
    halted: list[float] = []  # when the worker thread itself ends (a direct connection runs in that thread)
    worker.finished.connect(lambda: halted.append(time.perf_counter()), Qt.ConnectionType.DirectConnection)
    wait_for_events(stamps, 3)
    pressed = time.perf_counter()
    widget.cancel_button.changed.emit(True)
    wait(worker, timeout=600)
    wait_ready(widget)
    stopped = time.perf_counter() - pressed
    halt = halted[0] - pressed if halted else float("nan")
    step = statistics.median(np.diff(stamps)) if len(stamps) > 1 else float("nan")
    p99 = late[int(0.99 * (len(late) - 1))]
    return [name, f"{seconds:.1f}", len(events), f"{1000 * late[-1]:.0f}", f"{1000 * p99:.0f}", f"{1000 * busy:.0f}",
            f"{1000 * halt:.0f}", f"{1000 * stopped:.0f}", f"{1000 * step:.0f}", widget.status.value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="put the table into docs/performance.md")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY") and shutil.which("xvfb-run"):
        os.execvp("xvfb-run", ["xvfb-run", "-a", sys.executable, *sys.argv])

    import napari

    from napari_diffmed.device import configure_threads

    configure_threads(args.threads)
    viewer = napari.Viewer(show=True)
    start_load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    rows = []
    for name, factory, short, long in setups(viewer):
        try:
            rows.append(measure(viewer, name, factory, short, long))
        except Exception as err:  # one broken widget does not hide the others' figures
            rows.append([name, *["-"] * 8, f"failed: {type(err).__name__}: {err}"])
        print(rows[-1], flush=True)
    viewer.close()
    command = " ".join(["python benchmarks/bench_gui.py", *sys.argv[1:]])
    text = "\n\n".join([
        f"`{command}` under Xvfb on: {machine()} (load average at the start {start_load}).",
        table(["widget", "short job s", "progress events", "longest GUI-thread block ms", "99th percentile ms",
               "longest GUI-thread work ms (CPU)", "Cancel to worker stopped ms", "Cancel to widget ready ms",
               "one step ms", "status after Cancel"],
              rows)])
    print(text)
    if args.write:
        write_section("bench_gui", text)


if __name__ == "__main__":
    main()
