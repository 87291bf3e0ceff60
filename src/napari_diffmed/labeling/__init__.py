"""Annotation-assisted labeling over many scans: a session on disk, proposals ranked by uncertainty,
corrections held fixed when proposing again, acceptance with provenance, and fine-tuning on the
accepted cases. No Qt here: the widget (``_qt/labeling.py``) and ``napari-diffmed label`` drive it."""

from .background import AHEAD, URGENT, Background, Cancelled, Event
from .finetune import FinetuneSettings, iter_finetune
from .cases import STATES, Case, CaseData, LabelSettings
from .session import Session
from .store import SessionLocked

__all__ = ["AHEAD", "URGENT", "Background", "Cancelled", "Case", "CaseData", "Event", "FinetuneSettings",
           "LabelSettings", "STATES", "Session", "SessionLocked", "iter_finetune"]
