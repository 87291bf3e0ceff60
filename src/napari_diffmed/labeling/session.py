"""A labeling session over a folder of scans: state on disk, proposals, corrections, acceptance.

The output folder holds everything (reopening it, or a copy, returns to the same place)::

    OUT/session.json                  cases with their state, scores and slice rankings; settings; models
    OUT/session.lock                  the running session (host, pid); a second one is refused
    OUT/cases/ID/proposal_*.nii.gz    the ensemble's labels, mean, votes, entropy and mutual information
    OUT/cases/ID/edits.nii.gz         the person's labels; corrected.nii.gz: where they differ from the proposal
    OUT/accepted/ID_labels.nii.gz     accepted labels in the scan's space (+ ID_labels.json, ID_corrected.nii.gz)

A case is *not started*, *proposed*, *corrected* (edits differ from the proposal) or *accepted*.
Cases are ranked by the expected number of wrong voxels per slice and a case's slices by their summed
mutual information: of the measures tried on held-out data, these tracked the errors best
(docs/labeling.md).
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Generator

import numpy as np

from ..progress import Progress, drive
from .cases import (MAPS, Case, CaseData, LabelSettings, case_score, check_settings, list_scans, merge_again,
                    proposal_slices, score_map)
from .store import FolderLock, read_json, write_json



class Session:
    """A labeling session on ``scans_dir`` writing to ``out_dir`` (see the module's docstring).

    Settings given here replace the stored ones (and are stored); those left out keep the stored
    values, or the defaults of :class:`LabelSettings`. ``device`` is not stored. Use as a context
    manager, or call :meth:`close`, to release the folder's lock.
    """

    def __init__(self, scans_dir, out_dir, device: str = "auto", **settings: Any) -> None:
        self.scans_dir, self.out_dir, self.device = Path(scans_dir).resolve(), Path(out_dir).resolve(), device
        if not self.scans_dir.is_dir():
            raise FileNotFoundError(f"scans folder {self.scans_dir} does not exist")
        unknown = set(settings) - set(LabelSettings.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown settings {sorted(unknown)}; known: {sorted(LabelSettings.__dataclass_fields__)}")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._lock = FolderLock(self.out_dir)
        self._mutex = threading.RLock()
        self._spatial: dict[str, tuple[tuple[int, ...], dict]] = {}  # case -> scan shape, layer kwargs
        try:
            self._open(settings)
        except BaseException:
            self._lock.release()
            raise

    def _open(self, settings: dict) -> None:
        record = read_json(self.state_file) if self.state_file.exists() else {}
        stored = [v["scan"] for v in record.get("cases", {}).values()]
        if record and Path(record["scans_dir"]).resolve() != self.scans_dir and not all(
                (self.scans_dir / rel).exists() for rel in stored):  # a copied session may find its scans elsewhere
            raise ValueError(f"{self.out_dir} belongs to a session on {record['scans_dir']}, whose scans are not all "
                             f"in {self.scans_dir}")
        self.settings = replace(LabelSettings(**record.get("settings", {})), **settings)
        check_settings(self.settings)
        self.models: list[dict] = record.get("models", [])
        self._cases = {k: Case(**v) for k, v in record.get("cases", {}).items()}
        for case_id, rel in list_scans(self.scans_dir, self.out_dir).items():
            self._cases.setdefault(case_id, Case(case_id, rel))
        if not self.models or self.models[-1]["model"] != self.settings.model:
            self.models.append({"model": self.settings.model, "since": _now()})
        self._write()

    # --- the folder --------------------------------------------------------------------------------

    @property
    def state_file(self) -> Path:
        return self.out_dir / "session.json"

    def case_dir(self, case_id: str) -> Path:
        return self.out_dir / "cases" / self.case(case_id).id

    def _write(self) -> None:
        with self._mutex:
            write_json(self.state_file, {"version": 1, "scans_dir": str(self.scans_dir),
                                         "settings": asdict(self.settings), "models": self.models,
                                         "cases": {k: asdict(c) for k, c in self._cases.items()}})

    def close(self) -> None:
        """Release the folder (everything is already on disk)."""
        self._lock.release()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- cases -------------------------------------------------------------------------------------

    @property
    def cases(self) -> list[Case]:
        with self._mutex:
            return list(self._cases.values())

    def case(self, case_id: str) -> Case:
        if case_id not in self._cases:
            raise KeyError(f"no case {case_id!r} in this session; cases: {sorted(self._cases)[:8]}")
        return self._cases[case_id]

    def order(self) -> list[str]:
        """Cases still to do, least certain first; cases without a proposal follow in folder order."""
        todo = [c for c in self.cases if c.state != "accepted"]
        scored = sorted((c for c in todo if c.score is not None), key=lambda c: -c.score)
        return [c.id for c in scored] + [c.id for c in todo if c.score is None]

    def next_case(self) -> str | None:
        """The least certain case that has a proposal, else the first not started; None when all are accepted."""
        order = self.order()
        return order[0] if order else None

    def to_propose(self) -> list[str]:
        """Cases without a proposal, in folder order (what the background runner works through)."""
        return [c.id for c in self.cases if c.state == "not started"]

    def read_scan(self, case_id: str) -> tuple[np.ndarray, dict]:
        """The scan (napari order) and its spatial metadata."""
        scan, kwargs = self._read(case_id)
        return scan, kwargs["metadata"]

    def _read(self, case_id: str) -> tuple[np.ndarray, dict]:
        from ..io import read_scan

        scan, kwargs, _ = read_scan(self.scans_dir / self.case(case_id).scan, as_labels=False)
        self._spatial[case_id] = (scan.shape, kwargs)
        return scan, kwargs

    def load(self, case_id: str, maps: bool = True) -> CaseData:
        """The scan with the current labels: the saved edits, else the proposal, else zeros (and the
        uncertainty maps unless ``maps`` is False)."""
        scan, kwargs = self._read(case_id)
        return self._case_data(case_id, scan, scan.shape, kwargs, maps)

    def _case_data(self, case_id: str, scan, shape, kwargs: dict, maps: bool) -> CaseData:
        from ..io import read_nifti

        folder = self.case_dir(case_id)

        def read(name: str, labels: bool):
            path = folder / f"{name}.nii.gz"
            return read_nifti(path, as_labels=labels)[0] if path.exists() else None

        proposal, edits, corrected = read("proposal_labels", True), read("edits", True), read("corrected", True)
        labels = edits if edits is not None else proposal if proposal is not None else np.zeros(shape, np.uint8)
        corrected = np.zeros(shape, bool) if corrected is None else corrected > 0
        if edits is not None and proposal is not None:  # heals a crash between the two writes
            corrected |= edits != proposal
        found = {key: m for key in MAPS if maps and (m := read(f"proposal_{key}", False)) is not None}
        placement = {k: v for k, v in kwargs.items() if k in ("scale", "translate", "affine")}
        return CaseData(scan, kwargs["metadata"], placement, np.asarray(labels), proposal, corrected, found)

    def load_labels(self, case_id: str) -> CaseData:
        """:meth:`load` without the scan (``scan`` is None; its shape and metadata are remembered) and the maps:
        quick enough for the GUI thread."""
        if case_id not in self._spatial:
            self._read(case_id)
        shape, kwargs = self._spatial[case_id]
        return self._case_data(case_id, None, shape, kwargs, maps=False)

    def _set(self, case_id: str, **changes: Any) -> None:
        with self._mutex:
            case = self.case(case_id)
            for key, value in changes.items():
                setattr(case, key, value)
            self._write()

    # --- proposing ---------------------------------------------------------------------------------

    def iter_propose(self, case_id: str, again: bool = False) -> Generator[Progress, None, dict]:
        """Run the ensemble on a case and save the proposal; yields progress, returns ``{"score", "before",
        "fixed_voxels", "slices"}``. ``again``: with the corrected voxels held fixed, on the slices that
        hold corrections (2D models: the other slices are independent of them and keep their proposal)."""
        from ..ensemble import load_model
        from ..runner import iter_run
        from ..settings import EnsembleSettings

        s = self.settings
        data = self.load(case_id) if again else None
        scan, meta = (data.scan, data.metadata) if data is not None else self.read_scan(case_id)
        loaded = load_model(s.model, self.device)
        fixed, indices = None, proposal_slices(scan, s)
        if again:
            if not data.corrected.any():
                raise ValueError(f"case {case_id!r} has no corrected voxels to hold; edit its labels first")
            fixed = np.where(data.corrected, (data.labels > 0).astype(np.int8), np.int8(-1))
            touched = np.moveaxis(data.corrected, s.axis, 0).reshape(scan.shape[s.axis], -1).any(axis=1)
            indices = self.case(case_id).slices or indices
            if loaded.card.spatial_dims == 2:
                indices = [i for i in indices if touched[i]] or [int(np.flatnonzero(touched)[0])]
        run = EnsembleSettings(members=s.members, steps=s.steps, scheduler=s.scheduler, seed=s.seed, axis=s.axis,
                               indices=indices, device=self.device, chunk=s.chunk, preprocess=s.preprocess,
                               force=s.force)  # the domain check and preprocessing of `segment`
        result = yield from iter_run("segmentation", scan, meta["spacing"], loaded, settings=run, fixed=fixed,
                                     metadata=meta)
        return self._store_proposal(case_id, result, meta, data)

    def propose(self, case_id: str, again: bool = False, callback=None) -> dict:
        """:meth:`iter_propose` to the end; ``callback(Progress)`` per network call."""
        return drive(self.iter_propose(case_id, again), callback)

    def _store_proposal(self, case_id: str, result, meta: dict, data: CaseData | None) -> dict:
        from ..ensemble import slice_ranking
        from ..io import write_nifti

        folder = self.case_dir(case_id)
        folder.mkdir(parents=True, exist_ok=True)
        maps = {key: getattr(result, key) for key in MAPS}
        labels = result.labels()
        ran = list(result.provenance["slices"] or [])
        if data is not None:
            maps, labels = merge_again(data, maps, labels, ran if result.axis is not None else None,
                                       self.settings.axis)
        for key in MAPS:
            write_nifti(folder / f"proposal_{key}.nii.gz", maps[key], meta, overwrite=True)
        write_nifti(folder / "proposal_labels.nii.gz", labels, meta, labels=True, overwrite=True)
        if data is not None:
            write_nifti(folder / "edits.nii.gz", labels, meta, labels=True, overwrite=True)
        case = self.case(case_id)
        n_slices = len(case.slices if data is not None else ran) or maps["votes"].shape[self.settings.axis]
        score = case_score(maps, self.settings.score, n_slices)
        before = case.score
        entry = {"score": score, "measure": self.settings.score, "fixed_voxels": int(result.provenance.get(
            "fixed_voxels", 0)), "slices": ran, "model_id": result.provenance["model_id"],
                 "seconds": result.provenance["seconds"], "time": _now()}
        state = "corrected" if data is not None else "proposed" if case.state != "accepted" else "accepted"
        ranking = slice_ranking(score_map(maps, self.settings.slice_score),
                                self.settings.axis if result.axis is not None else 0)
        self._set(case_id, state=state, score=score, ranking=[int(i) for i in ranking],
                  slices=case.slices if data is not None else ran, history=case.history + [entry])
        write_json(folder / "proposal.json", result.provenance)
        return {"score": score, "before": before, "fixed_voxels": entry["fixed_voxels"], "slices": ran}

    # --- editing and accepting ---------------------------------------------------------------------

    def save_edits(self, case_id: str, labels: np.ndarray) -> int:
        """Save the person's labels atomically; returns how many voxels are corrected in all."""
        from ..io import write_nifti

        data = self.load_labels(case_id)
        labels = np.asarray(labels)
        if labels.shape != data.labels.shape:
            raise ValueError(f"labels of shape {labels.shape} do not fit case {case_id!r} of shape {data.labels.shape}")
        if data.proposal is None:
            raise ValueError(f"case {case_id!r} has no proposal yet; propose it before editing")
        corrected = data.corrected | (labels != data.proposal)
        folder = self.case_dir(case_id)
        write_nifti(folder / "edits.nii.gz", labels, data.metadata, labels=True, overwrite=True)
        write_nifti(folder / "corrected.nii.gz", corrected.astype(np.uint8), data.metadata, labels=True,
                    overwrite=True)
        if self.case(case_id).state == "proposed" and corrected.any():
            self._set(case_id, state="corrected")
        return int(corrected.sum())

    def accept(self, case_id: str, labels: np.ndarray | None = None) -> Path:
        """Write the case's labels (``labels``, else the saved ones) as NIfTI in the scan's space with
        a JSON record of what proposed them and which voxels were corrected; the case is accepted."""
        from ..io import write_nifti

        if labels is not None:
            self.save_edits(case_id, labels)
        data = self.load_labels(case_id)
        if data.proposal is None and labels is None:
            raise ValueError(f"case {case_id!r} has no proposal or labels to accept")
        folder = self.out_dir / "accepted"
        path = write_nifti(folder / f"{case_id}_labels.nii.gz", data.labels, data.metadata, labels=True,
                           overwrite=True)
        write_nifti(folder / f"{case_id}_corrected.nii.gz", data.corrected.astype(np.uint8), data.metadata,
                    labels=True, overwrite=True)
        proposal = self.case_dir(case_id) / "proposal.json"
        case = self.case(case_id)
        write_json(folder / f"{case_id}_labels.json", {
            "scan": str(self.scans_dir / case.scan), "accepted": _now(), "slices": case.slices,
            "proposed_by": read_json(proposal) if proposal.exists() else None,
            "corrected_voxels": int(data.corrected.sum()), "corrected_file": f"{case_id}_corrected.nii.gz",
            "labelled_voxels": int((data.labels > 0).sum()), "history": case.history})
        self._set(case_id, state="accepted")
        return path

    def accepted(self) -> list[str]:
        return [c.id for c in self.cases if c.state == "accepted"]

    def switch_model(self, model: str) -> None:
        """Make ``model`` (a name or ``.safetensors`` path) the session's model from now on."""
        with self._mutex:
            self.settings = replace(self.settings, model=str(model))
            self.models.append({"model": str(model), "since": _now()})
            self._write()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")
