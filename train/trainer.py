"""E5OmniTrainer: sentence-transformers' trainer with the e5-omni alignment losses injected.

What it adds to `SentenceTransformerTrainer`:

- builds `E5OmniLoss` (or its GradCache variant) from `E5OmniTrainingArguments` and feeds it the global step, so the
  curriculum rho_t is a pure function of the step and a resumed run continues exactly;
- puts `log_temperature` in its own optimizer group (no weight decay, its own learning rate) and clamps tau to
  [temperature_min, temperature_max] after every optimizer step;
- logs every loss component (`dcl`, `coral`), the per-modality temperatures, rho, the fraction of negatives kept and
  the whitening residual;
- collates omni examples itself (`e5omni.train.collator`): queries with the query prompt, documents without, per-column
  modality masks and content hashes;
- optional LoRA on the language model only (`e5omni.train.lora`), kept through checkpoints, merged for release;
- refreshes the whitening matrix from the running statistics before every save.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from transformers import TrainerCallback

from e5omni.data.hf import HFExamples, HFStream
from e5omni.train.collator import E5OmniDataCollator, TrainingDataError, check_examples, examples_dataset
from e5omni.train.lora import has_lora, save_lora_config
from e5omni.train.losses import CachedE5OmniLoss, E5OmniLoss, clamp_temperatures_
from e5omni.train.losses.e5omni import _check_matryoshka
from modeling_e5omni import E5OmniModel
from modeling_e5omni.sentence_e5omni import sentence_transformer

logger = logging.getLogger(__name__)


@dataclass
class E5OmniTrainingArguments(SentenceTransformerTrainingArguments):
    """Training arguments of the e5-omni recipe (defaults: the paper's, see docs/losses.md and docs/paper.md)."""

    temperature_init: float | None = field(
        default=None,
        metadata={
            "help": "if set, every modality's tau starts here (overwrites the loaded model's log tau and its "
            "config.temperature_init); unset: the model's own (a fresh model's config.temperature_init, a trained "
            "checkpoint's learned values). Also the fixed tau when use_temperature is false."
        },
    )
    temperature_lr: float | None = field(default=None, metadata={"help": "learning rate of log tau (default: lr)"})
    temperature_min: float | None = field(
        default=None,
        metadata={
            "help": "tau is clamped to [min, max] after each step; unset: the model's config (0.005); set: "
            "written to the model's config too, so the saved model states the clamp it was trained with"
        },
    )
    temperature_max: float | None = field(default=None, metadata={"help": "upper clamp of tau (unset: config, 1.0)"})
    use_temperature: bool = field(default=True, metadata={"help": "modality-aware temperatures (component 1)"})
    use_curriculum: bool = field(default=True, metadata={"help": "negative curriculum (component 2)"})
    use_dcl: bool = field(default=True, metadata={"help": "debiased contrastive loss (component 2)"})
    use_whitening_coral: bool = field(default=True, metadata={"help": "batch whitening + CORAL (component 3)"})
    logits_on_whitened: bool = field(default=False, metadata={"help": "compute logits on whitened embeddings"})
    symmetric: bool = field(default=False, metadata={"help": "add the document->query direction"})
    rho_init: float = field(default=0.1, metadata={"help": "fraction of negatives masked before warm-up ends"})
    rho_final: float = field(default=0.5, metadata={"help": "fraction masked at the last step"})
    curriculum_warmup_steps: int = field(default=4000, metadata={"help": "t0: steps at rho_init"})
    gamma_plus: float = field(default=0.1, metadata={"help": "DCL positive prior gamma_plus"})
    dcl_eps: float = field(default=1e-6, metadata={"help": "DCL floor, relative to exp(S_ii)"})
    lambda_coral: float = field(default=0.05, metadata={"help": "weight of the CORAL term"})
    batch_whitening_eps: float = field(
        default=1e-4,
        metadata={
            "help": "diagonal jitter of the loss's batch whitening, relative to the batch covariance's trace "
            "(delta = eps * tr(C)); not the model's whitening_eps, which is relative to the mean eigenvalue of the "
            "running covariance and defines the inference whitening matrix"
        },
    )
    num_negatives: int | None = field(default=None, metadata={"help": "hard negatives per query (default: data's)"})
    gradcache_mini_batch_size: int | None = field(
        default=None, metadata={"help": "GradCache mini-batch size; unset = plain loss"}
    )
    group_by_pair: bool = field(default=False, metadata={"help": "one modality pair per batch"})
    matryoshka_dims: str | None = field(
        default=None,
        metadata={
            "help": "Matryoshka training: comma-separated embedding dimensions (e.g. 1024,512,256) at which the "
            "contrastive loss is also computed on the leading components, re-normalised; the full dimension is "
            "always trained (added with weight 1 when not listed); recorded in the saved config "
            "(matryoshka_dimensions). Unset: full dimension only"
        },
    )
    matryoshka_weights: str | None = field(
        default=None,
        metadata={"help": "comma-separated weights, one per --matryoshka_dims entry (default: 1 each)"},
    )

    def __post_init__(self):
        if self.ddp_find_unused_parameters is None:
            # The loss runs the model once per column before one backward; DDP's unused-parameter search then marks
            # parameters ready twice. Every trainable parameter gets a gradient every step instead: parameters no
            # forward uses are frozen, absent media towers get a zero gradient, log tau is frozen when temperatures
            # are off.
            self.ddp_find_unused_parameters = False
        elif self.ddp_find_unused_parameters:
            raise ValueError(
                "ddp_find_unused_parameters=True cannot work with this loss: it runs the model once per column "
                "(query, positive, negatives) before one backward, and DDP's unused-parameter search then marks "
                "parameters ready twice. Leave it unset: every trainable parameter receives a gradient at every step."
            )
        super().__post_init__()
        problems = []
        given = [t for t in (self.temperature_min, self.temperature_init, self.temperature_max) if t is not None]
        if any(not 0 < t for t in given) or given != sorted(given):
            problems.append(
                "need 0 < temperature_min <= temperature_init <= temperature_max (those that are set), got "
                f"{self.temperature_min}, {self.temperature_init}, {self.temperature_max}"
            )
        if self.temperature_lr is not None and self.temperature_lr < 0:
            problems.append(f"temperature_lr must be >= 0, got {self.temperature_lr}")
        for name in ("rho_init", "rho_final"):
            if not 0 <= getattr(self, name) < 1:
                problems.append(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.curriculum_warmup_steps < 0:
            problems.append(f"curriculum_warmup_steps must be >= 0, got {self.curriculum_warmup_steps}")
        if not 0 <= self.gamma_plus < 1:
            problems.append(f"gamma_plus must be in [0, 1), got {self.gamma_plus}")
        if self.lambda_coral < 0:
            problems.append(f"lambda_coral must be >= 0, got {self.lambda_coral}")
        if self.num_negatives is not None and self.num_negatives < 0:
            problems.append(f"num_negatives must be >= 0, got {self.num_negatives}")
        if self.gradcache_mini_batch_size is not None and self.gradcache_mini_batch_size < 1:
            problems.append(f"gradcache_mini_batch_size must be >= 1, got {self.gradcache_mini_batch_size}")
        try:
            self.matryoshka_dims = _number_list("matryoshka_dims", self.matryoshka_dims, int)
            self.matryoshka_weights = _number_list("matryoshka_weights", self.matryoshka_weights, float)
            _check_matryoshka(self.matryoshka_dims, self.matryoshka_weights)
        except ValueError as error:
            problems.append(str(error))
        if problems:
            raise ValueError("invalid E5OmniTrainingArguments:\n  - " + "\n  - ".join(problems))

    def loss_kwargs(self) -> dict[str, Any]:
        """The recipe fields E5OmniLoss takes, by name (tau_0 is `temperature` there)."""
        accepted = inspect.signature(E5OmniLoss.__init__).parameters
        kwargs = {
            name: getattr(self, name) for name in accepted if name not in ("self", "model") and hasattr(self, name)
        }
        kwargs["whitening_eps"] = self.batch_whitening_eps
        if self.temperature_init is not None:
            kwargs["temperature"] = self.temperature_init
        return kwargs


def _number_list(name: str, value: Any, kind: type) -> list | None:
    """`"1024,512"` (the command line), a YAML list, or one number -> a list of `kind`; None stays None. A bad entry is
    named by its position."""
    if value is None:
        return None
    if isinstance(value, str):
        entries = [part.strip() for part in value.split(",")]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        entries = [value]
    elif isinstance(value, Sequence):
        entries = list(value)
    else:
        raise ValueError(f"{name} must be comma-separated numbers or a list, got {value!r}")
    out = []
    for position, entry in enumerate(entries):
        if isinstance(entry, bool) or entry == "":
            raise ValueError(f"{name}[{position}] must be a{'n int' if kind is int else ' number'}, got {entry!r}")
        try:
            number = kind(entry)
        except (TypeError, ValueError):
            raise ValueError(
                f"{name}[{position}] must be a{'n int' if kind is int else ' number'}, got {entry!r}"
            ) from None
        if kind is int and isinstance(entry, float) and entry != number:
            raise ValueError(f"{name}[{position}] must be an int, got {entry!r}")
        out.append(number)
    return out


def matryoshka_dimensions(loss: torch.nn.Module | None, hidden_size: int) -> list[int] | None:
    """The dimensions `loss` trains (largest first, the full one included), or None without Matryoshka."""
    inner = getattr(loss, "loss", loss)  # CachedE5OmniLoss wraps an E5OmniLoss
    if getattr(inner, "matryoshka_dims", None) is None or not hasattr(inner, "matryoshka_plan"):
        return None
    return [d for d, _ in inner.matryoshka_plan(hidden_size)]


def _record_matryoshka(model: E5OmniModel, loss: torch.nn.Module | None) -> None:
    """Write the trained Matryoshka dimensions into the model's config (saved with it; vLLM reads the same key)."""
    config = model.config
    dims = matryoshka_dimensions(loss, config.hidden_size)
    previous = getattr(config, "matryoshka_dimensions", None)
    if dims is None and previous:
        logger.warning(
            "the model recorded Matryoshka dimensions %s, but this run trains the full dimension only: the saved "
            "config will record none",
            previous,
        )
    config.matryoshka_dimensions = dims


def _apply_temperature_args(model: E5OmniModel, args: E5OmniTrainingArguments) -> None:
    """The temperature arguments that are set win over the model's config, and are written into it (saved)."""
    config = model.config
    low = args.temperature_min if args.temperature_min is not None else config.temperature_min
    high = args.temperature_max if args.temperature_max is not None else config.temperature_max
    init = args.temperature_init if args.temperature_init is not None else config.temperature_init
    if not 0 < low <= init <= high:
        raise ValueError(
            f"need 0 < temperature_min <= temperature_init <= temperature_max, got {low}, {init}, {high} "
            "(from the training arguments where set, else the model's config)"
        )
    config.temperature_min, config.temperature_max, config.temperature_init = low, high, init
    if args.temperature_init is not None:
        with torch.no_grad():
            model.log_temperature.fill_(math.log(args.temperature_init))


def build_loss(model: SentenceTransformer, args: E5OmniTrainingArguments):
    kwargs = args.loss_kwargs()
    kwargs.setdefault("temperature", model[0].auto_model.config.temperature_init)
    if args.gradcache_mini_batch_size:
        return CachedE5OmniLoss(model, mini_batch_size=args.gradcache_mini_batch_size, **kwargs)
    return E5OmniLoss(model, **kwargs)


class _AlignmentCallback(TrainerCallback):
    """Clamps tau after every optimizer step (transformers calls this right after `optimizer.step()`)."""

    def __init__(self, trainer: E5OmniTrainer):
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        config = self.trainer.e5omni_model.config
        clamp_temperatures_(self.trainer.e5omni_model, config.temperature_min, config.temperature_max)


class E5OmniTrainer(SentenceTransformerTrainer):
    """Fine-tune an `E5OmniModel` on omni examples with the e5-omni recipe.

    Args:
        model: an `E5OmniModel` (with its processor set) or a `SentenceTransformer` built by
            `modeling_e5omni.sentence_e5omni.sentence_transformer` / loaded from one of our folders.
        args: `E5OmniTrainingArguments`.
        train_examples: a sequence of `{"query", "positive", "negatives"?}` examples (see `e5omni.data`): a list, or a
            lazy view (`load_data_spec`'s, `from_hf_dataset`'s).
        eval_examples: optional examples for the eval loss.
        loss: override the loss built from `args`.
        train_dataset: instead of `train_examples`, as sentence-transformers users pass it: a `datasets.Dataset`
            (viewed with `e5omni.data.from_hf_dataset`) or a streaming `datasets.IterableDataset` (converted row by
            row as it arrives, never materialised; needs `max_steps`). Columns `query`, `positive`, `negative_1..k`
            (or `anchor`, `negative`), per-field columns (`query_text`, `positive_image`, ...) or struct columns of
            item fields, typed by their features (`Image`, `Audio`, `Video`, strings); or named by `column_map`.
        eval_dataset: the same for the eval loss (instead of `eval_examples`).
        evaluator: a sentence-transformers evaluator (or a list of them), run on the model at each evaluation.
        column_map: `{role: column | {field: column}}` for `train_dataset` / `eval_dataset` (see `from_hf_dataset`).
        media_root: where string media paths in `train_dataset` / `eval_dataset` are confined.
    """

    def __init__(
        self,
        model: E5OmniModel | SentenceTransformer,
        args: E5OmniTrainingArguments,
        train_examples: Sequence[dict] | None = None,
        eval_examples: Sequence[dict] | None = None,
        loss: torch.nn.Module | None = None,
        callbacks: list[TrainerCallback] | None = None,
        hub_api: Any = None,
        *,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        evaluator: Any = None,
        column_map: dict[str, Any] | None = None,
        media_root: str | os.PathLike | None = None,
        **kwargs,
    ):
        if not isinstance(args, E5OmniTrainingArguments):
            raise TypeError(f"args must be E5OmniTrainingArguments, got {type(args).__name__}")
        st = model if isinstance(model, SentenceTransformer) else sentence_transformer(model)
        # audio bytes in datasets are read no further than the model's own budget, as its file reader does
        budget = getattr(st[0].auto_model.config, "max_audio_seconds", None)
        train_source = _examples_source("train", train_examples, train_dataset, column_map, media_root, 0, budget)
        eval_source = _examples_source("eval", eval_examples, eval_dataset, column_map, media_root, 1, budget)
        if train_source is None:
            raise TypeError("give the training data: train_examples (a sequence of examples) or train_dataset")
        self.e5omni_model = st[0].auto_model
        _apply_temperature_args(self.e5omni_model, args)
        if not args.use_temperature:  # unused by the loss: frozen, so DDP sees no parameter without a gradient
            self.e5omni_model.log_temperature.requires_grad_(False)
        config = self.e5omni_model.config
        num_negatives = args.num_negatives
        if num_negatives is None:
            num_negatives = _min_negatives(train_source)
        for source in (train_source, eval_source):
            if isinstance(source, HFStream) and source.num_negatives < num_negatives:
                raise TrainingDataError(
                    f"the streamed dataset has {source.num_negatives} negative column(s), but num_negatives="
                    f"{num_negatives}; add negative_1..negative_{num_negatives} columns or lower num_negatives"
                )
        train_source, eval_source = (_narrow(s, num_negatives) for s in (train_source, eval_source))
        streams = {s.stream_id: s for s in (train_source, eval_source) if isinstance(s, HFStream)}
        for source in (train_source, eval_source):
            if source is not None and not isinstance(source, HFStream):
                check_examples(source, num_negatives)
        if streams:
            _no_batch_dispatch(args)
            if args.group_by_pair and isinstance(train_source, HFStream):
                raise ValueError("group_by_pair needs a map-style dataset (it groups by pair up front); not a stream")
        self.train_examples = None if isinstance(train_source, HFStream) else train_source
        self.streaming = isinstance(train_source, HFStream)
        self.num_negatives = num_negatives
        self.hub_api = hub_api  # an HfApi; tests inject a recording fake
        mapped_train = None if isinstance(train_source, HFStream) else train_source
        mapped_eval = None if isinstance(eval_source, HFStream) else eval_source
        collator = E5OmniDataCollator(
            _ConcatExamples(mapped_train or [], mapped_eval),
            st[0].preprocess,
            num_negatives,
            config.query_prompt,
            config.document_prompt,
            streams=streams,
        )
        if isinstance(train_source, HFStream):
            train_data = train_source.dataset
        else:
            train_data = examples_dataset(train_source)
        eval_data = None
        if isinstance(eval_source, HFStream):
            eval_data = eval_source.dataset
        elif eval_source is not None:
            offset = len(mapped_train or [])
            eval_data = examples_dataset(eval_source).map(lambda row: {"example": row["example"] + offset})
        loss = loss if loss is not None else build_loss(st, args)
        matryoshka_dimensions(loss, config.hidden_size)  # a dimension above the model's is refused before training
        super().__init__(
            model=st,
            args=args,
            train_dataset=train_data,
            eval_dataset=eval_data,
            loss=loss,
            data_collator=collator,
            callbacks=callbacks,
            evaluator=evaluator,
            **kwargs,
        )
        self.add_callback(_AlignmentCallback(self))
        _record_matryoshka(self.e5omni_model, self.loss)

    # ------------------------------------------------------------------------------------------ pieces we own
    def add_model_card_callback(self, *args, **kwargs) -> None:
        """Our Hub README comes from `model_card/`; the stock card reads dataset metadata our index dataset lacks."""

    def get_decay_parameter_names(self, model) -> list[str]:
        """The stock rule, minus `log_temperature`: temperatures are never weight-decayed."""
        return [name for name in super().get_decay_parameter_names(model) if not name.endswith("log_temperature")]

    def create_optimizer(self, *args, **kwargs):
        """The stock optimizer; with `temperature_lr`, log tau moves to a group of its own with that lr."""
        fresh = self.optimizer is None
        optimizer = super().create_optimizer(*args, **kwargs)
        if fresh and self.args.temperature_lr is not None:
            temperature = self.e5omni_model.log_temperature
            for group in optimizer.param_groups:
                group["params"] = [p for p in group["params"] if p is not temperature]
            optimizer.add_param_group({"params": [temperature], "weight_decay": 0.0, "lr": self.args.temperature_lr})
        return optimizer

    def get_batch_sampler(self, dataset, *args, **kwargs):
        if not self.args.group_by_pair:
            return super().get_batch_sampler(dataset, *args, **kwargs)
        from e5omni.train.sampler import PairGroupedBatchSampler

        pairs = [self._example(int(i)).get("pair") or _pair_of(self._example(int(i))) for i in dataset["example"]]
        return PairGroupedBatchSampler(
            pairs,
            batch_size=kwargs.get("batch_size", self.args.train_batch_size),
            drop_last=kwargs.get("drop_last", False),
            seed=kwargs.get("seed", self.args.seed),
        )

    def _example(self, index: int) -> dict:
        return self.data_collator.examples[index]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss_fn = self.loss
        if hasattr(loss_fn, "set_step"):
            loss_fn.set_step(self.state.global_step, self.state.max_steps or None)
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        diagnostics = getattr(self.loss, "last_diagnostics", None)
        if diagnostics and "loss" in logs:  # training logs only, not eval
            logs = {**logs, **{k: round(float(v), 6) for k, v in diagnostics.items()}}
        super().log(logs, *args, **kwargs)

    # ------------------------------------------------------------------------------------- checkpoints & release
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        self.e5omni_model.refresh_whitening()  # every rank: the model state stays the same everywhere
        if not self.args.should_save:
            # transformers 5's save_model calls _save on every process (sentence-transformers' _save assumes process
            # zero): one writer, or ranks write the same files at once (a torn processor_config.json was seen)
            return
        super()._save(output_dir, state_dict=state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if has_lora(self.e5omni_model):
            save_lora_config(self.e5omni_model, output_dir)

    def _load_from_checkpoint(self, checkpoint_path: str, model=None) -> None:
        """Load a checkpoint's weights into the model in place (LoRA layers and alignment state included), through
        transformers' own loader: one `model.safetensors` or a sharded `model.safetensors.index.json` (what a 3B / 7B
        run writes), FSDP checkpoints. Its key names are checked first: transformers loads non-strictly and would
        only warn about a checkpoint of another model (e.g. saved with LoRA, resumed without)."""
        from transformers import Trainer

        target = self.e5omni_model if model is None or model in (self.model, self.model_wrapped) else model
        check_checkpoint_keys(checkpoint_path, target)
        Trainer._load_from_checkpoint(self, checkpoint_path, model=target)

    def save_release(self, output_dir: str | os.PathLike, overwrite: bool = False) -> Path:
        """A self-contained Hub-ready folder at the end of training: LoRA merged into the trainer's model (in place,
        so no second copy of the weights is held), whitening refreshed, sentence-transformers files.

        Every process merges its own model (so all ranks keep training / encoding the same model); only the world's
        process zero writes the folder, and every process returns once it is complete (a barrier), so no rank races
        another on the folder or reads it half-written."""
        from e5omni.release import prepare_release, save_hub_folder

        model = prepare_release(self.e5omni_model, in_place=True)
        self.e5omni_model = model
        self.model[0].auto_model = model
        folder = Path(output_dir)
        try:
            if self.is_world_process_zero():
                folder = save_hub_folder(model, self.model[0].processor, output_dir, overwrite=overwrite)
        finally:
            self.accelerator.wait_for_everyone()
        return folder

    def save_adapter(self, output_dir: str | os.PathLike) -> Path:
        """A standard peft adapter folder of the trainer's LoRA model (`e5omni.train.lora.save_adapter`), written by the
        world's process zero while the others wait for it (a barrier)."""
        from e5omni.train.lora import save_adapter

        if not has_lora(self.e5omni_model):
            raise ValueError("the model has no LoRA layers to save (train with LoRA to write an adapter)")
        folder = Path(output_dir)
        try:
            if self.is_world_process_zero():
                folder = save_adapter(self.e5omni_model, output_dir)
        finally:
            self.accelerator.wait_for_everyone()
        return folder

    # ------------------------------------------------------------------------------------------------ the Hub
    def model_card_context(self, **extra) -> dict[str, Any]:
        """What the trainer knows for the model card: the recipe, the loss configuration, the run's size."""
        args = self.args
        training = {
            "epochs": args.num_train_epochs,
            "learning_rate": args.learning_rate,
            "temperature_lr": args.temperature_lr if args.temperature_lr is not None else args.learning_rate,
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "hard_negatives_per_query": self.num_negatives,
            "train_examples": len(self.train_examples) if self.train_examples is not None else "streamed",
            "global_step": self.state.global_step,
            "lora": has_lora(self.e5omni_model),
            "gradcache_mini_batch_size": args.gradcache_mini_batch_size,
            "matryoshka_dimensions": self.e5omni_model.config.matryoshka_dimensions,
        }
        loss = self.loss.get_config_dict() if hasattr(self.loss, "get_config_dict") else {}
        return {"training": training, "loss": loss, **extra}

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True, **kwargs):
        """Publish through `e5omni.publish.push_folder`: one atomic commit of a merged, self-contained release folder
        (weights with temperatures and whitening statistics, code, processor, sentence-transformers files, card)."""
        import tempfile

        from e5omni.publish import push_folder
        from e5omni.release import write_release

        if not self.args.hub_model_id:
            raise ValueError("set hub_model_id (the target repo id) in the training arguments to push")
        if not self.is_world_process_zero():
            return None
        context = self.model_card_context(**kwargs.pop("model_card_context", {}))
        with tempfile.TemporaryDirectory(prefix="e5omni-push-") as tmp:
            folder, _ = write_release(self.e5omni_model, self.model[0].processor, Path(tmp) / "release")
            return push_folder(
                folder,
                self.args.hub_model_id,
                revision=self.args.hub_revision,
                private=bool(self.args.hub_private_repo),
                token=self.args.hub_token,
                commit_message=commit_message or "End of training",
                api=self.hub_api,
                model_card_context=context,
                verbose=False,
            )

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Pushes during training (push_to_hub=True with a save strategy) go through the same function."""
        self.push_to_hub(commit_message=f"Training in progress, step {self.state.global_step}")


class CheckpointMismatchError(ValueError):
    """A checkpoint's weights do not fit the model being trained (names the folder and the keys)."""


def checkpoint_keys(folder: str | os.PathLike) -> set[str] | None:
    """The tensor names a checkpoint folder holds (from the safetensors headers or a sharded index's weight map);
    None when it has only formats whose names cannot be read without loading them."""
    import json

    from safetensors import safe_open
    from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME

    folder = Path(folder)
    if (folder / SAFE_WEIGHTS_NAME).is_file():
        with safe_open(str(folder / SAFE_WEIGHTS_NAME), framework="pt") as handle:
            return set(handle.keys())
    for index in (SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_INDEX_NAME):
        if (folder / index).is_file():
            return set(json.loads((folder / index).read_text())["weight_map"])
    return None


def check_checkpoint_keys(folder: str | os.PathLike, model: torch.nn.Module) -> None:
    """Raise CheckpointMismatchError unless the checkpoint holds exactly the model's state_dict keys."""
    keys = checkpoint_keys(folder)
    if keys is None:
        return  # transformers' loader reports what it cannot find
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - keys), sorted(keys - expected)
    if missing or unexpected:
        lora = any("lora_" in k for k in missing + unexpected)
        hint = " (it was saved with other LoRA settings: resume with the run's own --use_peft / lora_r)" if lora else ""
        raise CheckpointMismatchError(
            f"checkpoint {folder} does not fit the model{hint}: {len(missing)} missing key(s) {missing[:5]}, "
            f"{len(unexpected)} unexpected key(s) {unexpected[:5]}"
        )


class _ConcatExamples(Sequence):
    """Train examples followed by eval examples, addressed by one index (the collator's lookup table)."""

    def __init__(self, first: Sequence[dict], second: Sequence[dict] | None):
        self.first, self.second = first, second or []

    def __len__(self) -> int:
        return len(self.first) + len(self.second)

    def __getitem__(self, index: int) -> dict:
        n = len(self.first)
        return self.first[index] if index < n else self.second[index - n]


def _examples_source(
    kind: str,
    examples: Any,
    dataset: Any,
    column_map: Any,
    media_root: Any,
    stream_id: int,
    max_audio_seconds: float | None = None,
) -> Sequence[dict] | HFStream | None:
    """The one source of `kind` examples: a sequence as given, a `Dataset` as a lazy view, an `IterableDataset` as a
    stream."""
    if examples is not None and dataset is not None:
        raise TypeError(f"give {kind}_examples or {kind}_dataset, not both")
    if dataset is None:
        if examples is not None and not isinstance(examples, Sequence):
            raise TypeError(
                f"{kind}_examples must be a sequence of examples, got {type(examples).__name__}; pass a "
                f"datasets.Dataset / IterableDataset as {kind}_dataset="
            )
        return examples
    import datasets

    from e5omni.data import from_hf_dataset, stream_hf_dataset

    if isinstance(dataset, datasets.IterableDataset):
        return stream_hf_dataset(
            dataset, column_map, media_root=media_root, stream_id=stream_id, max_audio_seconds=max_audio_seconds
        )
    if isinstance(dataset, datasets.Dataset):
        return from_hf_dataset(dataset, column_map, media_root=media_root, max_audio_seconds=max_audio_seconds)
    if isinstance(dataset, Sequence) and not isinstance(dataset, (str, bytes)):
        return dataset  # plain lists keep working under the sentence-transformers name too
    raise TypeError(
        f"{kind}_dataset must be a datasets.Dataset, a datasets.IterableDataset or a sequence of examples, got "
        f"{type(dataset).__name__} (a DatasetDict: pick a split)"
    )


def _min_negatives(source: Any) -> int:
    """The fewest hard negatives of any example: the schema's count for a stream, a cheap column count for the views
    that have one (`min_negatives`), else a pass over the examples."""
    if isinstance(source, HFStream):
        return source.num_negatives
    if hasattr(source, "min_negatives"):
        return int(source.min_negatives())
    if isinstance(source, HFExamples):
        return len(source._schema.negative_roles)
    return min(len(e.get("negatives") or []) for e in source) if len(source) else 0


def _narrow(source: Any, k: int) -> Any:
    """Views that can build only the first k negatives do so (a Tevatron row may list dozens)."""
    return source.with_max_negatives(k) if hasattr(source, "with_max_negatives") else source


def _no_batch_dispatch(args: E5OmniTrainingArguments) -> None:
    """accelerate would read an IterableDataset on rank 0 and slice the collated batches across ranks, which cannot
    work for our batches (media features are not per-row tensors); each rank reads its own share of rows instead."""
    config = getattr(args, "accelerator_config", None)
    if config is None:
        return
    if getattr(config, "dispatch_batches", None):
        raise ValueError(
            "accelerator_config.dispatch_batches=True cannot stream omni batches (they are not sliceable per row); "
            "leave it unset: each process then reads its own rows of the stream"
        )
    config.dispatch_batches = False


def _pair_of(example: dict) -> str:
    from e5omni.data import pair_name

    return pair_name(example)


__all__ = ["CheckpointMismatchError", "E5OmniTrainer", "E5OmniTrainingArguments", "build_loss"]
