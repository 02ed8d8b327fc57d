"""LoRA adapter folders (`save_adapter`, `e5omni train --adapter_dir`) load with plain peft, with nothing else to do."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModel

from e5omni.cli import main
from e5omni.data.synthetic import build_synthetic
from e5omni.release import save_hub_folder
from e5omni.tiny import build_tiny_model
from e5omni.train.lora import apply_lora, lora_config, lora_targets, save_adapter
from e5omni.train.trainer import E5OmniTrainer
from tests.conftest import make_image
from tests.helpers import training_args

REPO = Path(__file__).resolve().parents[1]
PROBES = ["a red circle on the left", {"image": make_image(7)}, {"text": "beeps", "image": make_image(8)}]
ALIGNMENT_STATE = ("log_temperature", "whitening_mean", "whitening_covariance", "whitening_matrix", "whitening_updates")


def _tiny():
    model, processor = build_tiny_model("qwen2.5-omni", seed=0)  # what `tiny:qwen2.5-omni` builds for the CLI
    model.set_processor(processor)
    return model, processor


def _vectors(model) -> dict[str, torch.Tensor]:
    """Document vectors as configured (no whitening for the tiny model) and whitened, so both paths are compared."""
    config = model.config
    was_training, whitening = model.training, config.whitening
    model.eval()
    try:
        out = {"plain": model.encode_document(PROBES)}
        config.whitening = True
        out["whitened"] = model.encode_document(PROBES)
    finally:
        config.whitening = whitening
        model.train(was_training)
    return out


def _alignment_state(model) -> dict[str, torch.Tensor]:
    return {name: getattr(model.alignment, name).detach().clone() for name in ALIGNMENT_STATE}


def _load_with_peft(base: Path, adapter: Path):
    """The one-line load a user writes, returning the model and every warning it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(AutoModel.from_pretrained(base, trust_remote_code=True), adapter)
    return model, [str(w.message) for w in caught]


def _assert_close(got: dict, want: dict, tol: float = 1e-5) -> None:
    for key in want:
        diff = (got[key] - want[key]).abs().max()
        assert diff < tol, (key, float(diff))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A LoRA run of a few steps: the untrained base folder, the adapter, the merged release, and what they hold."""
    tmp = tmp_path_factory.mktemp("peft")
    model, processor = _tiny()
    save_hub_folder(model, processor, tmp / "base")
    untrained = _alignment_state(model)
    model = apply_lora(model, lora_config(r=4, alpha=8, dropout=0.0))
    args = training_args(tmp, max_steps=3, learning_rate=5e-3)  # output under tmp / "out", CPU, no saves, no reports
    trainer = E5OmniTrainer(model, args, build_synthetic("train", n=32, seed=0))
    trainer.train()
    adapter = save_adapter(trainer.e5omni_model, tmp / "adapter", base_model_name_or_path=tmp / "base")
    trained = {
        "vectors": _vectors(trainer.e5omni_model),
        "alignment": _alignment_state(trainer.e5omni_model),
        "temperatures": trainer.e5omni_model.temperatures,
    }
    release = trainer.save_release(tmp / "release")  # merges LoRA into the trainer's model, so after the adapter
    return {"base": tmp / "base", "adapter": adapter, "release": release, "untrained": untrained, **trained}


def test_adapter_folder_is_what_peft_itself_writes(run, tmp_path):
    adapter = run["adapter"]
    assert sorted(p.name for p in adapter.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    assert config["modules_to_save"] == ["alignment"]
    assert config["base_model_name_or_path"] == str(run["base"])
    assert config["inference_mode"] is True
    state = load_file(str(adapter / "adapter_model.safetensors"))
    assert all(k.startswith("base_model.model.") for k in state)
    assert "base_model.model.backbone.language_model.layers.0.self_attn.q_proj.lora_A.weight" in state
    assert {k for k in state if ".alignment." in k} == {f"base_model.model.alignment.{n}" for n in ALIGNMENT_STATE}

    # peft's own save of the same base model and LoraConfig: the same keys, shapes, dtypes and config
    base = AutoModel.from_pretrained(run["base"], trust_remote_code=True)
    reference_config = lora_config(r=4, alpha=8, dropout=0.0)
    reference_config.modules_to_save = ["alignment"]
    get_peft_model(base, reference_config).save_pretrained(str(tmp_path / "reference"))
    reference = load_file(str(tmp_path / "reference" / "adapter_model.safetensors"))
    assert {k: (v.shape, v.dtype) for k, v in state.items()} == {k: (v.shape, v.dtype) for k, v in reference.items()}
    reference_json = json.loads((tmp_path / "reference" / "adapter_config.json").read_text())
    # auto_mapping: ours names transformers' AutoModel (peft's allowlist; the base folder's auto_map finds the class),
    # peft's here the remote-code copy's module
    assert config.pop("auto_mapping") == {"base_model_class": "AutoModel", "parent_library": "transformers"}
    reference_json.pop("auto_mapping")
    assert config == reference_json


def test_plain_peft_load_restores_the_trained_model(run):
    assert int(run["alignment"]["whitening_updates"]) > 0  # the run changed every piece of alignment state
    for name in ALIGNMENT_STATE:
        assert not torch.equal(run["alignment"][name], run["untrained"][name]), name
    model, caught = _load_with_peft(run["base"], run["adapter"])
    assert not [m for m in caught if "missing" in m.lower() or "unexpected" in m.lower()], caught
    lora_b = [m.lora_B["default"].weight for _, m in model.named_modules() if hasattr(m, "lora_B")]
    assert lora_b and all(w.abs().max() > 0 for w in lora_b)
    _assert_close(_vectors(model), run["vectors"])
    assert model.temperatures == run["temperatures"]
    for name, value in run["alignment"].items():
        assert torch.equal(getattr(model.base_model.model.alignment, name), value), name


def test_merge_and_unload_equals_the_release(run):
    model, _ = _load_with_peft(run["base"], run["adapter"])
    merged = model.merge_and_unload()
    assert not lora_targets(merged)
    release = AutoModel.from_pretrained(run["release"], trust_remote_code=True)
    _assert_close(_vectors(merged), _vectors(release))
    assert merged.temperatures == pytest.approx(release.temperatures)
    for name in ALIGNMENT_STATE:
        assert torch.equal(getattr(merged.alignment, name), getattr(release.alignment, name)), name


def test_cli_adapter_dir_loads_with_peft_and_merges_to_the_release(tmp_path):
    model, processor = _tiny()
    save_hub_folder(model, processor, tmp_path / "base")
    adapter, release = tmp_path / "adapter", tmp_path / "release"
    flags = {
        "use_peft": "true",
        "lora_r": 4,
        "synthetic_size": 32,
        "max_steps": 2,
        "per_device_train_batch_size": 8,
        "output_dir": tmp_path / "run",
        "adapter_dir": adapter,
        "release_dir": release,
        "disable_tqdm": "true",
    }
    argv = ["train", "--config", str(REPO / "configs" / "demo.yaml")]
    code = main(argv + [arg for key, value in flags.items() for arg in (f"--{key}", str(value))])
    assert code == 0
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["modules_to_save"] == ["alignment"]
    assert config["base_model_name_or_path"] is None  # the tiny model is built in memory: no folder to name
    loaded, caught = _load_with_peft(tmp_path / "base", adapter)
    assert not [m for m in caught if "missing" in m.lower()], caught
    released = AutoModel.from_pretrained(release, trust_remote_code=True)
    assert loaded.temperatures == pytest.approx(released.temperatures)
    assert any(abs(t - 0.02) > 1e-5 for t in loaded.temperatures.values())  # not the initial temperatures
    _assert_close(_vectors(loaded.merge_and_unload()), _vectors(released))


def test_cli_adapter_dir_needs_peft(tmp_path):
    argv = ["train", "--config", str(REPO / "configs" / "demo.yaml"), "--output_dir", str(tmp_path / "run")]
    with pytest.raises(ValueError, match="--adapter_dir .* needs --use_peft true"):
        main([*argv, "--adapter_dir", str(tmp_path / "adapter")])
    assert not (tmp_path / "adapter").exists()


def test_save_adapter_needs_lora(tmp_path):
    with pytest.raises(ValueError, match="no LoRA layers"):
        save_adapter(_tiny()[0], tmp_path / "adapter")


@pytest.mark.parametrize("backbone", ["qwen2.5-omni", "qwen2-vl"])
def test_merge_restores_training_flags_and_keeps_never_used_parameters_frozen(backbone):
    """After a merge the model trains in full again, as a freshly loaded one does: every parameter but those no forward
    uses (NEVER_USED_PARAMETERS in modeling_e5omni.py), which stay frozen for DDP's find_unused_parameters=False."""
    from e5omni.train.lora import merge_lora

    model, _ = build_tiny_model(backbone, seed=0)
    fresh = {n: p.requires_grad for n, p in model.named_parameters()}
    never_used = model.never_used_parameters()
    assert never_used == (["backbone.audio_tower.audio_bos_eos_token.weight"] if backbone == "qwen2.5-omni" else [])
    merged = merge_lora(apply_lora(model, lora_config(r=4, alpha=8, dropout=0.0)))
    after = {n: p.requires_grad for n, p in merged.named_parameters()}
    assert after == fresh
    assert [n for n, trainable in after.items() if not trainable] == never_used
