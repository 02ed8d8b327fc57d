"""Render the Hub README (model card) of an e5-omni model from a context dict.

`context_from_folder(folder, **extra)` reads what the folder itself knows (config.json: backbone, dimension,
modalities, prompts, media budgets; the weights: learned temperatures and whitening statistics, parameter count) and
merges `extra`, which is what only the training run knows:

    repo_id          "owner/name" (usage snippets)            revision    branch, tag or commit sha for the snippets
    model_name       title (default: the repo name)           base_model  Hub id of the backbone that was fine-tuned
    datasets         list of Hub dataset ids                   language    list of language codes
    training         {hyperparameter: value}                   loss        E5OmniLoss.get_config_dict()
    metrics          {"before": {PAIR: {"recall@1": ..}, "overall": {..}}, "after": {...}} or one such dict
    eval_dataset     {"type": Hub id or name, "name": pretty name, "split": "test"}
    description      a paragraph about this model             limitations extra bullet points
    tags             extra tags                                license     default "mit"

`render_model_card(context)` validates and completes the context, builds the YAML front matter in Python (dumped
with `yaml.safe_dump`, never templated by hand, so quoting cannot break the metadata) and renders
`template.md.jinja` with `StrictUndefined`, so a missing value fails loudly instead of leaving a blank in the card.

Metadata choices:
- `library_name: sentence-transformers`. The repo ships modules.json + config_sentence_transformers.json and the
  sentence-transformers path returns exactly the contract vectors (last-token pooling, L2 norm, prompts). With
  `transformers` the Hub would suggest the generic feature-extraction pipeline, which returns unpooled token states,
  i.e. wrong embeddings. The card still documents `AutoModel` first-class.
- `pipeline_tag: feature-extraction`: the model maps any item (not only sentences) to a vector; sentence-transformers
  itself uses this tag for its non-text-only encoders. `sentence-similarity` is kept as a tag for discoverability.
- `model-index` lists the final run's metrics (the "after" run, or the only one), one result per evaluated
  modality pair (the pair is the dataset `config`), built with `huggingface_hub`'s own `eval_results_to_model_index`.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import yaml

from e5omni.citation import CITATION

from .calibration import MODALITIES, calibration_summary

TEMPLATE_NAME = "template.md.jinja"

PAPER_URL = "https://arxiv.org/abs/2601.03666"

BACKBONE_NAMES = {
    "qwen2_5_omni_thinker": "Qwen2.5-Omni thinker",
    "qwen2_vl": "Qwen2-VL",
    "qwen2_5_vl": "Qwen2.5-VL",
}

#: Models below this size are the embedded tiny/demo models: the card says so instead of promising quality.
TINY_MODEL_PARAMETERS = 50_000_000

_RUN_ORDER = ("before", "after")


class ModelCardContextError(ValueError):
    """The context lacks something the card needs, or holds a value of the wrong shape."""


# ---------------------------------------------------------------------------------------------------------- context
def _hidden_size(backbone: dict[str, Any]) -> int | None:
    text = backbone.get("text_config")
    if isinstance(text, dict) and text.get("hidden_size"):
        return int(text["hidden_size"])
    return int(backbone["hidden_size"]) if backbone.get("hidden_size") else None


def _count_parameters(folder: Path) -> int | None:
    """Number of stored tensor elements, from the safetensors headers only (no tensor is read)."""
    from safetensors import safe_open

    total = 0
    files = sorted(folder.glob("*.safetensors"))
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                total += math.prod(handle.get_slice(key).get_shape())
    return total if files else None


def context_from_folder(folder: str | os.PathLike, **extra: Any) -> dict[str, Any]:
    """Context for `render_model_card` read from a saved e5-omni folder, updated with `extra` (see module doc).

    `extra["calibration"]`, when given, is used instead of re-reading the weights (the push computes it once).
    """
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    backbone = config.get("backbone_config") or {}
    st_config_path = folder / "config_sentence_transformers.json"
    st_config = json.loads(st_config_path.read_text(encoding="utf-8")) if st_config_path.is_file() else {}
    prompts = st_config.get("prompts") or {}
    calibration = extra.pop("calibration", None) or calibration_summary(folder)
    context: dict[str, Any] = {
        "backbone": backbone.get("model_type"),
        "dim": _hidden_size(backbone),
        "modalities": list(config.get("modalities") or MODALITIES),
        "query_prompt": prompts.get("query", config.get("query_prompt", "Query: ")),
        "document_prompt": prompts.get("document", config.get("document_prompt", "")),
        "eos_suffix": config.get("eos_suffix", "<|endoftext|>"),
        "budgets": {
            key: config.get(key)
            for key in (
                "max_length",
                "max_pixels",
                "min_pixels",
                "video_max_pixels",
                "video_min_pixels",
                "max_decode_pixels",
                "max_frames",
                "fps",
                "max_audio_seconds",
            )
        },
        "image_formats": list(config.get("image_formats") or []),
        "allow_remote_media": bool(config.get("allow_remote_media", False)),
        "num_parameters": _count_parameters(folder),
        "requirements": dict(st_config.get("requirements") or {}),
        "calibration": calibration,
    }
    context.update(extra)
    return context


# ---------------------------------------------------------------------------------------------------------- metrics
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def normalize_metrics(metrics: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """Any accepted metrics shape -> {run: {group: {metric: value}}}.

    Accepted: `{"before": {...}, "after": {...}}` (runs of groups), `{PAIR: {metric: v}, "overall": {...}}` (one
    run, named "result"), or a flat `{metric: v}` (one run, one group "overall"). Groups are modality pairs such as
    "text->image" plus "overall".
    """
    if not metrics:
        return {}
    if not isinstance(metrics, dict):
        raise ModelCardContextError(f"metrics must be a dict, got {type(metrics).__name__}")
    values = list(metrics.values())
    if (
        all(isinstance(v, dict) for v in values)
        and values
        and all(all(isinstance(g, dict) for g in v.values()) for v in values)
    ):
        runs = metrics
    elif all(isinstance(v, dict) for v in values):
        runs = {"result": metrics}
    elif all(not isinstance(v, dict) for v in values):
        runs = {"result": {"overall": metrics}}
    else:
        raise ModelCardContextError(
            "metrics mixes groups and plain values; expected {run: {group: {metric: value}}}, "
            "{group: {metric: value}} or {metric: value}"
        )
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for run in sorted(runs, key=lambda r: (_RUN_ORDER.index(r) if r in _RUN_ORDER else len(_RUN_ORDER), r)):
        groups = runs[run]
        ordered = sorted(groups, key=_group_order)
        out[str(run)] = {str(g): {str(k): _plain(v) for k, v in groups[g].items()} for g in ordered}
    return out


def _group_order(group: str) -> tuple[bool, str]:
    """Modality pairs first (alphabetically), then the aggregates ("overall", "overall_micro")."""
    return group.startswith("overall"), group


def is_count(metric: str) -> bool:
    """`num_queries`, `num_candidates`, `num_pairs` (e5omni.evaluation): sizes, not scores; kept out of the tables."""
    return metric.startswith("num_")


def query_counts(runs: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """{pair: num_queries} of the final run, for the sentence under the table (aggregates left out)."""
    run = final_run(runs)
    if run is None:
        return {}
    groups = runs[run].items()
    return {g: v["num_queries"] for g, v in groups if not g.startswith("overall") and _is_number(v.get("num_queries"))}


def _plain(value: Any) -> Any:
    """numpy / torch scalars -> Python numbers (YAML and JSON refuse them)."""
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (TypeError, ValueError):
            return value
    return value


def final_run(runs: dict[str, dict]) -> str | None:
    """The run whose metrics describe the published model: "after" if present, else the last one."""
    if not runs:
        return None
    return "after" if "after" in runs else list(runs)[-1]


def metrics_table(runs: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Rows {group, metric, values: [per run], delta} for the markdown table; delta only with before and after."""
    rows = []
    names = list(runs)
    keys: list[tuple[str, str]] = []
    for groups in runs.values():
        for group, values in groups.items():
            keys.extend((group, metric) for metric in values if (group, metric) not in keys and not is_count(metric))
    keys.sort(key=lambda gm: _group_order(gm[0]))
    for group, metric in keys:
        values = [runs[name].get(group, {}).get(metric) for name in names]
        delta = None
        if len(names) == 2 and all(_is_number(v) for v in values):
            delta = values[1] - values[0]
        rows.append({"group": group, "metric": metric, "values": values, "delta": delta})
    return rows


def model_index(model_name: str, runs: dict, eval_dataset: dict[str, Any]) -> list[dict[str, Any]]:
    """`model-index` of the final run: one result per group (modality pair), metrics inside."""
    from huggingface_hub.repocard_data import EvalResult, eval_results_to_model_index

    run = final_run(runs)
    if run is None:
        return []
    results = []
    for group, values in runs[run].items():
        for metric, value in values.items():
            if not _is_number(value) or is_count(metric):
                continue
            results.append(
                EvalResult(
                    task_type="information-retrieval",
                    task_name="Omni-modal retrieval",
                    dataset_type=str(eval_dataset["type"]),
                    dataset_name=f"{eval_dataset['name']} ({group})",
                    dataset_config=group,
                    dataset_split=eval_dataset.get("split"),
                    metric_type=metric,
                    metric_name=f"{group} {metric}",
                    metric_value=round(float(value), 6),
                )
            )
    return eval_results_to_model_index(model_name, results) if results else []


# ---------------------------------------------------------------------------------------------------------- render
def _format_number(value: Any, digits: int = 4) -> str:
    """Numbers for tables: 4 decimals, scientific notation for very small or large values, '-' for missing."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        if math.isfinite(value) and value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.3e}"
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    return str(value)


def _short(value: Any) -> str:
    """Settings and budgets as written: 2.0 -> "2", 0.0001 -> "0.0001", True -> "true"."""
    if isinstance(value, bool) or value is None:
        return _format_number(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return _format_number(value) if isinstance(value, int) else str(value)


def _cell(value: Any) -> str:
    """A value made safe for one markdown table cell (no pipes, no newlines)."""
    text = value if isinstance(value, str) else _short(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _human_pixels(pixels: Any) -> str:
    if not _is_number(pixels):
        return "-"
    side = math.isqrt(int(pixels))
    return f"{int(pixels):,} px (~{side}x{side})"


def _pair_temperature_rows(calibration: dict[str, Any], modalities: list[str]) -> list[dict[str, Any]]:
    """Worked examples: tau(q, d) for a text query against each single-modality document, and what cos 0.5 becomes."""
    taus = calibration["temperatures"]
    rows = []
    if "text" not in modalities:
        return rows
    for doc in modalities:
        tau = (taus["text"] + taus[doc]) / 2
        rows.append({"query": "text", "doc": doc, "tau": tau, "score_at_half": 0.5 / tau})
    return rows


def _repo_defaults(context: dict[str, Any]) -> None:
    repo_id = context.get("repo_id") or "your-namespace/your-e5-omni-model"
    context["repo_id"] = repo_id
    context.setdefault("model_name", None)
    context["model_name"] = context["model_name"] or repo_id.split("/")[-1]
    revision = context.get("revision")
    context["revision"] = revision or "main"
    context["revision_is_commit"] = bool(revision and re.fullmatch(r"[0-9a-f]{40}", revision))


def complete_context(context: dict[str, Any]) -> dict[str, Any]:
    """Validate `context` and fill every optional key, so the template never meets an undefined value."""
    ctx = dict(context)
    missing = [k for k in ("modalities", "dim", "calibration", "budgets") if ctx.get(k) in (None, {}, [])]
    if missing:
        raise ModelCardContextError(
            f"model card context lacks {missing}; build it with context_from_folder(folder, **extra)"
        )
    unknown = [m for m in ctx["modalities"] if m not in MODALITIES]
    if unknown:
        raise ModelCardContextError(f"unknown modalities {unknown}; expected a subset of {MODALITIES}")
    _repo_defaults(ctx)
    ctx.setdefault("license", "mit")
    ctx["license"] = ctx["license"] or "mit"
    for key in ("datasets", "language", "tags", "limitations"):
        value = ctx.get(key) or []
        ctx[key] = [value] if isinstance(value, str) else list(value)
    for key in ("training", "loss"):
        value = ctx.get(key) or {}
        if not isinstance(value, dict):
            raise ModelCardContextError(f"{key} must be a dict of name -> value, got {type(value).__name__}")
        ctx[key] = {str(k): _plain(v) for k, v in value.items()}
    for key in ("base_model", "description", "backbone", "num_parameters", "query_prompt", "document_prompt"):
        ctx.setdefault(key, None)
    ctx.setdefault("eos_suffix", "<|endoftext|>")
    ctx.setdefault("image_formats", [])
    ctx["requirements"] = dict(ctx.get("requirements") or {})
    ctx.setdefault("allow_remote_media", False)
    ctx["query_prompt"] = ctx["query_prompt"] if ctx["query_prompt"] is not None else "Query: "
    ctx["document_prompt"] = ctx["document_prompt"] or ""
    budgets = dict(ctx["budgets"])
    ctx["budgets"] = budgets
    eval_dataset = dict(ctx.get("eval_dataset") or {})
    eval_dataset.setdefault("type", "custom")
    eval_dataset.setdefault("name", "held-out evaluation set")
    eval_dataset.setdefault("split", None)
    ctx["eval_dataset"] = eval_dataset
    runs = normalize_metrics(ctx.get("metrics"))
    ctx["runs"] = list(runs)
    ctx["metric_rows"] = metrics_table(runs)
    ctx["final_run"] = final_run(runs)
    ctx["query_counts"] = query_counts(runs)
    ctx["model_index"] = model_index(ctx["model_name"], runs, eval_dataset)
    calibration = ctx["calibration"]
    if "temperatures" not in calibration or "whitening" not in calibration:
        raise ModelCardContextError("calibration must be calibration_summary(folder) (temperatures and whitening)")
    ctx["pair_rows"] = _pair_temperature_rows(calibration, ctx["modalities"])
    ctx["backbone_name"] = BACKBONE_NAMES.get(ctx["backbone"], ctx["backbone"] or "a VLM backbone")
    ctx["is_tiny"] = bool(ctx["num_parameters"]) and ctx["num_parameters"] < TINY_MODEL_PARAMETERS
    ctx["citation"] = CITATION
    ctx["paper_url"] = PAPER_URL
    return ctx


def front_matter(ctx: dict[str, Any]) -> dict[str, Any]:
    """The YAML metadata block (see the module docstring for the choices)."""
    tags = ["sentence-transformers", "feature-extraction", "sentence-similarity", "e5-omni", "omni-modal"]
    tags += ["multimodal", "embeddings", "retrieval", *ctx["modalities"], "custom_code", *ctx["tags"]]
    meta: dict[str, Any] = {}
    if ctx["language"]:
        meta["language"] = ctx["language"]
    meta["license"] = ctx["license"]
    meta["library_name"] = "sentence-transformers"
    meta["pipeline_tag"] = "feature-extraction"
    meta["tags"] = list(dict.fromkeys(tags))
    if ctx["base_model"]:
        meta["base_model"] = ctx["base_model"]
    if ctx["datasets"]:
        meta["datasets"] = ctx["datasets"]
    if ctx["model_index"]:
        meta["model-index"] = ctx["model_index"]
    return meta


def _environment():
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(
        loader=FileSystemLoader(str(Path(__file__).resolve().parent)),
        undefined=StrictUndefined,
        autoescape=False,  # markdown, not HTML; table cells go through the `cell` filter instead
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _format_number
    env.filters["cell"] = _cell
    env.filters["short"] = _short
    env.filters["pixels"] = _human_pixels
    env.filters["pyrepr"] = repr
    return env


def render_model_card(context: dict[str, Any]) -> str:
    """The Hub README.md for `context` (see `context_from_folder`)."""
    ctx = complete_context(context)
    meta = yaml.safe_dump(front_matter(ctx), sort_keys=False, allow_unicode=True, width=1000)
    text = _environment().get_template(TEMPLATE_NAME).render(front_matter=meta.rstrip("\n"), **ctx)
    return re.sub(r"\n{3,}", "\n\n", text).rstrip("\n") + "\n"


__all__ = [
    "CITATION",
    "ModelCardContextError",
    "complete_context",
    "context_from_folder",
    "front_matter",
    "metrics_table",
    "model_index",
    "normalize_metrics",
    "render_model_card",
]
