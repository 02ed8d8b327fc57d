"""The ``mteb.models.ModelMeta`` of an e5-omni model (:func:`e5omni_model_meta`): from the model and its files.

Part of the [mteb] integration; :mod:`e5omni.evaluation.mteb_model` re-exports the public names.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from e5omni.evaluation.embeddings import model_fingerprint

logger = logging.getLogger(__name__)

try:  # the [mteb] extra; everything below needs it
    import mteb  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("e5omni.evaluation.mteb_model needs mteb: pip install 'e5-omni[mteb]'") from err
from mteb.models import ModelMeta  # noqa: E402
from mteb.models.model_meta import ScoringFunction  # noqa: E402

__all__ = ["e5omni_model_meta"]

#: ISO 639-1 codes of model cards -> mteb's ISO 639-3 + script codes (others are left out, with a warning).
_LANGUAGES = {
    "en": "eng-Latn", "zh": "zho-Hans", "de": "deu-Latn", "fr": "fra-Latn", "es": "spa-Latn", "it": "ita-Latn",
    "pt": "por-Latn", "ru": "rus-Cyrl", "ja": "jpn-Jpan", "ko": "kor-Hang", "ar": "ara-Arab", "nl": "nld-Latn",
}  # fmt: skip


def _card_metadata(source: str | None, revision: str | None) -> dict[str, Any]:
    """The YAML front matter of the folder's (or Hub repo's, from the local cache) README.md; {} if there is none."""
    if source is None:
        return {}
    from huggingface_hub import metadata_load

    path = Path(source) / "README.md"
    if not path.is_file() and not Path(source).exists():
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(source, "README.md", revision=revision))
        except Exception as err:  # noqa: BLE001 - a card is optional; say why it was not read
            logger.info("no model card read for %s: %s", source, err)
            return {}
    if not path.is_file():
        return {}
    try:
        return metadata_load(path) or {}
    except Exception as err:  # noqa: BLE001 - a malformed card must not stop an evaluation
        logger.warning("could not parse the model card front matter of %s: %s", path, err)
        return {}


def _languages(card: Mapping[str, Any]) -> list[str] | None:
    codes = card.get("language")
    codes = [codes] if isinstance(codes, str) else list(codes or [])
    known = [_LANGUAGES[c] for c in codes if c in _LANGUAGES]
    unknown = [c for c in codes if c not in _LANGUAGES]
    if unknown:
        logger.warning("model card languages %s have no mteb code here; pass meta={'languages': [...]}", unknown)
    return known or None


def _valid_license(value: Any) -> str | None:
    from typing import get_args

    from mteb.types import Licenses

    if value is None:
        return None
    allowed = {v for arg in get_args(Licenses) for v in (get_args(arg) or (arg,))}
    text = str(value).lower()
    if text in allowed or text.startswith(("http://", "https://")):
        return text
    logger.warning("license %r is not one mteb knows; recorded as 'not specified' (pass meta={'license': ...})", value)
    return "not specified"


def _folder_date(folder: Path) -> str | None:
    weights = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not weights:
        return None
    stamp = max(w.stat().st_mtime for w in weights)
    return datetime.datetime.fromtimestamp(stamp, tz=datetime.timezone.utc).date().isoformat()


def e5omni_model_meta(
    model: Any,
    *,
    source: str | None = None,
    name: str | None = None,
    revision: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    loader_kwargs: Mapping[str, Any] | None = None,
    loader: Any = None,
) -> ModelMeta:
    """The ``mteb.models.ModelMeta`` of an e5-omni model, from the model and (when ``source`` is a folder or Hub id)
    its files. ``overrides`` set any field; the result is validated by mteb.

    ``loader`` is what ``meta.load_model()`` calls: :class:`~e5omni.evaluation.mteb_encoder.E5OmniMTEBEncoder`, which
    the encoder passes for itself and the public ``e5omni.evaluation.mteb_encoder.e5omni_model_meta`` by default (this
    module never imports the encoder module, which imports it)."""
    config = model.config
    folder = Path(source) if source is not None and Path(source).is_dir() else None
    hub_id = source if source is not None and folder is None else None
    card = _card_metadata(source, revision)
    if name is None:
        if hub_id is not None:
            name = hub_id
        else:
            stem = folder.resolve().name if folder is not None else "unsaved"
            name = f"e5omni-local/{stem}"
    commit = getattr(config, "_commit_hash", None) if hub_id is not None else None
    frameworks = ["PyTorch", "Transformers"]
    if folder is not None and (folder / "modules.json").is_file():
        frameworks.append("Sentence Transformers")
    if folder is not None and any(folder.glob("*.safetensors")):
        frameworks.append("safetensors")
    parameters = list(model.parameters())
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    kwargs = dict(loader_kwargs or {})
    if folder is not None:
        kwargs["path"] = str(folder.resolve())
    fields: dict[str, Any] = {
        "loader": loader,
        "loader_kwargs": {k: v for k, v in kwargs.items() if v not in (None, False)},
        "name": name,
        "revision": commit or revision or model_fingerprint(model),
        "release_date": _folder_date(folder) if folder is not None else None,
        "languages": _languages(card),
        "n_parameters": int(sum(p.numel() for p in parameters)),
        "n_embedding_parameters": int(embeddings.weight.numel()) if embeddings is not None else None,
        "memory_usage_mb": round(sum(p.numel() * p.element_size() for p in parameters) / 2**20, 2),
        "max_tokens": float(config.max_length),
        "embed_dim": int(config.hidden_size),
        "license": _valid_license(card.get("license")),
        "open_weights": True,
        "public_training_code": None,
        "public_training_data": None,
        "framework": frameworks,
        "reference": f"https://huggingface.co/{hub_id}" if hub_id is not None else None,
        "similarity_fn_name": ScoringFunction.COSINE,
        "use_instructions": True,
        "training_datasets": None,
        "adapted_from": card.get("base_model") if isinstance(card.get("base_model"), str) else None,
        "modalities": list(config.modalities),
        "model_type": ["dense"],
    }
    fields.update(overrides or {})
    return ModelMeta(**fields)
