"""A human-readable summary of a folder's learned alignment state (what `calibration.json` holds).

The exact values live in the safetensors weights (`alignment.log_temperature`, `alignment.whitening_*`), where
`from_pretrained` reads them; this summary exists so that a person browsing the Hub repo can see the learned
per-modality temperatures tau_m and whether whitening was estimated, without loading the model. It is derived from the
weights at push time, so it cannot drift from them.

Only the alignment tensors are read (safetensors reads headers and the requested tensors, never the whole file).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from modeling_e5omni.configuration_e5omni import MODALITIES  # the one definition (order of log_temperature)

CALIBRATION_FORMAT = "e5omni-calibration/1"

#: What a calibrated score is, in words (also used by the model card).
CALIBRATED_SCORE_MEANING = (
    "cos(q, d) / tau(q, d): the logit the model was trained with. tau(x) is the mean of the learned tau_m over the "
    "modalities present in x, tau(q, d) = (tau(q) + tau(d)) / 2. Raw cosines of different modality pairs live on "
    "different scales; calibrated scores put them on one scale, so scores of (text, image) and (text, audio) pairs "
    "can be ranked together and thresholded with one cut-off. They are not probabilities: a softmax over one query's "
    "candidates turns them into the training distribution."
)


class CalibrationError(ValueError):
    """The folder lacks the alignment state an e5-omni model carries (not an e5-omni folder, or damaged)."""


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise CalibrationError(f"{folder} has no config.json")
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("model_type") != "e5omni":
        raise CalibrationError(f"{path}: model_type is {config.get('model_type')!r}, expected 'e5omni'")
    return config


def read_alignment_tensors(folder: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """(weights file name, {short name: tensor}) of the `alignment.*` tensors, from whichever shard holds them."""
    from safetensors import safe_open

    folder = Path(folder)
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            names = {}
            for key in handle.keys():  # "alignment.X", or "<prefix>.alignment.X" under a wrapper
                head, sep, short = key.rpartition("alignment.")
                if sep and (not head or head.endswith(".")) and "." not in short:
                    names[short] = key
            if "log_temperature" in names:
                return path.name, {short: handle.get_tensor(key) for short, key in names.items()}
    raise CalibrationError(f"no safetensors file in {folder} holds alignment.log_temperature")


def _round(value: float, digits: int = 6) -> float:
    return float(f"{value:.{digits}g}") if math.isfinite(value) else value


def _whitening_summary(config: dict[str, Any], tensors: dict[str, Any]) -> dict[str, Any]:
    """Scalars that say whether whitening was estimated and how strongly it would transform embeddings.

    - `updates`: batches folded into the running statistics (0: never estimated; the matrix is the identity).
    - `mean_norm`: ||mu|| of the L2-normalised training embeddings. Close to 1 means every embedding shares one
      dominant direction (anisotropy): raw cosines are all high and bunched together.
    - `effective_rank`: (tr C)^2 / ||C||_F^2 of the running covariance C, between 1 and D; far below D means variance
      sits in few directions.
    - `matrix_condition_number` / `matrix_identity_distance`: how far W = (C + eps I)^(-1/2) is from a no-op.
    """
    import torch

    mean = tensors.get("whitening_mean")
    matrix = tensors.get("whitening_matrix")
    covariance = tensors.get("whitening_covariance")
    updates = tensors.get("whitening_updates")
    dim = int(matrix.shape[0]) if matrix is not None else None
    out: dict[str, Any] = {
        "enabled": bool(config.get("whitening", False)),
        "dim": dim,
        "eps": config.get("whitening_eps"),
        "momentum": config.get("whitening_momentum"),
        "updates": int(updates.item()) if updates is not None else None,
    }
    if matrix is not None:
        w = matrix.double()
        identity = torch.eye(w.shape[0], dtype=torch.float64)
        out["matrix_is_identity"] = bool(torch.equal(w, identity))
        out["matrix_identity_distance"] = _round(float(torch.linalg.matrix_norm(w - identity) / math.sqrt(dim)))
        symmetric = torch.allclose(w, w.T, atol=1e-6)
        values = torch.linalg.eigvalsh((w + w.T) / 2).abs() if symmetric else torch.linalg.svdvals(w)
        low, high = float(values.min()), float(values.max())
        out["matrix_singular_values"] = {"min": _round(low), "max": _round(high)}
        out["matrix_condition_number"] = _round(high / low) if low > 0 else math.inf
    if mean is not None:
        out["mean_norm"] = _round(float(mean.double().norm()))
    if covariance is not None:
        c = covariance.double()
        frob2 = float((c * c).sum())
        out["covariance_trace"] = _round(float(torch.trace(c)))
        out["effective_rank"] = _round(float(torch.trace(c)) ** 2 / frob2) if frob2 > 0 else None
    for key in (
        "matrix_is_identity",
        "matrix_identity_distance",
        "matrix_singular_values",
        "matrix_condition_number",
        "mean_norm",
        "covariance_trace",
        "effective_rank",
    ):
        out.setdefault(key, None)  # older folders lack some buffers: keep the keys, say "unknown"
    estimated = bool(out["updates"]) or out["matrix_is_identity"] is False
    out["estimated"] = estimated
    out["how_to_enable"] = "AutoModel.from_pretrained(repo, trust_remote_code=True, whitening=True)"
    return out


def calibration_summary(folder: str | os.PathLike) -> dict[str, Any]:
    """Summary of the learned temperatures and whitening statistics of an e5-omni folder (JSON-serialisable).

    Raises `CalibrationError` when the folder is not an e5-omni folder with alignment state in its weights.
    """
    folder = Path(folder)
    config = _read_config(folder)
    weights_file, tensors = read_alignment_tensors(folder)
    log_tau = [float(v) for v in tensors["log_temperature"].double().tolist()]
    if len(log_tau) != len(MODALITIES):
        raise CalibrationError(f"alignment.log_temperature has {len(log_tau)} entries, expected {len(MODALITIES)}")
    init = float(config.get("temperature_init", 0.02))
    temperatures = {m: _round(math.exp(v)) for m, v in zip(MODALITIES, log_tau)}
    return {
        "format": CALIBRATION_FORMAT,
        "weights_file": weights_file,
        "modalities": list(MODALITIES),
        "accepted_modalities": list(config.get("modalities") or MODALITIES),
        "temperatures": temperatures,
        "log_temperature": log_tau,
        "temperature_init": init,
        "temperature_range": [config.get("temperature_min"), config.get("temperature_max")],
        "temperatures_learned": any(abs(math.exp(v) - init) > 1e-6 * init for v in log_tau),
        "calibrated_score": {
            "meaning": CALIBRATED_SCORE_MEANING,
            "usage": "model.similarity(q, d, calibrated=True, query_modalities=[...], doc_modalities=[...])",
        },
        "whitening": _whitening_summary(config, tensors),
    }


__all__ = ["CALIBRATION_FORMAT", "CalibrationError", "calibration_summary", "read_alignment_tensors"]
