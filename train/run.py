"""`e5omni train --config configs/X.yaml [--key value ...]`: YAML recipe + CLI overrides over dataclasses.

Arguments are parsed with trl's `TrlParser` (the YAML file sets defaults, command-line flags override them) over three
dataclasses: trl's `ModelConfig` (model path, LoRA rank/alpha/dropout/targets, 4-bit quantisation), `DataArguments`
(below) and `E5OmniTrainingArguments`. LoRA and quantisation configs come from trl's `get_peft_config` /
`get_quantization_config`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

TINY_PREFIX = "tiny"


@dataclass
class DataArguments:
    """Where the training (and optional eval) examples come from."""

    train_data: str = field(
        default="synthetic:train",
        metadata={"help": "synthetic:train | a .jsonl / .json / .csv file | hub:<dataset name>[:split]"},
    )
    eval_data: str | None = field(
        default=None,
        metadata={
            "help": "same forms as train_data: the eval loss and per-pair retrieval metrics (OmniRetrievalEvaluator: "
            "eval_overall_hit@1, eval_text->image_ndcg@5, ...) at every evaluation (--eval_strategy steps)"
        },
    )
    eval_metrics: str = field(
        default="hit@1,recall@5,recall@10,ndcg@5,mrr",
        metadata={"help": "retrieval metrics reported per pair and overall (mrr, hit@k, recall@k, ndcg@k)"},
    )
    eval_per_pair: bool = field(default=True, metadata={"help": "report every modality pair, not only overall"})
    media_root: str | None = field(default=None, metadata={"help": "folder that media paths in files are under"})
    max_train_examples: int | None = field(default=None, metadata={"help": "use at most this many examples"})
    synthetic_size: int = field(default=512, metadata={"help": "examples to generate for synthetic:train"})
    synthetic_difficulty: float = field(default=0.5, metadata={"help": "difficulty of the synthetic dataset"})
    synthetic_seed: int = field(default=0, metadata={"help": "seed of the synthetic dataset"})
    synthetic_pairs: str | None = field(
        default=None,
        metadata={"help": "comma-separated modality pairs of the synthetic set, e.g. text->image,image->text (all)"},
    )
    release_dir: str | None = field(default=None, metadata={"help": "also write a merged Hub-ready folder here"})
    adapter_dir: str | None = field(
        default=None,
        metadata={
            "help": "with --use_peft true: also write a standard peft adapter folder here (LoRA weights + alignment "
            "state), loadable with peft.PeftModel.from_pretrained(base_model, adapter_dir)"
        },
    )

    def __post_init__(self):
        if self.max_train_examples is not None and self.max_train_examples < 1:
            raise ValueError(f"max_train_examples must be >= 1, got {self.max_train_examples}")
        if self.synthetic_size < 1:
            raise ValueError(f"synthetic_size must be >= 1, got {self.synthetic_size}")
        if not 0 <= self.synthetic_difficulty <= 1:
            raise ValueError(f"synthetic_difficulty must be in [0, 1], got {self.synthetic_difficulty}")


def load_examples(spec: str, data: DataArguments, split: str = "train", max_audio_seconds: float | None = None):
    """Examples from a data spec (see `DataArguments.train_data`), through the one spec loader `e5omni.data.specs`;
    audio bytes in datasets are read no further than `max_audio_seconds` (the model's budget)."""
    from e5omni.data.specs import load_data_spec

    return load_data_spec(
        spec,
        split=split,
        media_root=data.media_root,
        max_audio_seconds=max_audio_seconds,
        synthetic_size=data.synthetic_size,
        synthetic_seed=data.synthetic_seed,
        synthetic_difficulty=data.synthetic_difficulty,
        synthetic_pairs=[p.strip() for p in data.synthetic_pairs.split(",") if p.strip()]
        if data.synthetic_pairs
        else None,
    )


#: trl ModelConfig fields this recipe cannot honour, with why; setting one to anything but its default is refused.
UNSUPPORTED_MODEL_ARGS = {
    "lora_modules_to_save": "LoRA stays on the language model; the alignment state is always trained and saved",
    "lora_target_parameters": "LoRA targets modules of the language model (lora_target_modules)",
    "lora_task_type": "an embedding model has no task head; peft's task type does not apply",
}


def check_model_args(model_args) -> None:
    """Refuse trl ModelConfig fields that would otherwise be accepted and silently ignored."""
    import dataclasses

    defaults = {f.name: f.default for f in dataclasses.fields(model_args)}
    refused = [
        f"--{name} {getattr(model_args, name)!r}: {why}"
        for name, why in UNSUPPORTED_MODEL_ARGS.items()
        if name in defaults and getattr(model_args, name) != defaults[name]
    ]
    if refused:
        raise ValueError("unsupported model arguments:\n  - " + "\n  - ".join(refused))


def _dtype(name: str | None):
    import torch

    if name in (None, "auto"):
        return None
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"--dtype {name!r} is not a torch dtype (float32, bfloat16, float16 or auto)")
    return dtype


def load_model(model_args, dtype=None):
    """`tiny[:backbone][@seed]` builds the embedded default; otherwise a folder / Hub id of ours or a convertible one.

    `--dtype` and `--attn_implementation` of trl's ModelConfig apply to both (the alignment state stays fp32)."""
    from trl import get_quantization_config

    check_model_args(model_args)
    dtype = dtype if dtype is not None else _dtype(getattr(model_args, "dtype", None))
    attention = getattr(model_args, "attn_implementation", None)

    from e5omni.tiny import build_tiny_model
    from modeling_e5omni import E5OmniModel, E5OmniProcessor

    name = model_args.model_name_or_path or TINY_PREFIX
    if name == TINY_PREFIX or name.startswith(TINY_PREFIX + ":"):
        spec = name.split(":", 1)[1] if ":" in name else "qwen2.5-omni"
        backbone, _, seed = spec.partition("@")
        model, processor = build_tiny_model(backbone, seed=int(seed or 0))
        model.set_processor(processor)
        if dtype is not None:
            model = model.to(dtype)
        if attention is not None:
            model.set_attn_implementation(attention)
        return model
    quantization = get_quantization_config(model_args)
    kwargs = {"revision": model_args.model_revision}
    if quantization is not None:
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("4-bit / 8-bit quantisation (QLoRA) needs a CUDA GPU and bitsandbytes")
        kwargs["quantization_config"] = quantization
    if dtype is not None:
        kwargs["dtype"] = dtype
    if attention is not None:
        kwargs["attn_implementation"] = attention
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(name, trust_remote_code=True, revision=model_args.model_revision)
    if config.model_type != "e5omni":
        raise ValueError(
            f"{name} is a {config.model_type!r} checkpoint; convert it first: e5omni convert {name} OUT, then train OUT"
        )
    model = E5OmniModel.from_pretrained(name, **kwargs)
    model.set_processor(E5OmniProcessor.from_pretrained(name, config=model.config, revision=model_args.model_revision))
    return model


def parse_recipe(argv: list[str] | None = None):
    """(trl ModelConfig, DataArguments, E5OmniTrainingArguments) from `--config YAML` + command-line overrides."""
    from trl import ModelConfig, TrlParser

    from e5omni.train.trainer import E5OmniTrainingArguments

    return TrlParser((ModelConfig, DataArguments, E5OmniTrainingArguments)).parse_args_and_config(argv)


def train_main(argv: list[str] | None = None) -> dict:
    from trl import get_peft_config

    from e5omni.train.lora import apply_lora, lora_config
    from e5omni.train.trainer import E5OmniTrainer

    model_args, data_args, training_args = parse_recipe(argv)
    if data_args.adapter_dir and not model_args.use_peft:
        raise ValueError("--adapter_dir writes a LoRA adapter and needs --use_peft true (this run trains in full)")
    model = load_model(model_args)
    budget = model.config.max_audio_seconds
    train_examples = load_examples(data_args.train_data, data_args, "train", budget)
    if data_args.max_train_examples:
        train_examples = train_examples[: data_args.max_train_examples]
    eval_examples = load_examples(data_args.eval_data, data_args, "test", budget) if data_args.eval_data else None
    if model_args.use_peft:
        peft = get_peft_config(model_args)
        targets = model_args.lora_target_modules
        config = lora_config(
            peft.r,
            peft.lora_alpha,
            peft.lora_dropout,
            targets or None,
            use_dora=model_args.use_dora,
            use_rslora=model_args.use_rslora,
        )
        model = apply_lora(model, config)
    evaluator = None
    if eval_examples is not None:
        from e5omni.evaluation.evaluator import OmniRetrievalEvaluator

        evaluator = OmniRetrievalEvaluator(
            eval_examples,
            metrics=[m.strip() for m in data_args.eval_metrics.split(",") if m.strip()],
            per_pair=data_args.eval_per_pair,
            batch_size=training_args.per_device_eval_batch_size,
        )
        if training_args.eval_strategy == "no":
            logger.warning("--eval_data is set but --eval_strategy is 'no': nothing will be evaluated during training")
    trainer = E5OmniTrainer(model, training_args, train_examples, eval_examples=eval_examples, evaluator=evaluator)
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    if trainer.is_world_process_zero():  # the log history (losses, temperatures, rho) for plots and reports
        trainer.state.save_to_json(str(Path(training_args.output_dir) / "trainer_state.json"))
    summary = {"train_loss": result.training_loss, "global_step": result.global_step}
    summary["temperatures"] = trainer.e5omni_model.temperatures
    # Both are written by the world's process zero while the other processes wait (a barrier in each); the adapter
    # first, as the release merges LoRA in place.
    if data_args.adapter_dir:
        summary["adapter_dir"] = str(trainer.save_adapter(data_args.adapter_dir))
    if data_args.release_dir:
        summary["release_dir"] = str(trainer.save_release(data_args.release_dir, overwrite=True))
    print(json.dumps(summary))
    return summary
