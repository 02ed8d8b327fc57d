"""Two processes (gloo, CPU, DDP) give the same loss and gradients as one process over the union batch.

Convention (train/losses/distributed.py): each rank's loss is the mean over its own query rows against all gathered
candidates, plus the batch-level CORAL on the gathered batch; DDP averages gradients. So the mean of the per-rank
losses equals the union loss and the DDP gradient equals the union gradient, with no world-size factor anywhere.
"""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from e5omni.train.losses import CachedE5OmniLoss, E5OmniLoss, gather_rows

WORLD, LOCAL, FEATURES = 2, 3, 10


class DenseEncoder(nn.Module):
    """A sentence-transformers style model on dense inputs ``x`` (B, FEATURES), holding log_temperature."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(FEATURES, 16), nn.Tanh(), nn.Linear(16, dim))
        self.log_temperature = nn.Parameter(torch.tensor([0.02, 0.03, 0.025, 0.04]).log())

    def forward(self, features):
        return {**features, "sentence_embedding": F.normalize(self.proj(features["x"]), dim=-1)}


def batch_first_slicer(features, start, end):
    return {k: v[start:end] for k, v in features.items()}


SCENARIOS = {
    # name: (embedding dim, loss kwargs, cached mini-batch size or None, dtype)
    "full_gram_space": (16, {}, None, torch.float32),  # 12 whitening rows <= 16: Gram-space path
    # fp64: in fp32 the whitened logits' conditioning puts rounding at ~1e-5 of the gradient scale, which would hide
    # the convention this test is about; in fp64 any convention error shows at full size.
    "whitened_logits_symmetric_feature_space": (
        5,
        {"logits_on_whitened": True, "symmetric": True},
        None,
        torch.float64,
    ),
    "own_scope_no_dcl": (16, {"hard_negative_scope": "own", "use_dcl": False}, None, torch.float32),
    "cached_ddp": (16, {}, 2, torch.float32),
    # Matryoshka: every dimension's term is a mean over this rank's rows against the gathered candidates
    "matryoshka_symmetric": (
        16,
        {"matryoshka_dims": [8, 4], "matryoshka_weights": [0.5, 0.25], "symmetric": True},
        None,
        torch.float32,
    ),
    "matryoshka_cached_ddp": (16, {"matryoshka_dims": [6]}, 2, torch.float32),
}


def union_batch(seed: int = 0, dtype: torch.dtype = torch.float32) -> list[dict[str, torch.Tensor]]:
    """Queries, positives, one hard-negative column for WORLD * LOCAL pairs; duplicates across the two ranks."""
    gen = torch.Generator().manual_seed(seed)
    total = WORLD * LOCAL
    columns = []
    for c in range(3):
        modality = torch.rand(total, 4, generator=gen) < 0.4
        modality[~modality.any(1), 0] = True
        columns.append(
            {
                "x": torch.randn(total, FEATURES, generator=gen),
                "modality_mask": modality,
                "content_hash": torch.arange(total) + 100 * c,
            }
        )
    columns[1]["x"] = columns[0]["x"] + 0.5 * columns[1]["x"]
    columns[2]["content_hash"][1] = columns[1]["content_hash"][4]  # rank 0's negative == rank 1's positive
    columns[0]["content_hash"][5] = columns[0]["content_hash"][0]  # the same query on both ranks
    for column in columns:
        column["x"] = column["x"].to(dtype)
    return columns


def make_loss(name: str, model: nn.Module):
    _, kwargs, mini_batch, _ = SCENARIOS[name]
    options = {"curriculum_warmup_steps": 0, "whitening_eps": 1e-3} | kwargs
    loss = (
        E5OmniLoss(model, **options)
        if mini_batch is None
        else CachedE5OmniLoss(model, mini_batch_size=mini_batch, slicer=batch_first_slicer, **options)
    )
    loss.set_step(3, 10)
    return loss


def make_model(name: str) -> DenseEncoder:
    torch.manual_seed(0)
    return DenseEncoder(SCENARIOS[name][0]).to(SCENARIOS[name][3])


def run_step(loss, batch):
    out = loss(batch, None)
    torch.stack(list(out.values())).sum().backward()
    return {k: v.item() for k, v in out.items()}


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        results = {}
        rows = slice(rank * LOCAL, (rank + 1) * LOCAL)
        for name in SCENARIOS:
            model = make_model(name)
            ddp = DistributedDataParallel(model)  # find_unused_parameters=False: every parameter must get a grad
            batch = [{k: v[rows] for k, v in column.items()} for column in union_batch(dtype=SCENARIOS[name][3])]
            loss = make_loss(name, ddp)
            values = run_step(loss, batch)
            results[name] = {
                "loss": values,
                "grads": {n: p.grad.clone() for n, p in model.named_parameters()},
                "diagnostics": loss.last_diagnostics,
            }
        # Uneven rank sizes (the last batch of an epoch): padded for the collective, trimmed after.
        count = 3 if rank == 0 else 2
        local = (torch.arange(count * 2, dtype=torch.float32).reshape(count, 2) + 10 * rank).requires_grad_()
        gathered, offset = gather_rows(local, with_grad=True)
        weights = torch.arange(10, dtype=torch.float32).reshape(5, 2)
        (gathered * weights).sum().backward()
        flags, _ = gather_rows(torch.tensor([rank == 0] * count), with_grad=False)
        results["uneven"] = {"gathered": gathered.detach(), "offset": offset, "grad": local.grad, "flags": flags}
        results["release"] = _write_release_and_adapter(rank, port, out_dir)
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _write_release_and_adapter(rank: int, port: int, out_dir: str) -> dict:
    """E5OmniTrainer.save_adapter / save_release as `e5omni train --adapter_dir --release_dir` runs them on every
    rank: what each rank finds in the folders the moment the call returns (after the barrier)."""
    import os

    from e5omni.data.synthetic import build_synthetic
    from e5omni.tiny import build_tiny_model
    from e5omni.train.lora import apply_lora, has_lora, lora_config
    from e5omni.train.trainer import E5OmniTrainer, E5OmniTrainingArguments

    # what torchrun sets; accelerate then joins the process group this worker already opened
    env = {"RANK": rank, "LOCAL_RANK": rank, "WORLD_SIZE": WORLD, "LOCAL_WORLD_SIZE": WORLD}
    os.environ.update({**{k: str(v) for k, v in env.items()}, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    model, processor = build_tiny_model("qwen2.5-omni", seed=0)
    model.set_processor(processor)
    model = apply_lora(model, lora_config(r=4, alpha=8, dropout=0.0))
    args = E5OmniTrainingArguments(output_dir=f"{out_dir}/run", use_cpu=True, report_to="none", disable_tqdm=True)
    trainer = E5OmniTrainer(model, args, build_synthetic("train", n=8, seed=0))
    seen = {"processes": trainer.accelerator.num_processes, "zero": trainer.is_world_process_zero()}

    def listing(folder):
        return sorted((p.name, p.stat().st_size) for p in folder.iterdir()) if folder.exists() else []

    seen["adapter"] = listing(trainer.save_adapter(f"{out_dir}/adapter"))
    seen["release"] = listing(trainer.save_release(f"{out_dir}/release", overwrite=True))
    seen["merged"] = not has_lora(trainer.e5omni_model)
    return seen


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ranks")
    mp.spawn(_worker, args=(_free_port(), str(out_dir)), nprocs=WORLD, join=True)
    return _RankResults([torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD)], out_dir)


class _RankResults(list):
    """Each rank's results, and the folder the ranks wrote to."""

    def __init__(self, results, out_dir):
        super().__init__(results)
        self.out_dir = out_dir


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_two_ranks_equal_one_process_on_the_union_batch(rank_results, name):
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = make_model(name)
        loss = make_loss(name, model)
        union = run_step(loss, union_batch(dtype=SCENARIOS[name][3]))
        union_grads = {n: p.grad for n, p in model.named_parameters()}
        union_diag = loss.last_diagnostics
    finally:
        torch.set_num_threads(previous)
    ranks = [r[name] for r in rank_results]
    # The batch-level term is computed on the gathered batch: identical on every rank and in the union.
    for r in ranks:
        assert r["loss"]["coral"] == pytest.approx(union["coral"], rel=1e-5, abs=1e-9)
        assert r["diagnostics"]["whitening_residual"] == pytest.approx(union_diag["whitening_residual"], rel=1e-5)
    # Per-rank contrastive terms are means over each rank's rows: their mean is the union mean.
    mean_dcl = sum(r["loss"]["dcl"] for r in ranks) / WORLD
    assert mean_dcl == pytest.approx(union["dcl"], rel=1e-5)
    assert ranks[0]["loss"]["dcl"] != pytest.approx(ranks[1]["loss"]["dcl"], rel=1e-3)  # really different rows
    # DDP averages the gradients: every rank holds the union gradient, temperatures included. Compared relative to
    # each gradient's scale: with logits on whitened embeddings the gradients reach ~20 and fp32 rounding of the
    # (differently ordered) gathered sums shows up at ~3e-6 of that.
    assert set(ranks[0]["grads"]) == set(union_grads) and "log_temperature" in union_grads
    for param, expected in union_grads.items():
        scale = expected.abs().max().item()
        for r in ranks:
            error = (r["grads"][param] - expected).abs().max().item()
            assert error <= 1e-5 * scale + 1e-7, f"{name}: {param}: max error {error:.3g} at scale {scale:.3g}"
        torch.testing.assert_close(ranks[0]["grads"][param], ranks[1]["grads"][param], rtol=0, atol=0)


def test_gather_with_uneven_rank_sizes(rank_results):
    expected = torch.cat([torch.arange(6.0).reshape(3, 2), torch.arange(4.0).reshape(2, 2) + 10])
    weights = torch.arange(10, dtype=torch.float32).reshape(5, 2)
    for rank, results in enumerate(rank_results):
        uneven = results["uneven"]
        torch.testing.assert_close(uneven["gathered"], expected)
        assert uneven["offset"] == (0 if rank == 0 else 3)
        # Both ranks' losses read every row: a rank's rows receive the sum of both ranks' gradients.
        own = weights[:3] if rank == 0 else weights[3:]
        torch.testing.assert_close(uneven["grad"], WORLD * own)
        assert uneven["flags"].tolist() == [True] * 3 + [False] * 2


def test_release_and_adapter_written_once_and_complete_on_every_rank(rank_results, tmp_path_factory):
    """Rank 0 writes, the other rank waits at the barrier: both find the finished folders when the call returns (the
    release used to be written by every rank, each deleting the folder the other was writing), and both ranks hold
    the merged model afterwards."""
    from transformers import AutoModel

    seen = [r["release"] for r in rank_results]
    assert [s["processes"] for s in seen] == [WORLD, WORLD]
    assert [s["zero"] for s in seen] == [True, False]
    assert seen[0]["release"] == seen[1]["release"] and seen[0]["adapter"] == seen[1]["adapter"]
    release = {name for name, _ in seen[1]["release"]}
    assert {"model.safetensors", "config.json", "modules.json", "sentence_e5omni.py", "modeling_e5omni.py"} <= release
    assert {name for name, _ in seen[1]["adapter"]} == {"adapter_config.json", "adapter_model.safetensors"}
    assert all(s["merged"] for s in seen)
    folder = rank_results.out_dir / "release"
    model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    assert model.encode_document(["a red circle"]).shape == (1, model.config.hidden_size)


def test_gather_is_the_identity_outside_distributed():
    x = torch.randn(4, 3)
    gathered, offset = gather_rows(x, with_grad=True)
    assert gathered is x and offset == 0
