"""GUI-thread time of opening a case in the Label widget and of an autosave (1 mm MNI152, 182 x 218 x 182).

    xvfb-run -a python benchmarks/bench_label_open.py

Two cases (the template and a shifted copy) are proposed first (shipped model, 2 members, 2 steps, slices
90-91), then opened in turn in a real viewer: how long ``open_case`` holds the GUI thread, the time until
the case is shown, the longest turn of the event loop meanwhile, and the same for an autosave of an edit.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np


def make_session(root: Path) -> None:
    from napari_diffmed.io import write_nifti
    from napari_diffmed.labeling import Session
    from napari_diffmed.training.templates import load_mni152

    t = load_mni152(1)
    for k in range(2):
        write_nifti(root / "scans" / f"sub{k}.nii.gz", (np.roll(t.t1, 3 * k, axis=1) * 1000).astype(np.float32),
                    scale=t.layer_kwargs["scale"], translate=t.layer_kwargs["translate"])
    session = Session(root / "scans", root / "out", device="cpu", members=2, steps=2, slices="90:92",
                      preprocess="none")
    for case_id in session.to_propose():
        session.propose(case_id)
    session.close()


def settle(done, longest: list[float], timeout: float = 120.0) -> None:
    """Turn the event loop until ``done()``, keeping the longest turn."""
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + timeout
    while not done() and time.perf_counter() < end:
        start = time.perf_counter()
        QApplication.processEvents()
        longest[0] = max(longest[0], time.perf_counter() - start)
        time.sleep(0.005)


def main() -> None:
    import napari

    from napari_diffmed._qt.labeling import LabelingWidget

    root = Path(tempfile.mkdtemp())
    make_session(root)
    viewer = napari.Viewer(show=True)
    widget = LabelingWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.scans.value, widget.out.value, widget.device.value = root / "scans", root / "out", "cpu"
    assert widget.open_session()
    print("| case | open_case holds the GUI thread s | until shown s | longest event-loop turn s "
          "| autosave holds it s | until on disk s |\n|---|---|---|---|---|---|")
    for case_id in ("sub0", "sub1", "sub0"):
        longest = [0.0]
        start = time.perf_counter()
        widget.open_case(case_id)
        call = time.perf_counter() - start
        settle(lambda c=case_id: widget.shown == c, longest)
        shown = time.perf_counter() - start
        labels = widget.view.labels
        edited = labels.data.copy()
        edited[91, 80:100, 80:100] = 1 - edited[91, 80:100, 80:100]
        labels.data = edited
        start = time.perf_counter()
        widget.autosave()
        save_call = time.perf_counter() - start
        widget.flush()
        saved = time.perf_counter() - start
        print(f"| {case_id} | {call:.2f} | {shown:.2f} | {longest[0]:.2f} | {save_call:.2f} | {saved:.2f} |")
    widget.close_session()


if __name__ == "__main__":
    main()
