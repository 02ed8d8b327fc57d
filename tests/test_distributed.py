"""Multi-process training as users launch it: every trainable parameter gets a gradient on every rank at every step
(DDP with find_unused_parameters=False checks this at the START of the next step, so one-step runs cannot see it),
and `torchrun --nproc_per_node 2` with batch B equals one process with batch 2B over several steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from e5omni.tiny import BACKBONES, build_tiny_model
from modeling_e5omni.sentence_e5omni import sentence_transformer
from tests.cli_runs import logged_losses, run, train_args
from tests.conftest import make_audio, make_image, make_video

REPO = Path(__file__).resolve().parents[1]
VL_PAIRS = "text->image,image->text,text->video,video->text,text+image->video"


def _items(modalities) -> list:
    items: list = ["a red circle", {"text": "a caption", "image": make_image(1)}, make_image(2)]
    items.append({"video": make_video(3)})
    if "audio" in modalities:
        items += [{"audio": make_audio(4)}, {"audio": make_audio(5), "video": make_video(6)}]
    return items


def _missing_gradients(model, items, path: str = "model") -> list[str]:
    model.train()
    model.zero_grad(set_to_none=True)
    if path == "model":
        model(**model.processor(items, role="document")).embeddings.sum().backward()
    else:  # what the trainer runs: sentence-transformers pools the module's token embeddings itself
        st = sentence_transformer(model, model.processor)
        st.train()
        st(st[0].preprocess(items))["sentence_embedding"].sum().backward()
    # log tau is read by the loss, not the forward (the trainer freezes it when temperatures are off)
    return [
        n for n, p in model.named_parameters() if p.requires_grad and p.grad is None and not n.startswith("alignment.")
    ]


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_trainable_parameter_gets_a_gradient_with_all_modalities(backbone):
    model, processor = build_tiny_model(backbone, seed=0)
    model.set_processor(processor)
    assert _missing_gradients(model, _items(model.config.modalities)) == []
    expected_frozen = ["backbone.audio_tower.audio_bos_eos_token.weight"] if backbone == "qwen2.5-omni" else []
    assert model.never_used_parameters() == expected_frozen


@pytest.mark.parametrize("path", ["model", "sentence-transformers"])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_a_text_only_batch_still_reaches_every_trainable_parameter(backbone, path):
    """What a rank holding only text (or a group_by_pair batch of text->text) does: the media towers get a zero
    gradient, and the embeddings are exactly those of eval mode."""
    model, processor = build_tiny_model(backbone, seed=0)
    model.set_processor(processor)
    assert _missing_gradients(model, ["a red circle", "two blue squares"], path) == []
    grads = [p.grad for n, p in model.named_parameters() if n.startswith("backbone.visual.") and p.requires_grad]
    assert grads and all(torch.count_nonzero(g) == 0 for g in grads)
    features = processor(["a red circle"], role="document")
    model.train()
    trained = model(**features).embeddings
    model.eval()
    with torch.no_grad():
        assert torch.equal(trained.detach(), model(**features).embeddings)


def test_frozen_parameters_stay_frozen_after_loading(tmp_path):
    from transformers import AutoModel

    from e5omni.release import save_hub_folder

    model, processor = build_tiny_model("qwen2.5-omni", seed=0)
    folder = save_hub_folder(model, processor, tmp_path / "m")
    loaded = AutoModel.from_pretrained(folder, trust_remote_code=True)
    frozen = [n for n, p in loaded.named_parameters() if not p.requires_grad]
    assert frozen == ["backbone.audio_tower.audio_bos_eos_token.weight"]


# --------------------------------------------------------------------------------------------- real multi-process
def _train_cmd(out: Path, backbone: str, batch: int, steps: int, *extra: str) -> list[str]:
    pairs = () if backbone == "qwen2.5-omni" else ("--synthetic_pairs", VL_PAIRS)
    return train_args(out, *extra, *pairs, steps=steps, batch=batch, model_name_or_path=f"tiny:{backbone}")


def _run(cmd: list[str], port: int | None = None, nproc: int = 1) -> None:
    run(cmd, nproc=nproc if port is not None else None, port=port)


def _two_equals_one(tmp_path: Path, backbone: str, port: int, steps: int = 6) -> None:
    single, double, release = tmp_path / "single", tmp_path / "double", tmp_path / "release"
    _run(_train_cmd(single, backbone, 4, steps))
    _run(
        _train_cmd(double, backbone, 2, steps, "--ddp_backend", "gloo", "--release_dir", str(release)),
        port=port,
        nproc=2,
    )
    # --release_dir under two ranks: written once (rank 0, the other waiting), complete, and the trained model.
    from transformers import AutoModel

    released = AutoModel.from_pretrained(release, trust_remote_code=True)
    trained = AutoModel.from_pretrained(double, trust_remote_code=True)
    probes = ["a red circle", "two blue squares"]
    assert torch.equal(released.encode_document(probes), trained.encode_document(probes))
    one, two = logged_losses(single), logged_losses(double)
    assert sorted(one) == sorted(two) == list(range(1, steps + 1))
    # Two ranks of 2 gather to the same 4-row batch the single process sees (measured max |dloss| ~2e-6).
    worst = max(abs(one[s] - two[s]) for s in one)
    assert worst < 1e-4, (one, two)
    # Batches of 2 per rank over 6 steps: some rank batches lack audio or video, so this also exercises the towers'
    # zero gradients; DDP would have stopped at the start of step 2 otherwise.


@pytest.mark.slow
def test_two_processes_equal_one_process_over_six_steps_qwen2_5_omni(tmp_path):
    """Slow (54 s of three process starts): its mechanisms keep fast default tests: every trainable parameter gets a
    gradient on every batch (the in-process tests above), 2 x B == 1 x 2B for the loss and gradients under real DDP
    (tests/test_losses_distributed.py), a release / adapter written once while the other rank waits
    (test_release_and_adapter_written_once_and_complete_on_every_rank there)."""
    _two_equals_one(tmp_path, "qwen2.5-omni", 29541)


@pytest.mark.slow
@pytest.mark.parametrize("backbone,port", [("qwen2-vl", 29542), ("qwen2.5-vl", 29543)])
def test_two_processes_equal_one_process_over_six_steps_vl(tmp_path, backbone, port):
    _two_equals_one(tmp_path, backbone, port)


@pytest.mark.slow
def test_two_processes_with_homogeneous_batches(tmp_path):
    """group_by_pair: every rank batch is one modality pair, so most batches leave a tower unreached."""
    _run(
        _train_cmd(tmp_path / "grouped", "qwen2.5-omni", 4, 4, "--group_by_pair", "true", "--ddp_backend", "gloo"),
        29544,
        2,
    )
    assert sorted(logged_losses(tmp_path / "grouped")) == [1, 2, 3, 4]
