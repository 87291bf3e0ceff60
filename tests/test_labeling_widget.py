"""The Label widget in a real napari viewer (Xvfb): a session through three cases, with autosave,
Propose again, Accept and the next most uncertain case."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui


@pytest.fixture
def scans(tmp_path):
    from napari_diffmed.io import write_nifti
    from napari_diffmed.sample_data import make_phantom

    for k in range(3):
        p = make_phantom(shape=(4, 24, 24), spacing=(3.0, 2.0, 2.0), seed=k)
        write_nifti(tmp_path / "scans" / f"sub{k}.nii.gz", p.image, scale=p.spacing, translate=p.translate)
    return tmp_path / "scans"


def opened(viewer, qtbot, scans, out, model, members: int):
    """A Label widget docked in ``viewer`` with a session over ``scans``, every case proposed."""
    from napari_diffmed._qt.labeling import LabelingWidget

    widget = LabelingWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.scans.value, widget.out.value = scans, out
    widget.model_file.value, widget.device.value = model, "cpu"
    widget.members.value, widget.steps.value = members, 2
    assert widget.open_session()
    session = widget.session
    qtbot.waitUntil(lambda: not widget.runner.busy() and all(c.score is not None for c in session.cases),
                    timeout=60_000)
    return widget


def test_three_cases_corrected_proposed_again_and_accepted(make_napari_viewer, qtbot, scans, tmp_path,
                                                           tiny_seg_model):
    from napari_diffmed.io import read_nifti

    viewer = make_napari_viewer()
    widget = opened(viewer, qtbot, scans, tmp_path / "out", tiny_seg_model, members=3)
    session = widget.session
    qtbot.wait(2 * 150)  # the poll timer hands the last events to the GUI thread
    assert len(widget._choices) == 3 and all("proposed" in text for text, _ in widget._choices)

    accepted = []
    for n in range(3):
        expected = session.order()[0]  # the least certain case still to do
        case_id = widget.next_case() if n == 0 else widget.current
        assert case_id == expected
        qtbot.waitUntil(lambda: widget.shown == case_id, timeout=30_000)  # read in the background
        labels = viewer.layers[f"{case_id} labels"]
        slice_index = session.case(case_id).ranking[0]
        assert widget.viewer.dims.current_step[0] == slice_index  # the view opens on the most uncertain slice
        edited = labels.data.copy()
        edited[slice_index, 6:14, 6:14] = 1 - edited[slice_index, 6:14, 6:14]
        labels.data = edited
        assert widget.autosave()  # the timer's save, in the background
        widget.flush()
        on_disk = read_nifti(session.case_dir(case_id) / "edits.nii.gz", as_labels=True)[0]
        assert np.array_equal(on_disk, edited)
        assert widget.propose_again()
        qtbot.waitUntil(lambda: "uncertainty" in widget.status.value or "failed" in widget.status.value,
                        timeout=60_000)
        assert "uncertainty" in widget.status.value, widget.status.value
        qtbot.waitUntil(lambda: widget.shown == case_id, timeout=30_000)  # the new proposal, read and shown
        assert "uncertainty" in widget.status.value  # the status still says what it changed
        fixed = session.load(case_id).corrected
        assert np.array_equal(np.asarray(labels.data)[fixed], edited[fixed])  # the layer shows the new proposal
        assert widget.accept() == case_id
        accepted.append(case_id)
        assert (session.out_dir / "accepted" / f"{case_id}_labels.nii.gz").exists()
    assert sorted(accepted) == ["sub0", "sub1", "sub2"] and session.order() == []
    assert all(state == "accepted" for state in (c.state for c in session.cases))
    widget.close_session()
    assert not (tmp_path / "out" / "session.lock").exists()


def test_the_next_case_is_read_in_the_background_into_the_same_layers(make_napari_viewer, qtbot, scans, tmp_path,
                                                                        tiny_seg_model):
    viewer = make_napari_viewer()
    widget = opened(viewer, qtbot, scans, tmp_path / "out", tiny_seg_model, members=2)
    session = widget.session
    first = widget.next_case()
    qtbot.waitUntil(lambda: widget.shown == first, timeout=30_000)
    layers = list(viewer.layers)
    second = next(c for c in session.order() if c != first)
    widget.open_case(second)  # returns at once: the files are read in another thread
    assert widget.shown is None and not viewer.layers[f"{first} labels"].editable  # no edit of the old arrays
    assert not widget.autosave()  # nothing to save while the next case is on its way
    qtbot.waitUntil(lambda: widget.shown == second, timeout=30_000)
    assert list(viewer.layers) == layers  # the same three layers, now the second case's
    assert [layer.name for layer in viewer.layers] == [second, f"{second} entropy", f"{second} labels"]
    assert viewer.layers[f"{second} labels"].editable
    np.testing.assert_array_equal(viewer.layers[second].data, session.load(second).scan)
    widget.close_session()
