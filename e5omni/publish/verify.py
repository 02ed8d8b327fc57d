"""Verification: reload a folder (or exactly one pushed commit) through both entry paths and compare embeddings."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e5omni.publish.errors import VerificationError
from e5omni.publish.push import _hub_call
from e5omni.publish.stage import check_manifest
from e5omni.publish.tokens import resolve_token

logger = logging.getLogger(__name__)


def probe_items(modalities: Iterable[str]) -> dict[str, Any]:
    """Fixed, seeded probes: one per modality the model accepts, plus a mixed item. Deterministic across runs."""
    import numpy as np
    from PIL import Image

    modalities = set(modalities)
    rng = np.random.default_rng(20260107)
    image = Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8))
    t = np.arange(16000) / 16000
    audio = {"array": (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), "sampling_rate": 16000}
    video = rng.integers(0, 256, (4, 56, 56, 3), dtype=np.uint8)
    probes: dict[str, Any] = {"text": "a red circle in the top left corner"}
    if "image" in modalities:
        probes["image"] = {"image": image}
    if "audio" in modalities:
        probes["audio"] = {"audio": audio}
    if "video" in modalities:
        probes["video"] = {"video": video}
    mixed = {"text": "a caption with its picture and sound"}
    mixed.update({m: v for m, v in (("image", image), ("audio", audio), ("video", video)) if m in modalities})
    probes["mixed"] = mixed
    return probes


@dataclass(frozen=True)
class VerifyResult:
    """Max abs embedding difference per entry path and probe (`"query:text"` etc. for queries)."""

    folder: Path
    max_abs_diff: dict[str, dict[str, float]]
    atol: float
    loaded_from: dict[str, str]
    manifest_problems: tuple[str, ...] = ()

    @property
    def max_diff(self) -> float:
        return max(max(v.values()) for v in self.max_abs_diff.values())

    @property
    def ok(self) -> bool:
        return not self.manifest_problems and self.max_diff <= self.atol

    def __str__(self) -> str:
        probes = list(next(iter(self.max_abs_diff.values())))
        width = max(len(p) for p in probes)
        lines = [f"verified {self.folder}: {'OK' if self.ok else 'MISMATCH'} (max abs diff {self.max_diff:.2e}, "]
        lines[0] += f"tolerance {self.atol:.0e})"
        lines.append(f"  {'probe':<{width}}  " + "  ".join(f"{path:>21}" for path in self.max_abs_diff))
        for probe in probes:
            row = "  ".join(f"{self.max_abs_diff[path][probe]:>21.2e}" for path in self.max_abs_diff)
            lines.append(f"  {probe:<{width}}  {row}")
        lines += [f"  manifest: {p}" for p in self.manifest_problems]
        return "\n".join(lines)


def _load_reference(reference: Any):
    if isinstance(reference, (str, os.PathLike)):
        from modeling_e5omni import E5OmniModel

        return E5OmniModel.from_pretrained(reference)
    return reference


def _remote_code_model(folder: Path):
    """What `AutoModel.from_pretrained(folder, trust_remote_code=True)` gives a user without this package installed.

    In this process `modeling_e5omni` is registered with the Auto classes, and transformers then prefers the local
    class even with `trust_remote_code=True`; loading the class named by `auto_map` makes sure the *shipped* code runs.
    """
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    cls = get_class_from_dynamic_module(config["auto_map"]["AutoModel"], str(folder))
    return cls.from_pretrained(str(folder))


def verify_folder(reference: Any, folder: str | os.PathLike, *, atol: float = 1e-5, verbose: bool = True):
    """Reload `folder` through both entry paths (remote code, as Hub users get it) and compare with `reference`.

    `reference` is the pushed model (an `E5OmniModel` with its processor set) or the local folder it was saved to.
    The reloads run in fp32 on CPU, so the 1e-5 tolerance holds for a CPU fp32 reference; after GPU / bf16 training
    pass the saved folder instead of the in-memory model.
    Probes: `probe_items` as documents, and the text and mixed probes as queries. Also checks manifest.json.
    """
    import torch
    from sentence_transformers import SentenceTransformer

    folder = Path(folder)
    model = _load_reference(reference)
    probes = probe_items(model.config.modalities)
    names = list(probes)
    queries = {f"query:{k}": probes[k] for k in ("text", "mixed")}

    def embed(encode_document, encode_query) -> dict[str, torch.Tensor]:
        docs = encode_document(list(probes.values()))
        qs = encode_query(list(queries.values()))
        return {**dict(zip(names, docs)), **dict(zip(queries, qs))}

    expected = embed(model.encode_document, model.encode_query)
    auto = _remote_code_model(folder)
    st = SentenceTransformer(str(folder), trust_remote_code=True, device="cpu")
    loaded_from = {"transformers": type(auto).__module__, "sentence-transformers": type(st[0]).__module__}
    for path, module in loaded_from.items():
        if not module.startswith("transformers_modules."):
            raise VerificationError(f"{path} loaded {module}, not the code shipped in {folder}")
    got = {
        "transformers": embed(auto.encode_document, auto.encode_query),
        "sentence-transformers": embed(
            lambda items: st.encode_document(items, convert_to_tensor=True),
            lambda items: st.encode_query(items, convert_to_tensor=True),
        ),
    }
    diffs = {
        path: {k: float((vectors[k].float().cpu() - expected[k].float().cpu()).abs().max()) for k in expected}
        for path, vectors in got.items()
    }
    manifest = tuple(check_manifest(folder)) if (folder / "manifest.json").is_file() else ()
    result = VerifyResult(
        folder=folder, max_abs_diff=diffs, atol=atol, loaded_from=loaded_from, manifest_problems=manifest
    )
    logger.info("%s", result)
    if verbose:
        print(result)
    return result


def verify_push(
    reference: Any,
    repo_id: str,
    commit: str,
    *,
    api: Any = None,
    token: str | None = None,
    download_dir: str | os.PathLike | None = None,
    atol: float = 1e-5,
    verbose: bool = True,
) -> VerifyResult:
    """Download exactly `commit` of `repo_id` (`snapshot_download(repo_id, revision=commit)`) and `verify_folder` it.

    Downloading by commit sha (not branch) checks what this push committed even if the branch has moved since.
    This downloads the full weights; `api` is an `HfApi` (tests inject a fake that materialises its recorded commit).
    """
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    token = resolve_token(token)
    with tempfile.TemporaryDirectory(prefix="e5omni-verify-") as tmp:
        # The folder name carries the commit: transformers caches remote code per folder name.
        target = Path(download_dir or tmp) / f"{repo_id.replace('/', '--')}-{commit[:12]}"
        local = _hub_call(
            "snapshot_download", api.snapshot_download, token, repo_id, revision=commit, local_dir=str(target)
        )
        return verify_folder(reference, Path(local), atol=atol, verbose=verbose)
