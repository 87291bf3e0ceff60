"""From a scan to a model's template space and back (no Qt, no napari).

>>> model_scan, transform = to_model_space(scan, spacing, card, PreprocessSettings())  # doctest: +SKIP
>>> labels_on_scan = transform.back(labels_on_template, kind="labels")  # doctest: +SKIP
"""

from .pipeline import PreprocessSettings, RegistrationError, in_template_space, resolve, to_model_space
from .transform import Transform

__all__ = ["PreprocessSettings", "RegistrationError", "Transform", "in_template_space", "resolve", "to_model_space"]
