"""Encoding throughput of `E5OmniModel.encode_document`, measured side by side in one run on the same weights.

    python benchmarks/encode_throughput.py [--items 256] [--batch-size 32] [--repeats 5] [--threads 1]

One tiny random Qwen2.5-Omni thinker (`e5omni.tiny`, seed 0) is saved as a *backbone folder* in the released
checkpoint format (`Qwen2_5OmniThinkerForConditionalGeneration` + its processor and chat template) and converted to
our format with `e5omni.convert.convert_checkpoint`, so every path below runs the same backbone weights on the same
`--items` mixed-modality items from the bundled synthetic set (text, image, audio, video, and mixed text+image /
audio+video items, in equal shares, in that round-robin order):

(a) ours: `model.encode_document(items, batch_size=32)` against the model card's reference path run one item at a
    time (tests/reference.py's logic with the model and processor loaded once: chat template with
    `add_generation_prompt=True`, `<|endoftext|>` appended, processor, `ForConditionalGeneration` forward with
    `output_hidden_states=True`, `hidden_states[-1][:, -1]`, L2 norm). Target >= 4x; vectors identical to 1e-5.
(b) ours against sentence-transformers' stock `Transformer` + `Pooling(lasttoken)` + `Normalize` on the backbone
    folder, same batch size. The stock module renders no `<|endoftext|>` after the chat template, so for a fair
    timing (same tokens) it gets the folder's own chat template with `<|endoftext|>` appended, passed through its
    `processing_kwargs["chat_template"]`; the vectors of both stock variants are compared with ours. Target >= 0.95x.
(c) the wrapper's cost: `E5OmniModel.forward` (backbone + last-token pooling + fp32 + L2 norm) against the bare
    backbone forward (`model.backbone(...)`) on the same pre-processed batches. Target <= 1.10x.

Timings: one warm-up pass of every path, then `--repeats` passes with the paths interleaved; medians are compared.
Single-threaded by default (tiny model, shared 2-core machine). The last output line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

KINDS = ("text", "image", "audio", "video", "mixed")


# ------------------------------------------------------------------------------------------------------ set-up
def write_backbone_folder(model, processor, folder: Path) -> None:
    """The backbone of `model` as a released-format checkpoint: the thinker with an LM head, processor, template."""
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    generation = Qwen2_5OmniThinkerForConditionalGeneration(model.backbone.config).eval()
    generation.model.load_state_dict(model.backbone.state_dict(), strict=True)  # lm_head stays random: unused
    generation.save_pretrained(folder)
    processor.backbone_processor.save_pretrained(folder)


def mixed_items(n: int) -> list[dict]:
    """`n` distinct items from the synthetic test split, round-robin over text, image, audio, video, mixed."""
    from PIL import Image

    from e5omni.data import content_hash
    from e5omni.data.synthetic import build_synthetic

    pools: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    seen: set[int] = set()
    for example in build_synthetic("test", seed=1, instructions=False):
        for item in [example["query"], example["positive"], *example.get("negatives", [])]:
            if isinstance(item, str):
                item = {"text": item}
            elif isinstance(item, Image.Image):
                item = {"image": item}
            key = content_hash(item)
            if key in seen:
                continue
            seen.add(key)
            kind = next(iter(item)) if len(item) == 1 else "mixed"
            pools[kind].append(item)
    for kind, pool in pools.items():
        if len(pool) < math.ceil(n / len(KINDS)):
            raise RuntimeError(f"only {len(pool)} distinct {kind} items in the synthetic test split")
    return [pools[KINDS[i % len(KINDS)]][i // len(KINDS)] for i in range(n)]


class ReferenceEncoder:
    """The model card's path (tests/reference.py), one item per call, model and processor loaded once.

    `video_size` (None: the processor's call-time default, as the card) is passed as `videos_kwargs["size"]`."""

    def __init__(self, folder: Path, video_size: dict | None = None):
        from transformers import AutoProcessor, Qwen2_5OmniThinkerForConditionalGeneration

        self.model = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
        self.processor = AutoProcessor.from_pretrained(folder)
        self.processor.tokenizer.padding_side = "left"
        self.videos_kwargs = {"do_sample_frames": False, "cap_pixels_per_frame": True}
        if video_size is not None:
            self.videos_kwargs["size"] = video_size

    @torch.inference_mode()
    def embed_one(self, item: dict) -> torch.Tensor:
        content, kwargs = [], {}
        if "image" in item:
            content.append({"type": "image"})
            kwargs["images"] = [item["image"]]
        if "audio" in item:
            content.append({"type": "audio"})
            kwargs["audio"] = [item["audio"]["array"]]
        if "video" in item:
            content.append({"type": "video"})
            kwargs["videos"] = [item["video"]]
            kwargs["videos_kwargs"] = self.videos_kwargs
        if item.get("text"):
            content.append({"type": "text", "text": item["text"]})
        messages = [{"role": "user", "content": content}]
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = self.processor(text=[text + "<|endoftext|>"], padding=True, return_tensors="pt", **kwargs)
        out = self.model(**inputs, output_hidden_states=True)
        return torch.nn.functional.normalize(out.hidden_states[-1][:, -1].float(), dim=-1)[0]

    def encode(self, items: list[dict]) -> torch.Tensor:
        return torch.stack([self.embed_one(item) for item in items])


def stock_sentence_transformer(folder: Path, with_eos: bool, video_size: dict | None = None):
    """sentence-transformers' own modules on the backbone folder: Transformer + Pooling(lasttoken) + Normalize."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    chat_template: dict = {"add_generation_prompt": True}
    if with_eos:
        from transformers import AutoProcessor

        chat_template["chat_template"] = AutoProcessor.from_pretrained(folder).chat_template + "<|endoftext|>"
    video: dict = {"do_sample_frames": False, "cap_pixels_per_frame": True}
    if video_size is not None:
        video["size"] = video_size
    transformer = Transformer(str(folder), processing_kwargs={"chat_template": chat_template, "video": video})
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="lasttoken")
    return SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu")


def median_times(paths: dict, repeats: int) -> dict[str, float]:
    """Warm up every path once, then `repeats` interleaved rounds; median seconds per path."""
    for fn in paths.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(repeats):
        for name, fn in paths.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def max_diff_by_kind(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    rows = (a - b).abs().max(-1).values
    return {kind: rows[i :: len(KINDS)].max().item() for i, kind in enumerate(KINDS)}


def video_tokens(model, item: dict) -> int:
    grid = model.processor([item])["video_grid_thw"][0]
    return int(grid.prod()) // 4  # 2 x 2 patch merge


def measure(model, folder: Path, items: list[dict], bs: int, repeats: int, video_size: dict | None) -> dict:
    """(a), (b), (c) for one model (its processor sets the media budgets) against the backbone folder."""
    from modeling_e5omni.modeling_e5omni import _estimated_length
    from modeling_e5omni.processing_e5omni import normalize_item
    from tests.reference import reference_embed

    reference = ReferenceEncoder(folder, video_size)
    st_eos = stock_sentence_transformer(folder, with_eos=True, video_size=video_size)
    st_plain = stock_sentence_transformer(folder, with_eos=False, video_size=video_size)
    out: dict = {"video_tokens": video_tokens(model, items[KINDS.index("video")])}
    if video_size is None:  # the per-item loop is the model card's path: check it against tests/reference.py
        probe = items[: len(KINDS)]
        card_items = [{**i, "audio": i["audio"]["array"]} if "audio" in i else i for i in probe]  # raw arrays
        out["loop_vs_card"] = (reference.encode(probe) - reference_embed(folder, card_items)).abs().max().item()

    ours = model.encode_document(items, batch_size=bs, show_progress_bar=False)
    out["diff_ref"] = (ours - reference.encode(items)).abs().max().item()
    st_kw = {"batch_size": bs, "convert_to_tensor": True, "show_progress_bar": False}
    out["diff_st"] = max_diff_by_kind(ours, st_eos.encode(items, **st_kw))
    out["diff_st_plain"] = max_diff_by_kind(ours, st_plain.encode(items, **st_kw))

    # (a) + (b): end-to-end encoding of the same items, paths interleaved
    e2e = median_times(
        {
            "ours": lambda: model.encode_document(items, batch_size=bs, show_progress_bar=False),
            "reference": lambda: reference.encode(items),
            "sentence_transformers": lambda: st_eos.encode(items, **st_kw),
        },
        repeats,
    )
    # (c) our forward vs the bare backbone forward on the same pre-processed batches (encode's own batching)
    order = sorted(range(len(items)), key=lambda i: -_estimated_length(items[i]))
    batches = []
    for start in range(0, len(items), bs):
        decoded = [normalize_item(items[i], i, model.config) for i in order[start : start + bs]]
        batches.append(dict(model.processor.process_decoded(decoded, "document")))

    @torch.inference_mode()
    def ours_forward():
        for batch in batches:
            model(**batch)

    @torch.inference_mode()
    def raw_forward():
        for batch in batches:
            model.backbone(**{k: v for k, v in batch.items() if k != "modality_mask"})

    fwd = median_times({"ours_forward": ours_forward, "backbone_forward": raw_forward}, repeats)

    # (a) per kind: where batching pays (each kind's items alone, batched vs one at a time)
    out["per_kind"] = {}
    for k, kind in enumerate(KINDS):
        subset = items[k :: len(KINDS)]
        t = median_times(
            {
                "ours": lambda s=subset: model.encode_document(s, batch_size=bs, show_progress_bar=False),
                "reference": lambda s=subset: reference.encode(s),
            },
            max(1, repeats // 2),
        )
        out["per_kind"][kind] = {"items": len(subset), **t, "ratio": t["reference"] / t["ours"]}
    out.update(e2e)
    out.update(fwd)
    out["batched_vs_reference"] = e2e["reference"] / e2e["ours"]
    out["vs_sentence_transformers"] = e2e["sentence_transformers"] / e2e["ours"]
    out["wrapper_overhead"] = fwd["ours_forward"] / fwd["backbone_forward"]
    return out


def report(name: str, r: dict, n: int, bs: int) -> None:
    print(f"\n== {name}: a 4-frame 56x56 video is {r['video_tokens']} tokens")
    print(f"{'path':<58} {'s / pass':>9} {'items/s':>8} {'ratio':>8}")
    rows = [
        (f"(a) ours: encode_document, batch {bs}", r["ours"], None),
        ("(a) model-card reference loop, one item per call", r["reference"], r["batched_vs_reference"]),
        (
            "(b) stock ST Transformer+Pooling(lasttoken)+Normalize",
            r["sentence_transformers"],
            r["vs_sentence_transformers"],
        ),
        ("(c) E5OmniModel.forward on pre-processed batches", r["ours_forward"], None),
        ("(c) bare backbone forward on the same batches", r["backbone_forward"], r["wrapper_overhead"]),
    ]
    for label, seconds, ratio in rows:
        extra = f"{ratio:>7.2f}x" if ratio is not None else ""
        print(f"{label:<58} {seconds:>9.3f} {n / seconds:>8.0f} {extra:>8}")
    check = f"; per-item loop vs tests/reference.py: {r['loop_vs_card']:.1e}" if "loop_vs_card" in r else ""
    print(
        f"(a) ours vs reference loop: {r['batched_vs_reference']:.2f}x (target >= 4x); max abs diff "
        f"{r['diff_ref']:.1e} (target < 1e-5){check}"
    )
    kinds = ", ".join(f"{kind} {v['ratio']:.1f}x" for kind, v in r["per_kind"].items())
    print(f"    per kind (each kind's items alone, batched vs one at a time): {kinds}")
    print(f"(b) ours vs stock sentence-transformers: {r['vs_sentence_transformers']:.2f}x (target >= 0.95x)")
    fmt = lambda d: ", ".join(f"{k} {v:.1e}" for k, v in d.items())  # noqa: E731
    print(f"    max abs diff to ours, stock + <|endoftext|> in its template: {fmt(r['diff_st'])}")
    print(f"    max abs diff to ours, stock as is (no <|endoftext|>):         {fmt(r['diff_st_plain'])}")
    print(
        f"(c) wrapper overhead, E5OmniModel.forward / backbone forward: {r['wrapper_overhead']:.3f}x (target <= 1.10x)"
    )


# ---------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-card-budget", action="store_true", help="only the tiny model's own media budgets")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    from e5omni.convert import convert_checkpoint
    from e5omni.tiny import build_tiny_model
    from modeling_e5omni import E5OmniModel

    items = mixed_items(args.items)
    n, bs = len(items), args.batch_size
    model, processor = build_tiny_model("qwen2.5-omni", seed=0)
    model.set_processor(processor)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), fp32, CPU; tiny qwen2.5-omni "
        f"(e5omni.tiny, seed 0, hidden {model.config.hidden_size}); {n} items ({', '.join(KINDS)} round-robin); "
        f"batch {bs}; median of {args.repeats} interleaved passes after a warm-up"
    )
    results = {}
    with tempfile.TemporaryDirectory(prefix="e5omni-encode-bench-") as tmp:
        folder = Path(tmp) / "backbone"
        write_backbone_folder(model, processor, folder)
        c = model.config
        tiny_video = {"shortest_edge": c.video_min_pixels, "longest_edge": c.video_max_pixels}
        results["tiny"] = measure(model, folder, items, bs, args.repeats, tiny_video)
        report(
            "the tiny model's own budgets (videos at 56x56; the reference and ST get the same video size)",
            results["tiny"],
            n,
            bs,
        )
        if not args.skip_card_budget:
            # The same weights converted from the folder: the converted config records the Omni processor's call-time
            # video budget (NOTES.md), which upscales the 56x56 frames; the reference and ST use their defaults.
            converted = E5OmniModel.from_pretrained(convert_checkpoint(folder, Path(tmp) / "converted")).eval()
            results["card"] = measure(converted, folder, items, bs, args.repeats, None)
            report(
                "converted from the backbone folder (the processor's default video budget, no size passed)",
                results["card"],
                n,
                bs,
            )

    r = results["tiny"]
    figures = {
        "batched_vs_reference": round(r["batched_vs_reference"], 2),
        "vs_sentence_transformers": round(r["vs_sentence_transformers"], 3),
        "max_abs_diff": float(f"{r['diff_ref']:.2e}"),
        "wrapper_overhead": round(r["wrapper_overhead"], 3),
        "st_max_abs_diff_single_modality": float(f"{max(v for k, v in r['diff_st'].items() if k != 'mixed'):.2e}"),
        "st_max_abs_diff_mixed": float(f"{r['diff_st']['mixed']:.2e}"),
        "st_stock_no_eos_max_abs_diff": float(f"{max(r['diff_st_plain'].values()):.2e}"),
        "ours_items_per_s": round(n / r["ours"], 1),
        "reference_items_per_s": round(n / r["reference"], 1),
        "st_items_per_s": round(n / r["sentence_transformers"], 1),
        "video_tokens": r["video_tokens"],
        **{f"batched_vs_reference_{kind}": round(v["ratio"], 2) for kind, v in r["per_kind"].items()},
    }
    if "card" in results:
        r = results["card"]
        figures.update(
            {
                "card_budget_batched_vs_reference": round(r["batched_vs_reference"], 2),
                "card_budget_vs_sentence_transformers": round(r["vs_sentence_transformers"], 3),
                "card_budget_max_abs_diff": float(f"{r['diff_ref']:.2e}"),
                "card_budget_wrapper_overhead": round(r["wrapper_overhead"], 3),
                "card_budget_video_tokens": r["video_tokens"],
                "card_budget_loop_vs_tests_reference": float(f"{r['loop_vs_card']:.2e}"),
            }
        )
    figures.update({"items": n, "batch_size": bs, "threads": torch.get_num_threads()})
    assert all(math.isfinite(v) for v in figures.values())
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
