"""CachedE5OmniLoss: :class:`~e5omni.train.losses.e5omni.E5OmniLoss` with GradCache mini-batching.

Built on sentence-transformers' cached-loss machinery (``sentence_transformers.base.losses.gradcache``): its
``CachedLossMixin`` mini-batch iteration, ``RandContext`` (the replayed forward draws the same dropout masks) and its
``_backward_hook`` (replay mini-batch by mini-batch, scaled by the outer ``grad_output``, DDP-synchronised once).
The e5-omni math is not copied: the wrapped :class:`E5OmniLoss` computes the loss from the cached embeddings.

What this subclass changes, and why:

- **Slicing.** Inputs of the omni backbone are not all batch-first (flattened image/video patches with grid tensors;
  audio rows only for items that have audio), and the stock splitter mis-slices audio. Mini-batches are cut by a
  ``slicer(features, start, end) -> dict`` callable, by default ``modeling_e5omni.processing_e5omni.slice_features``.
  The slicer gets the full features dict (``modality_mask`` and ``content_hash`` included) and must return the
  items ``start:end`` with their media.
- **Temperatures.** tau lives on the model but is used by the loss, not by the embedding forward. Its gradient is
  cached like the embeddings' (the loss stage sees a detached leaf copy) and applied in the backward hook together
  with the *last* replayed mini-batch, as extra coordinates of that mini-batch's cached gradient. So it is scaled
  by ``grad_output`` (loss scaling, gradient accumulation) and lands in the same backward pass that DDP
  synchronises (with ``find_unused_parameters=False`` every parameter must receive its gradient there).
- **Components.** It returns the ``{"dcl", "coral"}`` dict of the wrapped loss; the gradient of the total is carried
  by ``dcl`` (``coral`` is detached), so the trainer's sum back-propagates the full loss exactly once.

The loss stage itself is not chunked (the whitening couples all rows); its memory is the (B, N) logits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from functools import partial
from typing import Any

import torch
from sentence_transformers.base.losses.gradcache import (
    CachedLossMixin,
    RandContext,
    _backward_hook,
    _minibatch_ranges,
    _validate_mini_batch_num_tokens,
)
from torch import Tensor, nn

from .e5omni import E5OmniLoss, _sentence_embedding

__all__ = ["CachedE5OmniLoss", "Slicer"]

Slicer = Callable[[dict[str, Any], int, int], dict[str, Any]]


def _default_slicer() -> Slicer:
    try:
        from modeling_e5omni.processing_e5omni import slice_features
    except ImportError as error:  # pragma: no cover - depends on the state of the package
        raise ImportError(
            "CachedE5OmniLoss needs modeling_e5omni.processing_e5omni.slice_features as its default slicer "
            f"({error}); pass slicer=... explicitly"
        ) from error
    return slice_features


class _CarriesTemperature:
    """Marks the column whose last mini-batch also carries the temperatures through the backward hook."""

    def __init__(self, features: dict[str, Any]) -> None:
        self.features = features


class CachedE5OmniLoss(CachedLossMixin, nn.Module):
    def __init__(
        self,
        model: nn.Module,
        *,
        mini_batch_size: int = 32,
        mini_batch_num_tokens: int | None = None,
        slicer: Slicer | None = None,
        show_progress_bar: bool = False,
        **loss_kwargs: Any,
    ) -> None:
        """GradCache version of :class:`E5OmniLoss`: the same loss and gradients with bounded activation memory.

        Args:
            model: as for :class:`E5OmniLoss`.
            mini_batch_size: items per embedding mini-batch.
            mini_batch_num_tokens: pack mini-batches by non-padding tokens instead (needs ``attention_mask``).
            slicer: ``slicer(features, start, end) -> features`` of items ``start:end``; default
                ``modeling_e5omni.processing_e5omni.slice_features`` (imported here, not at module import).
            show_progress_bar: progress bar over mini-batches.
            **loss_kwargs: every option of :class:`E5OmniLoss` (use_temperature, lambda_coral, ...).
        """
        super().__init__()
        if isinstance(mini_batch_size, bool) or not isinstance(mini_batch_size, int) or mini_batch_size < 1:
            raise ValueError(f"mini_batch_size must be a positive int, got {mini_batch_size!r}")
        _validate_mini_batch_num_tokens(mini_batch_num_tokens)
        if slicer is not None and not callable(slicer):
            raise ValueError(f"slicer must be callable(features, start, end) -> dict, got {type(slicer).__name__}")
        self.model = model
        self.loss = E5OmniLoss(model, **loss_kwargs)
        self.mini_batch_size = mini_batch_size
        self.mini_batch_num_tokens = mini_batch_num_tokens
        self.show_progress_bar = show_progress_bar
        self.slicer: Slicer = slicer if slicer is not None else _default_slicer()

    # ----------------------------------------------------------------------------------- delegated to the loss
    def set_step(self, step: int, total_steps: int | None = None) -> None:
        self.loss.set_step(step, total_steps)

    @property
    def last_diagnostics(self) -> dict[str, float]:
        return self.loss.last_diagnostics

    @property
    def rho(self) -> float:
        return self.loss.rho

    def get_config_dict(self) -> dict[str, Any]:
        return {
            **self.loss.get_config_dict(),
            "mini_batch_size": self.mini_batch_size,
            "mini_batch_num_tokens": self.mini_batch_num_tokens,
        }

    @property
    def citation(self) -> str:
        return self.loss.citation + (
            "@misc{gao2021scaling,\n    title={Scaling Deep Contrastive Learning Batch Size under Memory Limited "
            "Setup},\n    author={Luyu Gao and Yunyi Zhang and Jiawei Han and Jamie Callan},\n    year={2021},\n"
            "    eprint={2101.06983},\n    archivePrefix={arXiv}\n}\n"
        )

    # ----------------------------------------------------------------------------------- mini-batching
    def _ranges(self, features: dict[str, Any], batch_size: int) -> list[tuple[int, int]]:
        if self.mini_batch_num_tokens is None:
            return [(b, min(b + self.mini_batch_size, batch_size)) for b in range(0, batch_size, self.mini_batch_size)]
        ranges = _minibatch_ranges(features, self.mini_batch_size, self.mini_batch_num_tokens)
        if not ranges or ranges[0][0] != 0 or ranges[-1][1] != batch_size:
            raise ValueError(f"token-budget mini-batches {ranges} do not cover the {batch_size} items of the column")
        return ranges

    def embed_minibatch(
        self,
        sentence_feature: dict[str, Tensor],
        begin: int,
        end: int,
        with_grad: bool,
        copy_random_state: bool,
        random_state: RandContext | None = None,
    ) -> tuple[Tensor, RandContext | None]:
        """As ``CachedLossMixin.embed_minibatch``, but the mini-batch is cut by :attr:`slicer`."""
        grad_context = nullcontext if with_grad else torch.no_grad
        random_state_context = nullcontext() if random_state is None else random_state
        minibatch = self.slicer(sentence_feature, begin, end)
        with random_state_context:
            with grad_context():
                random_state = RandContext(*minibatch.values()) if copy_random_state else None
                reps = _sentence_embedding(self.model(minibatch), 0)  # (end - begin, D)
        if reps.shape[0] != end - begin:
            raise ValueError(
                f"the slicer returned features for {reps.shape[0]} items when asked for items {begin}:{end}"
            )
        return reps, random_state

    def embed_minibatch_iter(
        self,
        sentence_feature: dict[str, Tensor] | _CarriesTemperature,
        with_grad: bool,
        copy_random_state: bool,
        random_states: list[RandContext] | None = None,
        ranges: list[tuple[int, int]] | None = None,
    ) -> Iterator[tuple[Tensor, RandContext | None]]:
        """The mixin's iterator; for a :class:`_CarriesTemperature` column the last mini-batch's embeddings are
        flattened and extended by the model's log_temperature (matching the extended cached gradient)."""
        carries = isinstance(sentence_feature, _CarriesTemperature)
        features = sentence_feature.features if carries else sentence_feature
        if ranges is None:
            ranges = self._ranges(features, _batch_size(features))
        last = len(ranges) - 1
        iterator = super().embed_minibatch_iter(features, with_grad, copy_random_state, random_states, ranges)
        for index, (reps, random_state) in enumerate(iterator):
            if carries and index == last:
                log_tau = self.loss.log_temperature_of(self.model)
                dtype = _at_least_fp32(reps.dtype, log_tau.dtype)
                reps = torch.cat([reps.flatten().to(dtype), log_tau.flatten().to(dtype)])
            yield reps, random_state

    # ----------------------------------------------------------------------------------- the three steps
    def forward(
        self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None
    ) -> dict[str, Tensor]:
        features = list(sentence_features)
        if len(features) < 2:
            raise ValueError(f"CachedE5OmniLoss needs at least 2 input columns, got {len(features)}")
        masks, hashes = self.loss.batch_metadata(features)
        sizes = [_batch_size(f) for f in features]
        if len(set(sizes)) != 1:
            raise ValueError(f"every input column needs the same number of items, got {sizes}")
        # Boundaries first: step (3) must replay step (1)'s mini-batches even if a module edits the features.
        ranges = [self._ranges(f, sizes[0]) for f in features]
        grad_enabled = torch.is_grad_enabled()

        # Step (1): embed every mini-batch without a graph, remembering each one's RNG state.
        reps: list[list[Tensor]] = []
        random_states: list[list[RandContext | None]] = []
        for column_features, column_ranges in zip(features, ranges):
            column_reps, column_states = [], []
            for rep, state in self.embed_minibatch_iter(
                column_features, with_grad=False, copy_random_state=grad_enabled, ranges=column_ranges
            ):
                column_reps.append(rep.detach().requires_grad_(grad_enabled))
                column_states.append(state)
            reps.append(column_reps)
            random_states.append(column_states)
        embeddings = [torch.cat(column) for column in reps]  # (B, D) per column

        log_tau = self.loss.log_temperature_of(self.model) if self.loss.use_temperature else None
        if not grad_enabled:
            return self.loss.compute_loss_from_embeddings(embeddings, masks, hashes, labels, log_temperature=log_tau)

        # Step (2): the full loss on the cached embeddings, back-propagated to them (and to a leaf copy of tau).
        tau_leaf = log_tau.detach().requires_grad_() if log_tau is not None and log_tau.requires_grad else None
        components = self.loss.compute_loss_from_embeddings(
            embeddings, masks, hashes, labels, log_temperature=tau_leaf if tau_leaf is not None else log_tau
        )
        total = torch.stack(list(components.values())).sum()
        total.backward()
        cache = [[rep.grad for rep in column] for column in reps]
        unused = [str(column) for column, grads in enumerate(cache) if any(g is None for g in grads)]
        if unused:
            raise ValueError(f"the loss did not use input column(s) {', '.join(unused)}")
        hook_features: list[Any] = list(features)
        if tau_leaf is not None:
            tau_grad = tau_leaf.grad if tau_leaf.grad is not None else torch.zeros_like(tau_leaf)
            dtype = _at_least_fp32(cache[-1][-1].dtype, tau_grad.dtype)
            cache[-1][-1] = torch.cat([cache[-1][-1].flatten().to(dtype), tau_grad.flatten().to(dtype)])
            hook_features[-1] = _CarriesTemperature(features[-1])

        # Step (3), deferred to the outer backward: replay each mini-batch with a graph and apply its cached gradient.
        loss = total.detach().requires_grad_()
        loss.register_hook(
            partial(
                _backward_hook,
                sentence_features=hook_features,
                loss_obj=self,
                cache=cache,
                random_states=random_states,
                ranges=ranges,
            )
        )
        out = {name: value.detach() for name, value in components.items()}
        out["dcl"] = out["dcl"] + (loss - loss.detach())  # same value; carries d(total) to the hook
        return out


def _at_least_fp32(*dtypes: torch.dtype) -> torch.dtype:
    """The promoted dtype, lifted to fp32 when it is half precision (fp64 stays fp64)."""
    dtype = dtypes[0]
    for other in dtypes[1:]:
        dtype = torch.promote_types(dtype, other)
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _batch_size(features: dict[str, Any]) -> int:
    """Items in a column: from ``modality_mask`` (always batch-first), else ``input_ids`` / ``attention_mask``."""
    for key in ("modality_mask", "input_ids", "attention_mask"):
        value = features.get(key)
        if isinstance(value, Tensor) and value.ndim > 0:
            return value.shape[0]
    raise ValueError("cannot tell the number of items: the features have no modality_mask, input_ids or attention_mask")
