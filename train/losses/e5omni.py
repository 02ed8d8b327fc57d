"""E5OmniLoss: the e5-omni alignment objective as a sentence-transformers loss module.

    L = L_DCL + lambda_coral * L_coral                                    (docs/paper.md, components 1-3)

- Component 1, modality-aware temperature: logits S_ij = cos(e_qi, e_dj) / tau(q_i, d_j), tau from the model's
  per-modality ``log_temperature`` and the items' ``modality_mask`` (:func:`~e5omni.train.losses.functional.pair_temperature`).
- Component 2, negative curriculum + debiasing: each row keeps its hardest (1 - rho_t) fraction of negatives
  (:func:`~e5omni.train.losses.functional.hard_negative_mask`), rho_t a pure function of the global step
  (:meth:`E5OmniLoss.set_step`); the loss is the debiased contrastive loss with gamma_plus.
- Component 3, batch whitening + CORAL: one whitening W fitted on the stacked query and positive embeddings of the
  (gathered) batch, L_coral = ||Cov(W(Q)) - Cov(W(P))||_F^2 / (4 D^2).

Every component has a switch; with all of them off the loss is InfoNCE at a fixed temperature (ablation baseline).

Matryoshka (``matryoshka_dims``): the contrastive term is computed at each listed leading dimension d (the first d
components re-normalised, as ``truncate_dim`` does at inference) with the same temperatures, and weighted-summed; the
full dimension is always among them. Whitening + CORAL run once, on the full vectors (docs/losses.md, "Matryoshka").
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from e5omni.citation import CITATION as E5_OMNI_CITATION

from .distributed import gather_rows, row_counts
from .functional import (
    MODALITIES,
    BatchWhitening,
    WhiteningStatistics,
    _fp32,
    coral_loss,
    curriculum_rho,
    debiased_contrastive_loss,
    fp32_math,
    hard_negative_mask,
    info_nce_loss,
    pair_temperature,
    whitened_coral_loss,
)
from .temperature import LOG_TEMPERATURE_SUFFIX, find_log_temperature

logger = logging.getLogger(__name__)

__all__ = ["E5OmniLoss"]

MODALITY_MASK_KEY = "modality_mask"
CONTENT_HASH_KEY = "content_hash"

_CITATION = (
    "\n"
    + E5_OMNI_CITATION
    + """
@inproceedings{chuang2020debiased,
    title={Debiased Contrastive Learning},
    author={Chuang, Ching-Yao and Robinson, Joshua and Lin, Yen-Chen and Torralba, Antonio and Jegelka, Stefanie},
    booktitle={Advances in Neural Information Processing Systems},
    year={2020}
}
"""
)


def _same_content(a_hash: Tensor, a_known: Tensor, b_hash: Tensor, b_known: Tensor) -> Tensor:
    """``(len(a), len(b))`` bool: both hashes known and equal."""
    return (a_hash[:, None] == b_hash[None, :]) & a_known[:, None] & b_known[None, :]


class E5OmniLoss(nn.Module):
    def __init__(
        self,
        model: nn.Module | None,
        *,
        use_temperature: bool = True,
        temperature: float = 0.02,
        use_curriculum: bool = True,
        rho_init: float = 0.1,
        rho_final: float = 0.5,
        curriculum_warmup_steps: int = 4000,
        use_dcl: bool = True,
        gamma_plus: float = 0.1,
        dcl_eps: float = 1e-6,
        use_whitening_coral: bool = True,
        lambda_coral: float = 0.05,
        whitening_eps: float = 1e-4,
        logits_on_whitened: bool = False,
        symmetric: bool = False,
        hard_negative_scope: Literal["batch", "own"] = "batch",
        gather_across_devices: bool = True,
        matryoshka_dims: Sequence[int] | None = None,
        matryoshka_weights: Sequence[float] | None = None,
    ) -> None:
        """The e5-omni alignment loss (query -> candidate, optionally also candidate -> query).

        Inputs (``forward``): a list of feature dicts, column 0 the queries, column 1 their positives, columns 2..
        k hard negatives per query (as MultipleNegativesRankingLoss). Every dict carries ``modality_mask`` (B, 4)
        bool (text, image, audio, video) and optionally ``content_hash`` (B,) int64; both are read before the model
        runs and the dict is passed to the model unchanged. Every column's candidates are candidates of every query
        (``hard_negative_scope="batch"``, the MNRL convention) or a query's own hard negatives only (``"own"``).

        Returns a dict ``{"dcl": ..., "coral": ...}`` whose sum is the total loss (the sentence-transformers trainer
        sums and logs each); ``coral`` is already weighted by lambda_coral. Diagnostics: :attr:`last_diagnostics`.

        Args:
            model: a sentence-transformers style model, ``model(features)["sentence_embedding"]`` (B, D), holding
                the fp32 (M,) parameter ``*log_temperature`` (log tau). May be None for
                :meth:`compute_loss_from_embeddings` with an explicit ``log_temperature``.
            use_temperature: component 1 (learned per-modality tau); off: fixed ``temperature`` for every pair.
            temperature: the fixed tau when ``use_temperature`` is False (0.02, inferred as VLM2Vec/mmE5).
            use_curriculum: component 2a; off: every valid negative is kept (rho = 0).
            rho_init, rho_final, curriculum_warmup_steps: rho_t schedule (paper: 0.1, 0.5, t0 = 4000 steps), reaching
                rho_final at the ``total_steps`` given to :meth:`set_step` (inferred).
            use_dcl: component 2b, debiased loss; off: InfoNCE over the kept negatives.
            gamma_plus: DCL debiasing weight (paper 0.1, robust in [0.1, 0.2]), in [0, 1).
            dcl_eps: DCL floor, relative to exp(S_ii) (paper silent; 1e-6, see ``debiased_contrastive_loss``).
            use_whitening_coral: component 3; off: ``coral`` is 0.
            lambda_coral: CORAL weight (paper 0.05, robust in [0.02, 0.1]).
            whitening_eps: relative diagonal jitter, delta = whitening_eps * tr(C) (paper silent; 1e-4).
            logits_on_whitened: compute the logits on re-normalised whitened embeddings (W fitted on queries and
                positives, applied to the hard negatives too); default False = raw embeddings (inferred).
            symmetric: add the candidate -> query term (positives as rows, all queries as candidates) and average the
                two directions; the paper states query -> candidate only, so off by default.
            hard_negative_scope: "batch" (every hard negative is a candidate of every query) or "own".
            gather_across_devices: gather embeddings across ranks (with gradients) before the loss; whitening and
                CORAL then use the gathered batch. A no-op outside torch.distributed.
            matryoshka_dims: Matryoshka training: the contrastive term (curriculum + DCL, symmetric term included) is
                computed at each of these leading dimensions of the embeddings, re-normalised, with the same
                temperatures, and the weighted sum is ``dcl``. The full dimension D is always trained: when it is
                not listed it is added with weight 1. Whitening + CORAL run once, at D (docs/losses.md says why).
                None (default): D only, exactly the loss without Matryoshka.
            matryoshka_weights: one weight >= 0 per entry of ``matryoshka_dims`` (default: 1 each); the terms are
                summed, not averaged (sentence-transformers' MatryoshkaLoss convention).
        """
        super().__init__()
        for name, value in (
            ("use_temperature", use_temperature),
            ("use_curriculum", use_curriculum),
            ("use_dcl", use_dcl),
            ("use_whitening_coral", use_whitening_coral),
            ("logits_on_whitened", logits_on_whitened),
            ("symmetric", symmetric),
            ("gather_across_devices", gather_across_devices),
        ):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be a bool, got {value!r}")
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        for name, value in (("rho_init", rho_init), ("rho_final", rho_final)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1) (the fraction of negatives masked out), got {value!r}")
        if isinstance(curriculum_warmup_steps, bool) or not isinstance(curriculum_warmup_steps, int):
            raise ValueError(f"curriculum_warmup_steps must be an int, got {curriculum_warmup_steps!r}")
        if curriculum_warmup_steps < 0:
            raise ValueError(f"curriculum_warmup_steps must be >= 0, got {curriculum_warmup_steps!r}")
        if not 0.0 <= gamma_plus < 1.0:
            raise ValueError(f"gamma_plus must be in [0, 1), got {gamma_plus!r}")
        if not (math.isfinite(dcl_eps) and dcl_eps > 0):
            raise ValueError(f"dcl_eps must be a finite number > 0, got {dcl_eps!r}")
        if not (math.isfinite(lambda_coral) and lambda_coral >= 0):
            raise ValueError(f"lambda_coral must be a finite number >= 0, got {lambda_coral!r}")
        if not (math.isfinite(whitening_eps) and whitening_eps > 0):
            raise ValueError(f"whitening_eps must be a finite number > 0, got {whitening_eps!r}")
        if logits_on_whitened and not use_whitening_coral:
            raise ValueError("logits_on_whitened=True needs use_whitening_coral=True (the whitening is fitted there)")
        if hard_negative_scope not in ("batch", "own"):
            raise ValueError(f"hard_negative_scope must be 'batch' or 'own', got {hard_negative_scope!r}")
        dims, weights = _check_matryoshka(matryoshka_dims, matryoshka_weights)
        if use_temperature and model is not None and find_log_temperature(model) is None:
            raise ValueError(
                f"use_temperature=True needs the model to hold an fp32 (M,) parameter named '*{LOG_TEMPERATURE_SUFFIX}'"
                f" (E5OmniModel.log_temperature); {type(model).__name__} has none. Use an E5OmniModel backbone, or "
                "set use_temperature=False for a fixed temperature."
            )

        self.model = model
        self.use_temperature = use_temperature
        self.temperature = float(temperature)
        self.use_curriculum = use_curriculum
        self.rho_init = float(rho_init)
        self.rho_final = float(rho_final)
        self.curriculum_warmup_steps = curriculum_warmup_steps
        self.use_dcl = use_dcl
        self.gamma_plus = float(gamma_plus)
        self.dcl_eps = float(dcl_eps)
        self.use_whitening_coral = use_whitening_coral
        self.lambda_coral = float(lambda_coral)
        self.whitening_eps = float(whitening_eps)
        self.logits_on_whitened = logits_on_whitened
        self.symmetric = symmetric
        self.hard_negative_scope = hard_negative_scope
        self.gather_across_devices = gather_across_devices
        self.matryoshka_dims = dims
        self.matryoshka_weights = weights

        self._step = 0
        self._total_steps: int | None = None
        self._warned_no_total = False
        self._diagnostics: dict[str, Tensor | float] = {}
        self._whitening_fit: BatchWhitening | WhiteningStatistics | None = None
        self._residual_cache: float | None = None

    # ------------------------------------------------------------------------------------------------ curriculum
    def set_step(self, step: int, total_steps: int | None = None) -> None:
        """Tell the loss the global optimizer step t (and the run length) that rho_t depends on."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        if total_steps is not None and (
            isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1
        ):
            raise ValueError(f"total_steps must be a positive int or None, got {total_steps!r}")
        self._step = step
        self._total_steps = total_steps

    @property
    def rho(self) -> float:
        """rho_t at the current step (0 when the curriculum is off). Without ``total_steps`` it holds rho_init."""
        if not self.use_curriculum:
            return 0.0
        if self._total_steps is None:
            if self._step >= self.curriculum_warmup_steps and not self._warned_no_total:
                logger.warning(
                    "E5OmniLoss: step %d is past curriculum_warmup_steps but set_step() never received total_steps; "
                    "rho stays at rho_init=%s",
                    self._step,
                    self.rho_init,
                )
                self._warned_no_total = True
            return self.rho_init
        return curriculum_rho(
            self._step,
            rho_init=self.rho_init,
            rho_final=self.rho_final,
            warmup_steps=self.curriculum_warmup_steps,
            total_steps=self._total_steps,
        )

    # ------------------------------------------------------------------------------------------------ Matryoshka
    def matryoshka_plan(self, dim: int) -> list[tuple[int, float]]:
        """``[(d, weight), ...]`` for embeddings of dimension ``dim``, largest first: the listed dimensions plus
        ``dim`` itself (weight 1 unless listed); ``[(dim, 1.0)]`` without Matryoshka. A listed d > dim is an error."""
        if self.matryoshka_dims is None:
            return [(dim, 1.0)]
        too_large = [(i, d) for i, d in enumerate(self.matryoshka_dims) if d > dim]
        if too_large:
            i, d = too_large[0]
            raise ValueError(
                f"matryoshka_dims[{i}] = {d} exceeds the embedding dimension {dim}; list dimensions in [1, {dim}]"
            )
        plan = dict(zip(self.matryoshka_dims, self.matryoshka_weights))
        plan.setdefault(dim, 1.0)
        return sorted(plan.items(), reverse=True)

    # ------------------------------------------------------------------------------------------------ inputs
    def log_temperature_of(self, model: nn.Module | None = None) -> nn.Parameter | None:
        """The ``*log_temperature`` parameter of ``model`` (default: this loss's model)."""
        return find_log_temperature(self.model if model is None else model)

    def batch_metadata(self, features: Sequence[dict[str, Any]]) -> tuple[list[Tensor | None], list[Tensor | None]]:
        """Read ``modality_mask`` and ``content_hash`` of every column (None where absent), leaving the dicts as is."""
        masks = [f.get(MODALITY_MASK_KEY) for f in features]
        hashes = [f.get(CONTENT_HASH_KEY) for f in features]
        if self.use_temperature:
            missing = [c for c, m in enumerate(masks) if m is None]
            if missing:
                raise ValueError(
                    f"input column(s) {missing} carry no '{MODALITY_MASK_KEY}' (B, {len(MODALITIES)}) bool tensor; "
                    "the per-modality temperatures (use_temperature=True) need one per column"
                )
        return masks, hashes

    def forward(
        self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None
    ) -> dict[str, Tensor]:
        features = list(sentence_features)
        if len(features) < 2:
            raise ValueError(f"E5OmniLoss needs at least 2 input columns (queries, positives), got {len(features)}")
        # Read the metadata first: a model may consume keys of the dict it is given.
        masks, hashes = self.batch_metadata(features)
        embeddings = [_sentence_embedding(self.model(f), column) for column, f in enumerate(features)]
        return self.compute_loss_from_embeddings(embeddings, masks, hashes, labels)

    # ------------------------------------------------------------------------------------------------ the loss
    def compute_loss_from_embeddings(
        self,
        embeddings: Sequence[Tensor],
        modality_masks: Sequence[Tensor | None] | None = None,
        content_hashes: Sequence[Tensor | None] | None = None,
        labels: Tensor | None = None,
        *,
        log_temperature: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The loss from this rank's embeddings.

        Args:
            embeddings: ``[(B, D) queries, (B, D) positives, (B, D) hard negatives 1, ...]``.
            modality_masks: one ``(B, M)`` bool mask per column (needed when ``use_temperature``).
            content_hashes: one ``(B,)`` integer tensor or None per column; equal hashes are never each other's
                negatives, and a candidate equal to the query, to the query's positive, or the positive of another
                pair with an identical query is not a negative.
            labels: unused (sentence-transformers signature).
            log_temperature: ``(M,)`` log tau to use instead of the model's parameter (the cached variant passes a
                detached leaf here).

        Returns:
            ``{"dcl": contrastive term, "coral": lambda_coral * L_coral}`` (0-d fp32 tensors).
        """
        embeddings = list(embeddings)
        num_cols = len(embeddings)
        if num_cols < 2:
            raise ValueError(f"need at least 2 embedding columns (queries, positives), got {num_cols}")
        first = embeddings[0]
        if first.ndim != 2 or first.shape[0] == 0:
            raise ValueError(f"embeddings must be non-empty (B, D) tensors, got column 0 of shape {tuple(first.shape)}")
        batch, dim = first.shape
        for column, emb in enumerate(embeddings):
            if tuple(emb.shape) != (batch, dim):
                raise ValueError(f"column {column} has shape {tuple(emb.shape)}, column 0 has {(batch, dim)}")
        log_tau = self._resolve_log_temperature(log_temperature)
        masks = self._check_masks(modality_masks, num_cols, batch, log_tau)
        hashes, known = self._check_hashes(content_hashes, num_cols, batch, first.device)
        device = first.device

        with fp32_math(device):
            counts = row_counts(batch, device) if self.gather_across_devices else [batch]

            def gather(tensor: Tensor, with_grad: bool) -> tuple[Tensor, int]:
                if not self.gather_across_devices:
                    return tensor, 0
                return gather_rows(tensor, with_grad=with_grad, counts=counts)

            # Embeddings of the union batch, in rank order; this rank's rows are [offset, offset + batch).
            emb_all, offset = [], 0
            for emb in embeddings:
                gathered, offset = gather(F.normalize(_fp32(emb), dim=-1), True)
                emb_all.append(gathered)  # (Bt, D) each
            q_all, docs_all = emb_all[0], emb_all[1:]
            p_all = docs_all[0]  # (Bt, D)
            total = q_all.shape[0]
            rows = slice(offset, offset + batch)
            positive_index = torch.arange(offset, offset + batch, device=device)  # (B,)

            hash_all = [gather(h, False)[0] for h in hashes]  # (Bt,) int64 per column
            known_all = [gather(k, False)[0] for k in known]  # (Bt,) bool per column
            cand_hash, cand_known = torch.cat(hash_all[1:]), torch.cat(known_all[1:])  # (Nc,)

            # Component 3 (part 1): the embeddings the logits use.
            q_rows, q_cols = q_all[rows], q_all  # (B, D), (Bt, D)
            p_rows, cands = p_all[rows], torch.cat(docs_all, dim=0)  # (B, D), (Nc, D), Nc = Bt * (1 + k)
            coral_raw = torch.zeros((), dtype=q_all.dtype, device=device)
            self._whitening_fit, self._residual_cache = None, None
            if self.use_whitening_coral and self.logits_on_whitened:
                fit = BatchWhitening(torch.cat([q_all, p_all]), self.whitening_eps, out_of_sample=num_cols > 2)
                q_hat, p_hat = fit.whitened[:total], fit.whitened[total:]  # (Bt, D) each
                coral_raw = coral_loss(q_hat, p_hat)
                self._whitening_fit = fit
                negatives_hat = [fit.transform(d) for d in docs_all[1:]]  # (Bt, D) each
                q_cols = F.normalize(q_hat, dim=-1)
                p_cols = F.normalize(p_hat, dim=-1)
                q_rows, p_rows = q_cols[rows], p_cols[rows]
                cands = torch.cat([p_cols, *(F.normalize(n, dim=-1) for n in negatives_hat)], dim=0)

            cos = q_rows @ cands.mT  # (B, Nc) cosine similarities at the full dimension
            if self.use_whitening_coral and not self.logits_on_whitened:
                # On one rank the logits' positive block is exactly Q P^T: share it with the whitening Gram.
                shared = cos[:, :total] if total == batch else None
                coral_raw, self._whitening_fit = whitened_coral_loss(q_all, p_all, self.whitening_eps, qp_gram=shared)

            # Component 1: tau(q_i, d_j), shared by every Matryoshka dimension (one calibrated score scale).
            if log_tau is not None:
                q_mod_all = gather(masks[0], False)[0]  # (Bt, M)
                cand_mod = torch.cat([gather(m, False)[0] for m in masks[1:]])  # (Nc, M)
                tau = pair_temperature(log_tau, q_mod_all[rows], cand_mod)  # (B, Nc)
                tau_t = pair_temperature(log_tau, cand_mod[:total][rows], q_mod_all) if self.symmetric else None
            else:
                tau = tau_t = self.temperature

            admissible = self._admissible_forward(
                positive_index, total, cands.shape[0], hash_all[0], known_all[0], cand_hash, cand_known
            )  # (B, Nc)
            admissible_t = None
            if self.symmetric:
                admissible_t = self._admissible_reverse(
                    positive_index, total, hash_all[0], known_all[0], cand_hash[:total], cand_known[:total]
                )  # (B, Bt)
            rho = self.rho

            # Component 2 at each Matryoshka dimension d: the leading d components, re-normalised (what
            # truncate_dim does at inference); d = D uses the vectors as they are.
            contrastive = torch.zeros((), dtype=cos.dtype, device=device)
            per_dim: dict[int, Tensor] = {}
            keep_full = admissible
            for d, weight in self.matryoshka_plan(dim):
                if d == dim:
                    cos_d, p_rows_d, q_cols_d = cos, p_rows, q_cols
                else:
                    cos_d = _prefix(q_rows, d) @ _prefix(cands, d).mT  # (B, Nc)
                    p_rows_d, q_cols_d = (_prefix(p_rows, d), _prefix(q_cols, d)) if self.symmetric else (None, None)
                logits = cos_d / tau  # (B, Nc)
                keep = (
                    hard_negative_mask(logits, positive_index, rho, candidate_mask=admissible)
                    if rho > 0
                    else admissible
                )
                term = self._contrastive(logits, positive_index, keep)
                if self.symmetric:
                    logits_t = (p_rows_d @ q_cols_d.mT) / tau_t  # (B, Bt) positive i vs every query
                    keep_t = (
                        hard_negative_mask(logits_t, positive_index, rho, candidate_mask=admissible_t)
                        if rho > 0
                        else admissible_t
                    )
                    term = (term + self._contrastive(logits_t, positive_index, keep_t)) / 2
                if d == dim:
                    keep_full = keep
                per_dim[d] = term.detach()
                contrastive = contrastive + weight * term

            coral = self.lambda_coral * coral_raw if self.use_whitening_coral else coral_raw
            self._record_diagnostics(log_tau, rho, keep_full, admissible, positive_index, coral_raw)
            if self.matryoshka_dims is not None:
                for d, value in per_dim.items():
                    self._diagnostics[f"dcl@{d}"] = value
        return {"dcl": contrastive, "coral": coral}

    def _contrastive(self, logits: Tensor, positive_index: Tensor, keep: Tensor) -> Tensor:
        if self.use_dcl:
            return debiased_contrastive_loss(logits, positive_index, keep, self.gamma_plus, self.dcl_eps)
        return info_nce_loss(logits, positive_index, keep)

    def _admissible_forward(
        self,
        positive_index: Tensor,
        total: int,
        num_cands: int,
        q_hash: Tensor,
        q_known: Tensor,
        cand_hash: Tensor,
        cand_known: Tensor,
    ) -> Tensor:
        """``(B, Nc)`` bool: candidate j may be a negative of query row i (before the curriculum)."""
        batch = positive_index.shape[0]
        device = positive_index.device
        admissible = torch.ones(batch, num_cands, dtype=torch.bool, device=device)
        admissible[torch.arange(batch, device=device), positive_index] = False
        if self.hard_negative_scope == "own":
            column = torch.arange(num_cands, device=device)
            foreign_hard = (column[None, :] >= total) & (column[None, :] % total != positive_index[:, None])
            admissible &= ~foreign_hard
        qh, qk = q_hash[positive_index], q_known[positive_index]  # (B,) this rank's queries
        ph, pk = cand_hash[positive_index], cand_known[positive_index]  # (B,) their positives
        duplicate = _same_content(ph, pk, cand_hash, cand_known)  # equal to our positive
        duplicate |= _same_content(qh, qk, cand_hash, cand_known)  # equal to our query
        duplicate[:, :total] |= _same_content(qh, qk, q_hash, q_known)  # positive of a pair with an identical query
        return admissible & ~duplicate

    def _admissible_reverse(
        self, positive_index: Tensor, total: int, q_hash: Tensor, q_known: Tensor, p_hash: Tensor, p_known: Tensor
    ) -> Tensor:
        """``(B, Bt)`` bool: query j may be a negative of positive row i (symmetric term)."""
        batch = positive_index.shape[0]
        admissible = torch.ones(batch, total, dtype=torch.bool, device=positive_index.device)
        admissible[torch.arange(batch, device=positive_index.device), positive_index] = False
        qh, qk = q_hash[positive_index], q_known[positive_index]
        ph, pk = p_hash[positive_index], p_known[positive_index]
        duplicate = _same_content(qh, qk, q_hash, q_known)  # a duplicate of our query
        duplicate |= _same_content(ph, pk, q_hash, q_known)  # a query equal to our positive
        duplicate |= _same_content(ph, pk, p_hash, p_known)  # a pair whose positive equals ours
        return admissible & ~duplicate

    # ------------------------------------------------------------------------------------------------ checks
    def _resolve_log_temperature(self, override: Tensor | None) -> Tensor | None:
        if not self.use_temperature:
            return None
        if override is not None:
            return override
        param = self.log_temperature_of()
        if param is None:
            raise ValueError(
                f"use_temperature=True but no '*{LOG_TEMPERATURE_SUFFIX}' parameter was found on the model "
                "(or the model is None); pass log_temperature= or set use_temperature=False"
            )
        return param

    @staticmethod
    def _check_masks(
        masks: Sequence[Tensor | None] | None, num_cols: int, batch: int, log_tau: Tensor | None
    ) -> list[Tensor] | None:
        if log_tau is None:
            return None
        if log_tau.ndim != 1:
            raise ValueError(f"log_temperature must have shape (M,), got {tuple(log_tau.shape)}")
        if masks is None or len(masks) != num_cols:
            got = "none" if masks is None else len(masks)
            raise ValueError(f"need one modality mask per input column ({num_cols}), got {got}")
        for column, mask in enumerate(masks):
            if mask is None:
                raise ValueError(f"column {column} has no modality mask")
            if tuple(mask.shape) != (batch, log_tau.shape[0]) or mask.dtype != torch.bool:
                raise ValueError(
                    f"column {column}: modality_mask must be bool of shape {(batch, log_tau.shape[0])}, "
                    f"got {mask.dtype} {tuple(mask.shape)}"
                )
        return list(masks)

    @staticmethod
    def _check_hashes(
        hashes: Sequence[Tensor | None] | None, num_cols: int, batch: int, device: torch.device
    ) -> tuple[list[Tensor], list[Tensor]]:
        if hashes is None:
            hashes = [None] * num_cols
        if len(hashes) != num_cols:
            raise ValueError(
                f"need one content hash entry (tensor or None) per input column ({num_cols}), got {len(hashes)}"
            )
        values, known = [], []
        for column, h in enumerate(hashes):
            if h is None:
                values.append(torch.zeros(batch, dtype=torch.long, device=device))
                known.append(torch.zeros(batch, dtype=torch.bool, device=device))
                continue
            if tuple(h.shape) != (batch,) or h.dtype.is_floating_point or h.dtype == torch.bool:
                raise ValueError(
                    f"column {column}: content_hash must be an integer tensor of shape ({batch},), got {h.dtype} {tuple(h.shape)}"
                )
            values.append(h.to(device=device, dtype=torch.long))
            known.append(torch.ones(batch, dtype=torch.bool, device=device))
        return values, known

    # ------------------------------------------------------------------------------------------------ diagnostics
    def _record_diagnostics(
        self,
        log_tau: Tensor | None,
        rho: float,
        keep: Tensor,
        admissible: Tensor,
        positive_index: Tensor,
        coral_raw: Tensor,
    ) -> None:
        # Detached tensors: converting to float (a device sync) waits until the trainer reads them.
        diagnostics: dict[str, Tensor | float] = {}
        if log_tau is not None:
            taus = log_tau.detach().float().exp()
            names = MODALITIES if taus.shape[0] == len(MODALITIES) else [str(m) for m in range(taus.shape[0])]
            for name, value in zip(names, taus):
                diagnostics[f"tau_{name}"] = value
        else:
            for name in MODALITIES:
                diagnostics[f"tau_{name}"] = self.temperature
        diagnostics["rho"] = rho
        available = admissible.sum()
        diagnostics["negatives_kept_fraction"] = keep.sum() / available.clamp_min(1)
        if self.use_whitening_coral:
            diagnostics["coral_unweighted"] = coral_raw.detach()
        self._diagnostics = diagnostics

    @property
    def last_diagnostics(self) -> dict[str, float]:
        """Diagnostics of the last call: ``tau_<modality>``, ``rho``, ``negatives_kept_fraction`` (of the admissible
        negatives, query -> candidate direction) and, with whitening, ``coral_unweighted`` and ``whitening_residual``
        (:func:`~e5omni.train.losses.functional.whitening_residual`, computed when read)."""
        out = {name: float(value) for name, value in self._diagnostics.items()}
        if self._whitening_fit is not None:
            if self._residual_cache is None:
                self._residual_cache = self._whitening_fit.residual()
            out["whitening_residual"] = self._residual_cache
        return out

    # ------------------------------------------------------------------------------------------------ card
    def get_config_dict(self) -> dict[str, Any]:
        return {
            "use_temperature": self.use_temperature,
            "temperature": self.temperature,
            "use_curriculum": self.use_curriculum,
            "rho_init": self.rho_init,
            "rho_final": self.rho_final,
            "curriculum_warmup_steps": self.curriculum_warmup_steps,
            "use_dcl": self.use_dcl,
            "gamma_plus": self.gamma_plus,
            "dcl_eps": self.dcl_eps,
            "use_whitening_coral": self.use_whitening_coral,
            "lambda_coral": self.lambda_coral,
            "whitening_eps": self.whitening_eps,
            "logits_on_whitened": self.logits_on_whitened,
            "symmetric": self.symmetric,
            "hard_negative_scope": self.hard_negative_scope,
            "gather_across_devices": self.gather_across_devices,
            "matryoshka_dims": None if self.matryoshka_dims is None else list(self.matryoshka_dims),
            "matryoshka_weights": None if self.matryoshka_weights is None else list(self.matryoshka_weights),
        }

    @property
    def citation(self) -> str:
        return _CITATION


def _prefix(unit: Tensor, dim: int) -> Tensor:
    """The leading ``dim`` components of unit rows, re-normalised: ``(n, D) -> (n, dim)``."""
    return F.normalize(unit[:, :dim], dim=-1)


def _check_matryoshka(
    dims: Sequence[int] | None, weights: Sequence[float] | None
) -> tuple[tuple[int, ...] | None, tuple[float, ...] | None]:
    """Validated ``(dims, weights)``; each bad entry is named by its position."""
    if dims is None:
        if weights is not None:
            raise ValueError("matryoshka_weights needs matryoshka_dims (one weight per dimension)")
        return None, None
    if isinstance(dims, (str, bytes)) or not isinstance(dims, Sequence) or len(dims) == 0:
        raise ValueError(f"matryoshka_dims must be a non-empty sequence of ints, got {dims!r}")
    seen: dict[int, int] = {}
    for i, d in enumerate(dims):
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ValueError(f"matryoshka_dims[{i}] must be an int >= 1, got {d!r}")
        if d in seen:
            raise ValueError(f"matryoshka_dims[{i}] = {d} repeats matryoshka_dims[{seen[d]}]")
        seen[d] = i
    if weights is None:
        weights = [1.0] * len(dims)
    if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence) or len(weights) != len(dims):
        got = len(weights) if isinstance(weights, Sequence) and not isinstance(weights, (str, bytes)) else weights
        raise ValueError(f"matryoshka_weights needs one weight per dimension ({len(dims)}), got {got!r}")
    for i, w in enumerate(weights):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"matryoshka_weights[{i}] must be a finite number >= 0, got {w!r}")
    return tuple(int(d) for d in dims), tuple(float(w) for w in weights)


def _sentence_embedding(output: Any, column: int) -> Tensor:
    try:
        return output["sentence_embedding"]
    except (KeyError, TypeError, IndexError):
        raise ValueError(
            f"column {column}: the model output has no 'sentence_embedding'; E5OmniLoss expects a "
            "sentence-transformers style model whose forward returns the features dict"
        ) from None
