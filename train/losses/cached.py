"""CachedE5OmniLoss: :class:`~e5omni.train.losses.e5omni.E5OmniLoss` with GradCache mini-batching.

GradCache (Gao et al. 2021) on public torch API only; no sentence-transformers internals:

1. every mini-batch of every column is embedded without a graph, and the RNG state before each forward is kept;
2. the full loss is computed on those embeddings (leaves) and on a leaf copy of ``log_temperature``; its backward
   gives d loss / d embedding per mini-batch and d loss / d log tau (the cache);
3. in the outer backward (a hook on the returned loss), each mini-batch is embedded again with a graph, under its
   kept RNG state (so dropout draws the same masks), and ``torch.autograd.backward(embedding, cached_grad *
   grad_output)`` sends the cached gradient into the model. The outer ``grad_output`` carries loss scaling and
   gradient accumulation.

DDP: every replay but the last runs under ``no_sync``; the last one synchronises (unless an outer ``no_sync``, i.e.
gradient accumulation, defers it). The temperature's cached gradient is applied in that same last
``autograd.backward`` call, next to the last mini-batch's embeddings, so DDP (``find_unused_parameters=False``: every
trainable parameter must get its gradient in the synchronised backward) all-reduces it with the rest.

Slicing: inputs of the omni backbone are not all batch-first (flattened image/video patches with grid tensors;
audio rows only for items that have audio), so mini-batches are cut by a ``slicer(features, start, end) -> dict``
callable, by default ``modeling_e5omni.processing_e5omni.slice_features``. It gets the full features dict
(``modality_mask`` and ``content_hash`` included) and returns the items ``start:end`` with their media.

It returns the ``{"dcl", "coral"}`` dict of the wrapped loss; the gradient of the total is carried by ``dcl``
(``coral`` is detached), so the trainer's sum back-propagates the full loss exactly once. The loss stage itself is
not chunked (the whitening couples all rows); its memory is the (B, N) logits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

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


class RngState:
    """The CPU generator's state and that of every CUDA device among `tensors`, taken now and replayed (inside a
    `torch.random.fork_rng`, so the caller's generators are left as they were) by `replay()`."""

    def __init__(self, tensors: Iterable[Any]) -> None:
        self.cpu = torch.get_rng_state()
        self.devices = sorted({t.device.index for t in tensors if isinstance(t, Tensor) and t.is_cuda})
        self.cuda = [torch.cuda.get_rng_state(device) for device in self.devices]

    @contextmanager
    def replay(self) -> Iterator[None]:
        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self.cpu)
            for device, state in zip(self.devices, self.cuda):
                torch.cuda.set_rng_state(state, device)
            yield


class CachedE5OmniLoss(nn.Module):
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
        if mini_batch_num_tokens is not None and (
            isinstance(mini_batch_num_tokens, bool)
            or not isinstance(mini_batch_num_tokens, int)
            or mini_batch_num_tokens < 1
        ):
            raise ValueError(f"mini_batch_num_tokens must be a positive int or None, got {mini_batch_num_tokens!r}")
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
        """`mini_batch_size` items per mini-batch; with `mini_batch_num_tokens`, as many items as fit that many
        non-padding tokens (an item longer than the budget alone)."""
        if self.mini_batch_num_tokens is None:
            return [(b, min(b + self.mini_batch_size, batch_size)) for b in range(0, batch_size, self.mini_batch_size)]
        attention = features.get("attention_mask")
        if not isinstance(attention, Tensor) or attention.ndim != 2 or attention.shape[0] != batch_size:
            raise ValueError(
                f"mini_batch_num_tokens needs a (B, L) attention_mask with B = {batch_size} items to count tokens; "
                "use mini_batch_size instead"
            )
        counts = attention.sum(dim=1).tolist()
        ranges, begin = [], 0
        while begin < batch_size:
            end, tokens = begin + 1, counts[begin]
            while end < batch_size and tokens + counts[end] <= self.mini_batch_num_tokens:
                tokens += counts[end]
                end += 1
            ranges.append((begin, end))
            begin = end
        return ranges

    def _embed(self, features: dict[str, Any], begin: int, end: int) -> Tensor:
        """Embeddings (end - begin, D) of items begin:end, cut by :attr:`slicer`, in the current grad mode."""
        reps = _sentence_embedding(self.model(self.slicer(features, begin, end)), 0)
        if reps.shape[0] != end - begin:
            raise ValueError(
                f"the slicer returned features for {reps.shape[0]} items when asked for items {begin}:{end}"
            )
        return reps

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

        # Step (1): embed every mini-batch without a graph, keeping the RNG state each forward starts from.
        reps: list[list[Tensor]] = []
        states: list[list[RngState | None]] = []
        for column_features, column_ranges in zip(features, ranges):
            column_reps, column_states = [], []
            for begin, end in column_ranges:
                column_states.append(RngState(column_features.values()) if grad_enabled else None)
                with torch.no_grad():
                    rep = self._embed(column_features, begin, end)
                column_reps.append(rep.detach().requires_grad_(grad_enabled))
            reps.append(column_reps)
            states.append(column_states)
        embeddings = [torch.cat(column) for column in reps]  # (B, D) per column

        log_tau = self.loss.log_temperature_of(self.model) if self.loss.use_temperature else None
        if not grad_enabled:
            return self.loss.compute_loss_from_embeddings(embeddings, masks, hashes, labels, log_temperature=log_tau)

        # Step (2): the full loss on the cached embeddings, back-propagated to them (and to a leaf copy of tau).
        trains_tau = log_tau is not None and log_tau.requires_grad
        tau_leaf = log_tau.detach().requires_grad_() if trains_tau else None
        components = self.loss.compute_loss_from_embeddings(
            embeddings, masks, hashes, labels, log_temperature=tau_leaf if trains_tau else log_tau
        )
        total = torch.stack(list(components.values())).sum()
        total.backward()
        cache = [[rep.grad for rep in column] for column in reps]
        unused = [str(column) for column, grads in enumerate(cache) if any(g is None for g in grads)]
        if unused:
            raise ValueError(f"the loss did not use input column(s) {', '.join(unused)}")
        tau_grad = None
        if trains_tau:
            tau_grad = tau_leaf.grad if tau_leaf.grad is not None else torch.zeros_like(tau_leaf)

        # Step (3), deferred to the outer backward: replay each mini-batch with a graph and apply its cached gradient.
        loss = total.detach().requires_grad_()
        replay = partial(
            self._replay, features=features, ranges=ranges, states=states, cache=cache, tau=(log_tau, tau_grad)
        )
        loss.register_hook(replay)
        out = {name: value.detach() for name, value in components.items()}
        out["dcl"] = out["dcl"] + (loss - loss.detach())  # same value; carries d(total) to the hook
        return out

    def _replay(
        self,
        grad_output: Tensor,
        *,
        features: list[dict[str, Any]],
        ranges: list[list[tuple[int, int]]],
        states: list[list[RngState]],
        cache: list[list[Tensor]],
        tau: tuple[Tensor | None, Tensor | None],
    ) -> None:
        """The backward hook on the returned loss: step (3). `cache`, `states` and `ranges` belong to one forward, so
        a second forward before this backward cannot mix up batches."""
        model = getattr(self.model, "_orig_mod", self.model)
        ddp = isinstance(model, DistributedDataParallel)
        log_tau, tau_grad = tau
        jobs = [(column, index) for column in range(len(features)) for index in range(len(ranges[column]))]
        with torch.enable_grad():
            for position, (column, index) in enumerate(jobs):
                last = position == len(jobs) - 1
                # the forward as well as the backward of a non-final replay stay out of DDP's synchronisation
                with model.no_sync() if ddp and not last else nullcontext():
                    begin, end = ranges[column][index]
                    with states[column][index].replay():
                        rep = self._embed(features[column], begin, end)
                    outputs, grads = [], []
                    if rep.requires_grad:  # False when the whole encoder is frozen
                        outputs.append(rep)
                        grads.append((cache[column][index] * grad_output).to(rep.dtype))
                    if last and tau_grad is not None:
                        outputs.append(log_tau)
                        grads.append((tau_grad * grad_output).to(log_tau.dtype))
                    if outputs:
                        torch.autograd.backward(outputs, grads)


def _batch_size(features: dict[str, Any]) -> int:
    """Items in a column: from ``modality_mask`` (always batch-first), else ``input_ids`` / ``attention_mask``."""
    for key in ("modality_mask", "input_ids", "attention_mask"):
        value = features.get(key)
        if isinstance(value, Tensor) and value.ndim > 0:
            return value.shape[0]
    raise ValueError("cannot tell the number of items: the features have no modality_mask, input_ids or attention_mask")
