"""Data specs: the one way every command turns a string into examples.

    synthetic:train | synthetic:test     the bundled generated set (e5omni.data.synthetic)
    FILE.jsonl | FILE.json | FILE.csv    our file schema (docs/data.md); media paths confined to `media_root`
    hub:NAME[:split]                     a Hugging Face dataset in our column layout, or a save_to_disk folder
    mmeb:PATH[?split=original]           VLM2Vec's MMEB-train as it ships (a Parquet file or a folder of them)
    tevatron:PATH[?corpus=C&assets=A]    Tevatron's OmniEmbed format (queries + corpus), or its legacy text form
    caption:PATH                         a caption table (AudioCaps, MSR-VTT): `caption` + audio / video / image
    mix:FILE.yaml                        a weighted mixture of the forms above (e5omni.data.mixture)

The public forms (e5omni.data.public) take options after `?`, URL-query style (`&` between them); media paths are
confined to `media_root` (Tevatron: the `assets` option, else `media_root`).

`e5omni train --train_data/--eval_data` and `e5omni eval --data` both call `load_data_spec`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from e5omni.data.errors import DataError

SYNTHETIC_SPLITS = ("train", "test")
FILE_SUFFIXES = (".jsonl", ".json", ".csv")
SPEC_FORMS = (
    "synthetic:train, synthetic:test, a .jsonl / .json / .csv file, hub:NAME[:split], mmeb:PATH, tevatron:PATH, "
    "caption:PATH or mix:FILE.yaml"
)
SPEC_OPTIONS = {"mmeb": ("split",), "tevatron": ("corpus", "assets"), "caption": ()}


class DataSpecError(DataError):
    """A data spec that names nothing we can read (unknown form, missing file, unknown split, no examples)."""


def load_data_spec(
    spec: str,
    *,
    split: str = "train",
    media_root: str | os.PathLike | None = None,
    limit: int | None = None,
    synthetic_size: int | None = None,
    synthetic_seed: int = 0,
    synthetic_difficulty: float | None = None,
    synthetic_pairs: Sequence[str] | None = None,
    max_audio_seconds: float | None = None,
    media_cache: str | os.PathLike | None = None,
) -> Sequence[dict[str, Any]]:
    """Examples named by `spec` (see the module docstring).

        `split` is the default split for `hub:` specs without one. `synthetic_size` examples are generated for
        `synthetic:train` (None: the generator's default; the test split always has its fixed size); `synthetic_pairs`
    restricts the synthetic set to some modality pairs (e.g. without audio for a Qwen2-VL backbone). `limit` keeps the
        first examples. `max_audio_seconds` (the model's `config.max_audio_seconds`) bounds the decoding of audio
        stored as bytes in `hub:` / public tables; `media_cache` is where video bytes are written to be decoded as
        files (`e5omni.data.features`). Raises `DataSpecError` for a spec that cannot be read and when nothing is
        left.
    """
    if not isinstance(spec, str) or not spec:
        raise DataSpecError(f"expected a data spec ({SPEC_FORMS}), got {spec!r}")
    prefix = spec.split(":", 1)[0]
    if prefix in SPEC_OPTIONS:
        examples = _load_public(spec, prefix, media_root)
        if max_audio_seconds is not None or media_cache is not None:
            examples = examples.with_media_budget(max_audio_seconds, media_cache)
    elif prefix == "mix":
        from e5omni.data.mixture import load_mixture

        def load_source(source_spec: str, source_root: str | os.PathLike | None) -> Sequence[dict[str, Any]]:
            return load_data_spec(
                source_spec,
                split=split,
                media_root=source_root,
                max_audio_seconds=max_audio_seconds,
                media_cache=media_cache,
            )

        examples = load_mixture(spec[4:], load_source, media_root=media_root)
    elif spec.startswith("synthetic:"):
        from e5omni.data.synthetic import build_synthetic

        which = spec.split(":", 1)[1]
        if which not in SYNTHETIC_SPLITS:
            raise DataSpecError(f"unknown synthetic split {which!r} in {spec!r}; use synthetic:train or synthetic:test")
        n = synthetic_size if which == "train" else None
        examples: Sequence[dict[str, Any]] = build_synthetic(
            which, n=n, seed=synthetic_seed, difficulty=synthetic_difficulty, pairs=synthetic_pairs
        )
    elif spec.startswith("hub:"):
        from e5omni.data import load_hub_dataset

        name, _, hub_split = spec[4:].partition(":")
        if not name:
            raise DataSpecError(f"{spec!r} names no dataset; use hub:NAME[:split]")
        examples = load_hub_dataset(
            name,
            hub_split or None,
            default_split=split,
            media_root=media_root,
            max_audio_seconds=max_audio_seconds,
            media_cache=media_cache,
        )
    else:
        from e5omni.data import load_csv, load_jsonl

        path = Path(spec)
        if not path.is_file():
            raise DataSpecError(f"data file not found: {spec!r} (expected {SPEC_FORMS})")
        suffix = path.suffix.lower()
        if suffix not in FILE_SUFFIXES:
            raise DataSpecError(f"unsupported data file {spec!r}: expected {SPEC_FORMS}")
        reader = load_csv if suffix == ".csv" else load_jsonl
        examples = reader(path, media_root)
    if limit is not None:
        if limit < 1:
            raise DataSpecError(f"limit must be >= 1, got {limit}")
        examples = examples[:limit]
    if len(examples) == 0:
        raise DataSpecError(f"{spec!r} has no examples")
    return examples


def parse_options(spec: str, prefix: str) -> tuple[str, dict[str, str]]:
    """``PREFIX:PATH?key=value&key=value`` -> (PATH, options), refusing options the form does not take."""
    from urllib.parse import parse_qsl

    body = spec[len(prefix) + 1 :]
    path, _, query = body.partition("?")
    if not path:
        raise DataSpecError(f"{spec!r} names no path; use {prefix}:PATH")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True) if query else []
    except ValueError:
        raise DataSpecError(f"{spec!r}: options must read ?key=value&key=value") from None
    options: dict[str, str] = {}
    for key, value in pairs:
        if key not in SPEC_OPTIONS[prefix]:
            raise DataSpecError(
                f"{spec!r}: unknown option {key!r} for {prefix}:; it takes {list(SPEC_OPTIONS[prefix]) or 'none'}"
            )
        if key in options:
            raise DataSpecError(f"{spec!r}: option {key!r} given twice")
        options[key] = value
    return path, options


def _load_public(spec: str, prefix: str, media_root: str | os.PathLike | None) -> Sequence[dict[str, Any]]:
    from e5omni.data.public import CaptionExamples, MMEBExamples, TevatronExamples

    path, options = parse_options(spec, prefix)
    if not Path(path).exists():
        raise DataSpecError(f"{spec!r}: {path!r} not found (expected a table file or a folder of them)")
    if prefix == "mmeb":
        return MMEBExamples(path, media_root, split=options.get("split"))
    if prefix == "tevatron":
        corpus = options.get("corpus")
        if corpus is not None and not Path(corpus).exists():
            raise DataSpecError(f"{spec!r}: corpus {corpus!r} not found")
        return TevatronExamples(path, corpus, options.get("assets", media_root))
    return CaptionExamples(path, media_root)
