"""E5OmniModel: backbone -> last-token pooling -> (optional whitening) -> L2 norm.

The backbone is the bare multimodal model of the checkpoint's family (`Qwen2_5OmniThinkerModel`, `Qwen2VLModel`,
`Qwen2_5_VLModel`): no language-model head is needed to embed. The model also carries the alignment state learned by
the e5-omni recipe so that `save_pretrained` ships it inside the safetensors weights:

- `log_temperature` (M = 4, fp32): log tau for text, image, audio, video (calibrated scores, training);
- `whitening_mean` (D,) and `whitening_matrix` (D, D) (fp32 buffers): the whitening transform, applied when
  `config.whitening` is on.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput, logging

from .configuration_e5omni import MODALITIES, E5OmniConfig
from .processing_e5omni import E5OmniProcessor, check_items, prepared_batches

logger = logging.get_logger(__name__)

#: Parameters a backbone defines but never uses in its forward (per backbone model_type, as name prefixes under
#: `backbone.`): Qwen2.5-Omni's audio tower keeps `audio_bos_eos_token` for generation-side code that the thinker's
#: forward never calls. tests/test_distributed.py checks, for every backbone kind, that every other parameter receives a
#: gradient when all modalities are present.
NEVER_USED_PARAMETERS: dict[str, tuple[str, ...]] = {
    "qwen2_5_omni_thinker": ("backbone.audio_tower.audio_bos_eos_token.",),
}

#: The media towers of the backbones, with the inputs that reach each one.
MEDIA_TOWERS: dict[str, tuple[str, ...]] = {
    "visual": ("pixel_values", "pixel_values_videos"),
    "audio_tower": ("input_features",),
}

# Inputs the backbones accept; anything else in a features dict (modality_mask, content_hash, ...) stays here.
BACKBONE_INPUTS = (
    "input_ids",
    "attention_mask",
    "pixel_values",
    "image_grid_thw",
    "pixel_values_videos",
    "video_grid_thw",
    "video_second_per_grid",
    "second_per_grid_ts",
    "input_features",
    "feature_attention_mask",
    "mm_token_type_ids",
)


def _check_modality_mask(mask: torch.Tensor, num_modalities: int, name: str) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = (
            f"Tensor(dtype={mask.dtype}, shape={tuple(mask.shape)})"
            if isinstance(mask, torch.Tensor)
            else type(mask).__name__
        )
        raise TypeError(f"{name} must be a bool tensor of shape (rows, {num_modalities}), got {got}")
    if mask.ndim != 2 or mask.shape[1] != num_modalities:
        raise ValueError(f"{name} must have shape (rows, {num_modalities}), got {tuple(mask.shape)}")
    empty = (~mask.any(dim=1)).nonzero().flatten()
    if empty.numel():
        raise ValueError(
            f"{name}: item(s) {empty.tolist()[:10]} have no modality; every item needs at least one of {MODALITIES}"
        )
    return mask


# Component 1 of the recipe (modality-aware temperatures), the one definition: the loss imports these, and
# `E5OmniModel.similarity(calibrated=True)` uses them, so calibrated scores are exactly the training logits.
def instance_temperature(log_temperature: torch.Tensor, modality_mask: torch.Tensor) -> torch.Tensor:
    """Instance temperature tau(x) = w(x)^T tau, with w_m(x) = 1[m in M(x)] / |M(x)|.

    Args:
        log_temperature: ``(M,)`` log tau per modality.
        modality_mask: ``(B, M)`` bool, True where item b contains modality m.

    Returns:
        ``(B,)`` the mean of tau over the modalities present in each item.
    """
    tau = log_temperature.float() if log_temperature.dtype in (torch.float16, torch.bfloat16) else log_temperature
    tau = tau.exp()  # (M,)
    if tau.ndim != 1:
        raise ValueError(f"log_temperature must have shape (M,), got {tuple(log_temperature.shape)}")
    mask = _check_modality_mask(modality_mask, tau.shape[0], "modality_mask")
    weights = mask.to(tau.dtype)  # (B, M)
    return (weights @ tau) / weights.sum(dim=1)  # (B,)


def pair_temperature(
    log_temperature: torch.Tensor, query_modality: torch.Tensor, doc_modality: torch.Tensor
) -> torch.Tensor:
    """Pair temperature tau(q, p) = (tau(q) + tau(p)) / 2 for every query/candidate pair.

    Args:
        log_temperature: ``(M,)`` log tau per modality (the model's ``log_temperature`` parameter).
        query_modality: ``(B, M)`` bool modality mask of the queries.
        doc_modality: ``(N, M)`` bool modality mask of the candidates.

    Returns:
        ``(B, N)`` temperatures; the logit of a pair is ``cos(e_q, e_p) / tau(q, p)``.
    """
    tau_q = instance_temperature(log_temperature, query_modality)  # (B,)
    tau_d = instance_temperature(log_temperature, doc_modality)  # (N,)
    return (tau_q[:, None] + tau_d[None, :]) / 2  # (B, N)


@dataclass
class E5OmniOutput(ModelOutput):
    """`embeddings` (B, D): pooled, optionally whitened, L2-normalised. `last_hidden_state` (B, L, D)."""

    embeddings: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    modality_mask: torch.Tensor | None = None


class E5OmniAlignment(nn.Module):
    """The learned alignment state, kept in fp32 whatever dtype the backbone is loaded in.

    - `log_temperature` (M,): log tau per modality (learning log tau keeps tau positive).
    - `whitening_mean` (D,), `whitening_covariance` (D, D): running statistics of the L2-normalised embeddings seen
      in training (like BatchNorm's running stats: updated by `forward` in training mode with gradients on, so a
      GradCache no-grad pre-pass is not counted twice). The first 1/momentum updates are an exact running average,
      later ones an exponential moving average.
    - `whitening_matrix` (D, D): the ZCA transform (C + eps I)^(-1/2) derived from them by `refresh_whitening`.
    """

    def __init__(self, hidden_size: int, temperature_init: float):
        super().__init__()
        self.log_temperature = nn.Parameter(torch.full((len(MODALITIES),), math.log(temperature_init)))
        self.register_buffer("whitening_mean", torch.zeros(hidden_size))
        self.register_buffer("whitening_matrix", torch.eye(hidden_size))
        self.register_buffer("whitening_covariance", torch.eye(hidden_size))
        self.register_buffer("whitening_updates", torch.zeros((), dtype=torch.int64))

    def _apply(self, fn, recurse=True):
        """`.to(dtype)`, `.half()`, `.bfloat16()` of the whole model move this state but never lower its precision:
        tau around 0.016 in bf16 is off by 1.5% (0.016340 -> 0.016113, measured), and the whitening statistics would
        lose more. Device moves apply as usual; the fp32 values are moved, not round-tripped through half precision."""

        def keep_fp32(tensor: torch.Tensor) -> torch.Tensor:
            out = fn(tensor)
            if tensor.dtype == torch.float32 and out.dtype in (torch.float16, torch.bfloat16):
                return tensor.to(device=out.device)
            return out

        return super()._apply(keep_fp32, recurse)

    @torch.no_grad()
    def update_running_stats(self, x: torch.Tensor, momentum: float) -> None:
        """Fold a batch of (B, D) normalised embeddings into the running mean / covariance."""
        x = x.detach().float()
        if x.shape[0] < 2:
            return
        rate = max(momentum, 1.0 / (int(self.whitening_updates) + 1))
        mean = x.mean(0)  # (D,)
        centred = x - mean
        cov = centred.T @ centred / (x.shape[0] - 1)  # (D, D)
        self.whitening_mean.lerp_(mean, rate)
        self.whitening_covariance.lerp_(cov, rate)
        self.whitening_updates += 1

    @torch.no_grad()
    def refresh_whitening(self, eps: float) -> None:
        """whitening_matrix <- (C + eps * mean(eig(C)) * I)^(-1/2), computed in float64."""
        cov = self.whitening_covariance.double()
        cov = (cov + cov.T) / 2
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        eigenvalues = eigenvalues.clamp(min=0)
        jitter = eps * eigenvalues.mean().clamp(min=1e-12)
        inv_sqrt = (eigenvectors * (eigenvalues + jitter).rsqrt()) @ eigenvectors.T  # (D, D)
        self.whitening_matrix.copy_(inv_sqrt.float())


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden state at the last attended position of each row; correct for left and right padding.

    (B, L, D) hidden, (B, L) mask -> (B, D)
    """
    length = attention_mask.shape[1]
    last = length - 1 - attention_mask.flip(-1).long().argmax(-1)  # (B,) index of the last 1 in each row
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def check_embedding_contract(config: E5OmniConfig) -> None:
    """The two config options both inference paths must honour alike: `pooling` "last" and `normalize` True.

    `E5OmniModel` and the sentence-transformers stack ([E5OmniSTModule, Pooling(lasttoken), Normalize]) only
    implement those; whitening, `truncate_dim`, `similarity` and the index's inner product assume unit vectors. A
    config saying otherwise (set after construction, or edited in config.json) would make the paths disagree or do
    nothing, so it is refused when the model is built and at every forward."""
    if config.pooling != "last":
        raise ValueError(
            f"config.pooling={config.pooling!r} is not supported: e5-omni embeds the last attended position "
            "('last'), on the AutoModel and sentence-transformers paths alike"
        )
    if config.normalize is not True:
        raise ValueError(
            f"config.normalize={config.normalize!r} is not supported: e5-omni embeddings are unit vectors on both "
            "paths (sentence-transformers' Normalize module, whitening, truncate_dim and cosine scores rely on it)"
        )


class E5OmniPreTrainedModel(PreTrainedModel):
    config_class = E5OmniConfig
    # The attribute holding the bare backbone: transformers adds or strips this prefix when a checkpoint's keys lack
    # or carry it (a bare backbone's weights load into `backbone.*`), and `model.base_model` returns it.
    base_model_prefix = "backbone"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    # fp16 loads honour `_keep_in_fp32_modules`; bf16 loads only the strict list (transformers 5.23).
    _keep_in_fp32_modules = ["alignment"]
    _keep_in_fp32_modules_strict = ["alignment"]
    _no_split_modules = []

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True returns (model, info)
        if hasattr(model, "freeze_never_used_parameters"):
            model.freeze_never_used_parameters()  # loading rebuilds the parameters, and their requires_grad
        alignment = getattr(model, "alignment", None)
        if alignment is not None and alignment.whitening_updates.dtype != torch.int64:
            # _keep_in_fp32_modules(_strict) casts the whole alignment module on bf16 / fp16 loads, the counter too
            alignment.whitening_updates = alignment.whitening_updates.round().long()
        return loaded

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' save (config, weights, code) plus the processor's files, so the folder encodes on its own
        (a merged LoRA model's `save_pretrained` folder could be reloaded but not used). `e5omni.release.save_hub_folder`
        also writes the sentence-transformers files."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if not kwargs.get("is_main_process", True):
            return
        processor = getattr(self, "_processor", None)
        if processor is None and getattr(self.config, "_name_or_path", None):
            try:
                processor = self.processor  # loaded from the folder / Hub id the model came from
            except (OSError, ValueError) as err:
                logger.warning("save_pretrained(%s): no processor files written (%s)", save_directory, err)
        if processor is not None:
            processor.save_pretrained(save_directory)

    def _init_weights(self, module):
        if isinstance(module, E5OmniAlignment):
            # transformers' `initialization` helpers skip tensors that were loaded from the checkpoint, so a
            # checkpoint missing one buffer re-initialises only that buffer, never the learned temperatures.
            init.constant_(module.log_temperature, math.log(self.config.temperature_init))
            init.zeros_(module.whitening_mean)
            init.eye_(module.whitening_matrix)
            init.eye_(module.whitening_covariance)
            init.zeros_(module.whitening_updates)
            return
        backbone = getattr(self, "backbone", None)
        if backbone is not None and hasattr(backbone, "_init_weights"):
            backbone._init_weights(module)


class E5OmniModel(E5OmniPreTrainedModel):
    """Omni-modal embedding model. See `encode_query`, `encode_document` and `similarity`."""

    def __init__(self, config: E5OmniConfig):
        check_embedding_contract(config)
        super().__init__(config)
        backbone_config = config.backbone_config
        if isinstance(backbone_config, dict):
            backbone_config = AutoConfig.for_model(**backbone_config)
        self.backbone = AutoModel.from_config(backbone_config)
        self.alignment = E5OmniAlignment(config.hidden_size, config.temperature_init)
        self._processor: E5OmniProcessor | None = None
        self.post_init()
        self.freeze_never_used_parameters()

    def never_used_parameters(self) -> list[str]:
        """Names of backbone parameters that no forward pass uses, so they can never receive a gradient."""
        prefixes = NEVER_USED_PARAMETERS.get(getattr(self.backbone.config, "model_type", None), ())
        return [name for name, _ in self.named_parameters() if name.startswith(prefixes)]

    def freeze_never_used_parameters(self) -> list[str]:
        """Freeze `never_used_parameters()`; returns their names. Called at construction; whoever re-enables
        gradients on every parameter (LoRA merge, a user's `requires_grad_(True)` loop) calls it again. Without it
        DDP with `find_unused_parameters=False` stops at the start of step 2 on Qwen2.5-Omni."""
        names = self.never_used_parameters()
        parameters = dict(self.named_parameters())
        for name in names:
            parameters[name].requires_grad_(False)
        return names

    # --------------------------------------------------------------------------------------------- plumbing
    def get_input_embeddings(self):
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.backbone.set_input_embeddings(value)

    @property
    def log_temperature(self) -> nn.Parameter:
        """(M,) log tau for text, image, audio, video."""
        return self.alignment.log_temperature

    @property
    def temperatures(self) -> dict[str, float]:
        return dict(zip(MODALITIES, self.alignment.log_temperature.detach().exp().tolist(), strict=True))

    @property
    def processor(self) -> E5OmniProcessor:
        """The processor saved next to the weights (loaded on first use)."""
        if self._processor is None:
            source = self.config._name_or_path
            if not source:
                raise RuntimeError(
                    "this model has no processor: it was not loaded from a folder. Call model.set_processor(...)"
                )
            self._processor = E5OmniProcessor.from_pretrained(source, config=self.config)
        return self._processor

    def set_processor(self, processor: E5OmniProcessor) -> None:
        self._processor = processor

    # ----------------------------------------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        modality_mask: torch.Tensor | None = None,
        apply_whitening: bool | None = None,
        **inputs,
    ) -> E5OmniOutput:
        if input_ids is None or attention_mask is None:
            raise ValueError("E5OmniModel.forward needs input_ids and attention_mask (use the processor)")
        check_embedding_contract(self.config)
        backbone_inputs = {k: v for k, v in inputs.items() if k in BACKBONE_INPUTS and v is not None}
        video_audio = inputs.get("video_audio")
        if video_audio is not None and bool(video_audio.any()):  # videos with their audio track interleaved
            backbone_inputs.update(
                self._audio_in_video_inputs(input_ids, attention_mask, modality_mask, video_audio, inputs)
            )
        outputs = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **backbone_inputs)
        hidden = outputs.last_hidden_state  # (B, L, D)
        if self.training and torch.is_grad_enabled():
            anchor = self._absent_tower_anchor(backbone_inputs)
            if anchor is not None:
                # adds exactly 0.0, on the hidden states because the sentence-transformers path pools those itself
                hidden = hidden + anchor.to(hidden.dtype)
        pooled = last_token_pool(hidden, attention_mask).float()  # (B, D), fp32 from here on
        unit = nn.functional.normalize(pooled, dim=-1)
        if self.training and torch.is_grad_enabled() and self.config.track_whitening_stats:
            self.alignment.update_running_stats(unit, self.config.whitening_momentum)
        whiten = self.config.whitening if apply_whitening is None else apply_whitening
        if whiten:  # whiten the unit vectors (what the statistics describe), then renormalise
            unit = nn.functional.normalize(
                (unit - self.alignment.whitening_mean) @ self.alignment.whitening_matrix, dim=-1
            )
        return E5OmniOutput(embeddings=unit, last_hidden_state=hidden, modality_mask=modality_mask)

    def _audio_in_video_inputs(self, input_ids, attention_mask, modality_mask, video_audio, inputs) -> dict:
        """Qwen2.5-Omni's position ids take one `use_audio_in_video` flag per call. When every video of the batch
        carries its audio track, that flag is set; when some videos are silent, the position ids are computed row
        by row with each row's own flag (the same numbers a batch of that row alone would get)."""
        if modality_mask is None:
            raise ValueError("video_audio needs the modality_mask that says which rows hold a video")
        has_video = modality_mask[:, MODALITIES.index("video")].bool().to(video_audio.device)
        if bool((video_audio.bool() == has_video).all()):
            return {"use_audio_in_video": True}
        from .processing_e5omni import slice_features

        features = {k: v for k, v in inputs.items() if v is not None}
        features.update(input_ids=input_ids, attention_mask=attention_mask, modality_mask=modality_mask)
        rows = []
        for row in range(input_ids.shape[0]):
            part = slice_features(features, row, row + 1)
            lengths = part.get("feature_attention_mask")
            position_ids, _ = self.backbone.get_rope_index(
                part["input_ids"],
                part.get("image_grid_thw"),
                part.get("video_grid_thw"),
                part["attention_mask"],
                bool(video_audio[row]),
                lengths.sum(-1) if lengths is not None else None,
                part.get("video_second_per_grid"),
            )
            rows.append(position_ids)
        return {"position_ids": torch.cat(rows, dim=1)}

    def _absent_tower_anchor(self, backbone_inputs: dict) -> torch.Tensor | None:
        """A scalar 0.0 that depends on every trainable parameter of the media towers this batch does not reach.

        DDP with `find_unused_parameters=False` (the only mode that works when the loss runs the model once per
        column before one backward) needs every trainable parameter to receive a gradient on every rank at every
        step. A text->image batch never reaches the audio tower, and a rank whose shard holds no video may not reach
        parts of the vision tower, so those towers would get no gradient and DDP would stop at the start of the next
        step. Adding this zero gives them a zero gradient (what they would get from an absent input) instead.
        """
        terms = []
        for name, keys in MEDIA_TOWERS.items():
            tower = getattr(self.backbone, name, None)
            if tower is None or any(backbone_inputs.get(key) is not None for key in keys):
                continue
            terms += [p.reshape(-1)[:1].float() for p in tower.parameters() if p.requires_grad]
        return torch.cat(terms).sum() * 0.0 if terms else None

    def refresh_whitening(self) -> None:
        """Recompute `whitening_matrix` from the running statistics (the trainer calls this before saving)."""
        self.alignment.refresh_whitening(self.config.whitening_eps)

    # ------------------------------------------------------------------------------------------------ encode
    def encode_query(self, items, **kwargs):
        """Embed queries (the query prompt, `"Query: "` by default, is prepended to their text)."""
        return self.encode(items, role="query", **kwargs)

    def encode_document(self, items, **kwargs):
        """Embed documents (text, image, audio, video or mixed items; no prompt by default)."""
        return self.encode(items, role="document", **kwargs)

    @torch.inference_mode()
    def encode(
        self,
        items,
        role: str = "document",
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        convert_to_numpy: bool = False,
        truncate_dim: int | None = None,
        num_workers: int = 0,
    ):
        """Embed `items` -> (N, D) tensor (or ndarray), rows in input order.

        Items are sorted by estimated length internally so batches pad little; order is restored at the end.
        A progress bar shows for more than four batches unless `show_progress_bar=False`.
        `num_workers` > 0 decodes media and runs the processor in that many worker processes, overlapped with the
        forward (same vectors, same errors naming the caller's item index); 0 (default) does it in this process.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
        if truncate_dim is not None:  # a Matryoshka-trained model records its dims: warn on an untrained one
            untrained = self.config.untrained_truncation(truncate_dim)
            if untrained:
                warnings.warn(untrained, UserWarning, stacklevel=3)
        items = check_items(items, self.config.modalities)
        processor = self.processor
        order = sorted(range(len(items)), key=lambda i: -_estimated_length(items[i]))
        n_batches = math.ceil(len(items) / batch_size)
        if show_progress_bar is None:
            show_progress_bar = n_batches > 4
        from tqdm.auto import tqdm

        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        chunks: list[torch.Tensor] = []
        batches = [order[b * batch_size : (b + 1) * batch_size] for b in range(n_batches)]
        try:
            # decode + process (here, or in worker processes) -> forward; messages name the caller's positions
            for batch in tqdm(
                prepared_batches(processor, items, batches, role, num_workers),
                total=n_batches,
                desc="encode queries" if role == "query" else "encode documents",
                disable=not show_progress_bar,
            ):
                batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
                chunks.append(self(**batch).embeddings.float().cpu())
        finally:
            self.train(was_training)
        embeddings = torch.empty(len(items), chunks[0].shape[-1])
        embeddings[torch.tensor(order)] = torch.cat(chunks)
        if truncate_dim is not None:
            embeddings = truncate_embeddings(embeddings, truncate_dim)
        return embeddings.numpy() if convert_to_numpy else embeddings

    # ------------------------------------------------------------------------------------------- similarity
    def pair_temperature(self, query_modality: torch.Tensor, doc_modality: torch.Tensor) -> torch.Tensor:
        """tau(q, p) = (tau(q) + tau(p)) / 2 with tau(x) the mean tau over x's modalities. (B, M), (N, M) -> (B, N)."""
        log_tau = self.alignment.log_temperature.detach().float()
        return pair_temperature(log_tau, query_modality.bool(), doc_modality.bool())

    def similarity(self, a, b, calibrated: bool = False, query_modalities=None, doc_modalities=None):
        """Cosine similarity (B, N). With `calibrated=True`, divided by the learned pair temperature tau(q, p), so
        scores of different modality pairs share one scale (the logits the model was trained with)."""
        a = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a).float()
        b = torch.as_tensor(np.asarray(b) if not isinstance(b, torch.Tensor) else b).float()
        scores = nn.functional.normalize(a, dim=-1) @ nn.functional.normalize(b, dim=-1).T  # (B, N)
        if not calibrated:
            return scores
        if query_modalities is None or doc_modalities is None:
            raise ValueError("calibrated=True needs query_modalities and doc_modalities (modality masks or names)")
        q = modality_mask_of(query_modalities, scores.shape[0])
        d = modality_mask_of(doc_modalities, scores.shape[1])
        return scores / self.pair_temperature(q, d)


def modality_mask_of(value, n: int) -> torch.Tensor:
    """A (n, M) bool mask from a mask tensor, a list of masks, a modality name, or a list of names/name lists."""
    if isinstance(value, torch.Tensor | np.ndarray):
        mask = torch.as_tensor(value).bool()
        return mask.expand(n, -1) if mask.dim() == 1 else mask
    if isinstance(value, str):
        value = [value] * n
    rows = []
    for entry in value:
        names = [entry] if isinstance(entry, str) else list(entry)
        if names and isinstance(names[0], bool):
            rows.append(names)
            continue
        unknown = [m for m in names if m not in MODALITIES]
        if unknown:
            raise ValueError(f"unknown modalities {unknown}; expected names from {MODALITIES}")
        rows.append([m in names for m in MODALITIES])
    mask = torch.tensor(rows, dtype=torch.bool)
    if mask.shape[0] != n:
        raise ValueError(f"got {mask.shape[0]} modality entries for {n} embeddings")
    return mask


def truncate_embeddings(embeddings: torch.Tensor, dim: int) -> torch.Tensor:
    """Matryoshka-style: keep the first `dim` components, then re-normalise."""
    if not 0 < dim <= embeddings.shape[-1]:
        raise ValueError(f"truncate_dim must be in [1, {embeddings.shape[-1]}], got {dim}")
    return nn.functional.normalize(embeddings[..., :dim], dim=-1)


# Rough token cost per medium, distinct per kind so that sorting groups items of one kind into the same batches
# (each tower then runs in few batches and text pads to similar lengths).
_MEDIA_COST = {"image": 1000, "audio": 2000, "video": 3000}


def _estimated_length(item) -> int:
    """A cheap length proxy for sorting (characters of text + a fixed, kind-specific cost per medium)."""
    if isinstance(item, str):
        return len(item)
    if not isinstance(item, dict):
        return _MEDIA_COST["image"]
    text = len(item.get("text") or "")
    return text + sum(cost for kind, cost in _MEDIA_COST.items() if item.get(kind) is not None)


def register() -> None:
    """Register with the Auto classes so a pip install loads e5-omni folders without remote code."""
    from transformers import AutoConfig as _AutoConfig

    _AutoConfig.register("e5omni", E5OmniConfig, exist_ok=True)
    AutoModel.register(E5OmniConfig, E5OmniModel, exist_ok=True)


E5OmniConfig.register_for_auto_class()
E5OmniModel.register_for_auto_class("AutoModel")

__all__ = [
    "check_embedding_contract",
    "E5OmniModel",
    "E5OmniPreTrainedModel",
    "E5OmniOutput",
    "last_token_pool",
    "truncate_embeddings",
]
