"""The Hub README (model card) and the `calibration.json` summary of an e5-omni model.

    from e5omni.model_card import context_from_folder, render_model_card
    readme = render_model_card(context_from_folder("out/model", repo_id="me/e5-omni-ft", metrics=metrics))

`e5omni.publish.push_folder` renders both into the single commit it makes.
"""

from .calibration import CALIBRATION_FORMAT, CalibrationError, calibration_summary, read_alignment_tensors
from .render import (
    CITATION,
    ModelCardContextError,
    complete_context,
    context_from_folder,
    front_matter,
    normalize_metrics,
    render_model_card,
)

__all__ = [
    "CALIBRATION_FORMAT",
    "CITATION",
    "CalibrationError",
    "ModelCardContextError",
    "calibration_summary",
    "complete_context",
    "context_from_folder",
    "front_matter",
    "normalize_metrics",
    "read_alignment_tensors",
    "render_model_card",
]
