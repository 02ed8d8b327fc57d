"""E5OmniTrainer end to end on the tiny model: CLI, state that must survive, LoRA, GradCache, resume, DDP."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModel

from e5omni.cli import main
from e5omni.data.synthetic import build_synthetic
from e5omni.tiny import build_tiny_model
from e5omni.train.lora import apply_lora, lora_config, lora_targets
from e5omni.train.trainer import E5OmniTrainer, E5OmniTrainingArguments
from tests.cli_runs import env, logged_losses, train_args
from tests.conftest import make_image
from tests.helpers import training_args

REPO = Path(__file__).resolve().parents[1]
PROBES = ["a red circle on the left", {"image": make_image(7)}, {"text": "beeps", "image": make_image(8)}]


def _tiny(seed=0):
    model, processor = build_tiny_model("qwen2.5-omni", seed=seed)
    model.set_processor(processor)
    return model


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="rho_init must be in"):
        E5OmniTrainingArguments(output_dir="x", rho_init=1.5, report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match="temperature_min <= temperature_init"):
        E5OmniTrainingArguments(
            output_dir="x", temperature_init=5.0, temperature_max=1.0, report_to="none", use_cpu=True
        )


def test_examples_without_enough_negatives_are_named(tmp_path):
    examples = build_synthetic("train", n=9, seed=0)
    examples[4] = {k: v for k, v in examples[4].items() if k != "negatives"}
    with pytest.raises(ValueError, match="example 4 has 0 hard negatives, but num_negatives=2"):
        E5OmniTrainer(_tiny(), training_args(tmp_path, num_negatives=2), examples)


def test_cli_smoke_state_changes_and_survives_release(tmp_path):
    out, release = tmp_path / "run", tmp_path / "release"
    code = main(
        [
            "train",
            "--config",
            str(REPO / "configs" / "demo.yaml"),
            "--synthetic_size",
            "48",
            "--num_train_epochs",
            "1",
            "--per_device_train_batch_size",
            "8",
            "--temperature_lr",
            "0.05",
            "--output_dir",
            str(out),
            "--release_dir",
            str(release),
            "--logging_steps",
            "1",
            "--disable_tqdm",
            "true",
        ]
    )
    assert code == 0
    state = json.loads((out / "trainer_state.json").read_text())
    logged = [h for h in state["log_history"] if "loss" in h]
    assert len(logged) == 6  # 48 examples / 8 per step, logged every step
    for key in ("dcl", "coral", "tau_text", "tau_image", "tau_audio", "tau_video", "rho", "negatives_kept_fraction"):
        assert key in logged[-1], key
    auto = AutoModel.from_pretrained(release, trust_remote_code=True)
    temperatures = auto.temperatures
    assert any(abs(t - 0.02) > 1e-4 for t in temperatures.values()), temperatures  # tau learned
    assert int(auto.alignment.whitening_updates) > 0
    assert not torch.equal(auto.alignment.whitening_matrix, torch.eye(auto.config.hidden_size))
    st = SentenceTransformer(str(release), trust_remote_code=True, device="cpu")
    diff = (st.encode_document(PROBES, convert_to_tensor=True) - auto.encode_document(PROBES)).abs().max()
    assert diff < 1e-5


def test_temperatures_clamped_and_not_decayed(tmp_path):
    model = _tiny()
    examples = build_synthetic("train", n=16, seed=0)
    args = training_args(tmp_path, temperature_lr=50.0, weight_decay=0.5, temperature_max=0.05, temperature_min=0.01)
    trainer = E5OmniTrainer(model, args, examples)
    trainer.train()
    tau = model.log_temperature.detach().exp()
    assert (tau >= 0.01 - 1e-7).all() and (tau <= 0.05 + 1e-7).all(), tau
    groups = [g for g in trainer.optimizer.param_groups if any(p is model.log_temperature for p in g["params"])]
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.0 and groups[0]["initial_lr"] == 50.0


def test_group_by_pair_batches_are_homogeneous(tmp_path):
    examples = build_synthetic("train", n=72, seed=0)
    trainer = E5OmniTrainer(_tiny(), training_args(tmp_path, group_by_pair=True), examples)
    loader = trainer.get_train_dataloader()
    seen = 0
    for batch in loader:
        masks = batch["query_modality_mask"], batch["positive_modality_mask"]
        assert all((m == m[0]).all() for m in masks)
        seen += 1
    assert seen == 9


def test_lora_only_on_language_model_and_merged_release_reloads(tmp_path):
    model = apply_lora(_tiny(), lora_config(r=4, alpha=8, dropout=0.0))
    targets = lora_targets(model)
    assert targets and all(".language_model.layers." in f".{t}" for t in targets)
    assert not [t for t in targets if "visual" in t or "audio_tower" in t]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all("lora_" in n or n.endswith("log_temperature") for n in trainable)
    trainer = E5OmniTrainer(model, training_args(tmp_path, learning_rate=5e-3), build_synthetic("train", n=24, seed=0))
    trainer.train()
    before = trainer.e5omni_model.encode_document(PROBES)
    release = trainer.save_release(tmp_path / "release")
    assert not (release / "adapter_config.json").exists()
    reloaded = AutoModel.from_pretrained(release, trust_remote_code=True)
    assert (reloaded.encode_document(PROBES) - before).abs().max() < 1e-5
    assert reloaded.temperatures == pytest.approx(trainer.e5omni_model.temperatures)


def test_gradcache_first_step_equals_plain(tmp_path):
    examples = build_synthetic("train", n=8, seed=0)
    losses = []
    for mini in (None, 3):
        trainer = E5OmniTrainer(_tiny(), training_args(tmp_path, max_steps=1, gradcache_mini_batch_size=mini), examples)
        trainer.train()
        losses.append(next(h["loss"] for h in trainer.state.log_history if "loss" in h))
    assert abs(losses[0] - losses[1]) < 1e-5, losses


def _train_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, *train_args(out, *extra, save_strategy="steps", save_steps=4)]


@pytest.mark.slow
def test_resume_after_kill_reproduces_the_loss_curve(tmp_path):
    full = tmp_path / "full"
    subprocess.run(_train_cmd(full), check=True, env=env(), cwd=REPO, capture_output=True)
    reference = logged_losses(full)
    assert sorted(reference) == list(range(1, 17))

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(killed), env=env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    marker = killed / "checkpoint-4" / "trainer_state.json"
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists(), proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "timeout"
    proc.send_signal(signal.SIGKILL)  # mid-run, right after its first checkpoint
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    checkpoints = sorted(
        (p for p in killed.glob("checkpoint-*") if (p / "trainer_state.json").exists()),
        key=lambda p: int(p.name.split("-")[1]),
    )
    last = checkpoints[-1]
    start = int(last.name.split("-")[1])
    assert start < 16, "the run finished before it could be killed"
    resumed = subprocess.run(
        _train_cmd(killed, "--resume_from_checkpoint", str(last)), env=env(), cwd=REPO, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = logged_losses(killed)
    for step in range(start + 1, 17):
        assert abs(after[step] - reference[step]) < 1e-5, (step, after[step], reference[step])
    final_full = AutoModel.from_pretrained(full, trust_remote_code=True)
    final_resumed = AutoModel.from_pretrained(killed, trust_remote_code=True)
    assert torch.allclose(final_full.log_temperature, final_resumed.log_temperature, atol=1e-6)
    assert torch.allclose(final_full.alignment.whitening_mean, final_resumed.alignment.whitening_mean, atol=1e-6)


def test_push_to_hub_goes_through_the_atomic_push(tmp_path):
    from tests.helpers import FakeHfApi

    api = FakeHfApi()
    model = apply_lora(_tiny(), lora_config(r=4, alpha=8, dropout=0.0))
    args = training_args(tmp_path, hub_model_id="me/e5-omni-tiny", hub_token="hf_FAKEtoken1234567890abcd", max_steps=2)
    trainer = E5OmniTrainer(model, args, build_synthetic("train", n=16, seed=0), hub_api=api)
    trainer.train()
    expected = trainer.e5omni_model.encode_document(PROBES)
    result = trainer.push_to_hub()
    commits = [c for c in api.calls if c[0] == "create_commit"]
    assert len(commits) == 1
    assert result.commit_oid
    folder = tmp_path / "pulled"
    api.snapshot_download("me/e5-omni-tiny", revision=result.commit_oid, local_dir=str(folder))
    names = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "modules.json", "README.md", "calibration.json"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))]
    assert "hf_FAKEtoken1234567890abcd" not in "".join(
        p.read_text(errors="ignore") for p in folder.rglob("*") if p.is_file()
    )
    reloaded = AutoModel.from_pretrained(folder, trust_remote_code=True)
    assert (reloaded.encode_document(PROBES) - expected).abs().max() < 1e-5
    assert has_lora_layers(trainer.e5omni_model)  # training state untouched: LoRA merged on a copy


def has_lora_layers(model) -> bool:
    return bool(lora_targets(model))


def test_gradient_checkpointing_reaches_the_backbone_and_keeps_the_loss(tmp_path):
    examples = build_synthetic("train", n=16, seed=0)
    losses = []
    for checkpointing in (False, True):
        model = _tiny()
        trainer = E5OmniTrainer(
            model, training_args(tmp_path, max_steps=2, activation_checkpointing=checkpointing), examples
        )
        trainer.train()
        losses.append([h["loss"] for h in trainer.state.log_history if "loss" in h])
        layers = [m for m in model.modules() if type(m).__name__ == "Qwen2_5OmniDecoderLayer"]
        assert all(getattr(m, "gradient_checkpointing", False) == checkpointing for m in layers)
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)


def test_lora_checkpoint_resumes_in_process(tmp_path):
    examples = build_synthetic("train", n=32, seed=0)
    overrides = dict(max_steps=4, save_strategy="steps", save_steps=2, per_device_train_batch_size=8)

    def run(resume=None):
        model = apply_lora(_tiny(), lora_config(r=4, alpha=8, dropout=0.0))
        trainer = E5OmniTrainer(model, training_args(tmp_path, **overrides), examples)
        trainer.train(resume_from_checkpoint=resume)
        return {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}, trainer

    full, _ = run()
    checkpoint = tmp_path / "out" / "checkpoint-2"
    assert (checkpoint / "lora_config.json").exists()
    resumed, trainer = run(str(checkpoint))
    for step in (3, 4):
        assert resumed[step] == pytest.approx(full[step], abs=1e-5)


def _reshard(checkpoint: Path, max_shard_size: str) -> int:
    """Rewrite a checkpoint's weights as the model's own save_pretrained shards them; returns the shard count."""
    from modeling_e5omni import E5OmniModel

    model = E5OmniModel.from_pretrained(checkpoint)
    (checkpoint / "model.safetensors").unlink()
    model.save_pretrained(checkpoint, max_shard_size=max_shard_size)
    assert not (checkpoint / "model.safetensors").exists()
    index = json.loads((checkpoint / "model.safetensors.index.json").read_text())
    return len(set(index["weight_map"].values()))


def test_sharded_checkpoint_resumes_to_the_uninterrupted_loss_curve(tmp_path):
    """A 3B / 7B checkpoint is several safetensors files with an index: resume loads it (transformers' loader)."""
    examples = build_synthetic("train", n=32, seed=0)
    overrides = dict(max_steps=4, save_strategy="steps", save_steps=2, per_device_train_batch_size=8)

    def run(resume=None):
        model = _tiny()
        trainer = E5OmniTrainer(model, training_args(tmp_path, **overrides), examples)
        trainer.train(resume_from_checkpoint=resume)
        return {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}, model

    full, full_model = run()
    checkpoint = tmp_path / "out" / "checkpoint-2"
    assert _reshard(checkpoint, "200KB") >= 2
    resumed, resumed_model = run(str(checkpoint))
    assert sorted(resumed) == [1, 2, 3, 4]  # steps 1-2 from the checkpoint's history, 3-4 run after resuming
    for step in (3, 4):
        assert resumed[step] == pytest.approx(full[step], abs=1e-6)
    expected = full_model.state_dict()
    for name, value in resumed_model.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6, msg=name)


def test_a_checkpoint_of_another_model_is_refused_by_name(tmp_path):
    from e5omni.train.trainer import CheckpointMismatchError

    folder = tmp_path / "checkpoint-7"
    _tiny().save_pretrained(folder)  # no LoRA layers
    trainer = E5OmniTrainer(
        apply_lora(_tiny(), lora_config(r=4, alpha=8, dropout=0.0)),
        training_args(tmp_path),
        build_synthetic("train", n=8),
    )
    with pytest.raises(CheckpointMismatchError, match=r"checkpoint-7 does not fit the model \(it was saved with other"):
        trainer._load_from_checkpoint(str(folder))
    _reshard(folder, "500KB")  # the sharded index is checked the same way
    with pytest.raises(CheckpointMismatchError, match=r"missing key\(s\) \['backbone\.language_model"):
        trainer._load_from_checkpoint(str(folder))


def test_only_the_saving_process_writes_a_checkpoint_or_the_final_model(tmp_path, monkeypatch):
    """transformers 5's save_model calls _save on every process (sentence-transformers' _save assumes process zero):
    under torchrun two ranks wrote the same folder at once and tore processor_config.json. A process whose
    should_save is False writes nothing; the saving process writes a folder that reloads."""
    trainer = E5OmniTrainer(_tiny(), training_args(tmp_path, max_steps=1), build_synthetic("train", n=8, seed=0))
    monkeypatch.setattr(E5OmniTrainingArguments, "should_save", property(lambda self: False))
    trainer.save_model(str(tmp_path / "other-rank"))
    assert not (tmp_path / "other-rank").exists() or not any((tmp_path / "other-rank").iterdir())
    monkeypatch.setattr(E5OmniTrainingArguments, "should_save", property(lambda self: True))
    trainer.save_model(str(tmp_path / "rank-0"))
    assert {"config.json", "processor_config.json", "modules.json"} <= {p.name for p in (tmp_path / "rank-0").iterdir()}
    json.loads((tmp_path / "rank-0" / "processor_config.json").read_text())
