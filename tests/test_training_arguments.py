"""Every training argument does what its help says, or is refused: temperatures, whitening jitter, DDP's unused-
parameter search, and the trl ModelConfig fields (dtype, attention, DoRA, rsLoRA, the ones we cannot honour)."""

from __future__ import annotations

import math

import pytest
import torch
from trl import ModelConfig

from e5omni.data.synthetic import build_synthetic
from e5omni.tiny import build_tiny_model
from e5omni.train.lora import apply_lora, lora_config
from e5omni.train.run import load_model, parse_recipe
from e5omni.train.trainer import E5OmniTrainer, E5OmniTrainingArguments


def _args(tmp_path, **overrides):
    base = dict(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True, save_strategy="no")
    return E5OmniTrainingArguments(**{**base, **overrides})


def _tiny():
    model, processor = build_tiny_model("qwen2.5-omni", seed=0)
    model.set_processor(processor)
    return model


EXAMPLES = build_synthetic("train", n=8, seed=0)


def test_temperature_init_sets_the_starting_tau_and_the_config(tmp_path):
    model = _tiny()
    trainer = E5OmniTrainer(model, _args(tmp_path, temperature_init=0.05), EXAMPLES)
    assert trainer.e5omni_model.log_temperature.exp().tolist() == pytest.approx([0.05] * 4)
    assert model.config.temperature_init == 0.05


def test_unset_temperature_init_keeps_a_checkpoints_learned_values(tmp_path):
    model = _tiny()
    learned = torch.tensor([0.013, 0.0127, 0.0219, 0.0223])
    with torch.no_grad():
        model.log_temperature.copy_(learned.log())
    E5OmniTrainer(model, _args(tmp_path), EXAMPLES)
    assert model.log_temperature.exp().tolist() == pytest.approx(learned.tolist(), rel=1e-6)


def test_temperature_clamp_comes_from_the_config_and_set_values_are_written_to_it(tmp_path):
    model = _tiny()
    model.config.temperature_min, model.config.temperature_max, model.config.temperature_init = 0.015, 0.018, 0.016
    with torch.no_grad():
        model.log_temperature.fill_(math.log(0.016))
    trainer = E5OmniTrainer(model, _args(tmp_path, max_steps=2, temperature_lr=50.0, learning_rate=1e-3), EXAMPLES)
    trainer.train()
    tau = model.log_temperature.exp()
    assert ((tau >= 0.015 - 1e-7) & (tau <= 0.018 + 1e-7)).all(), tau  # the config's clamp was applied
    model2 = _tiny()
    E5OmniTrainer(model2, _args(tmp_path, temperature_min=0.01, temperature_max=0.5), EXAMPLES)
    assert (model2.config.temperature_min, model2.config.temperature_max) == (0.01, 0.5)


def test_temperature_init_outside_the_models_clamp_is_refused(tmp_path):
    with pytest.raises(ValueError, match="temperature_min <= temperature_init <= temperature_max"):
        E5OmniTrainer(_tiny(), _args(tmp_path, temperature_init=5.0), EXAMPLES)


def test_batch_whitening_eps_reaches_the_loss_and_the_ambiguous_name_is_gone(tmp_path):
    trainer = E5OmniTrainer(_tiny(), _args(tmp_path, batch_whitening_eps=3e-3), EXAMPLES)
    assert trainer.loss.whitening_eps == 3e-3
    with pytest.raises(ValueError, match="not used"):  # the parser refuses an unknown flag
        parse_recipe(["--output_dir", str(tmp_path), "--whitening_eps", "1e-3"])


def test_find_unused_parameters_true_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="once per column"):
        E5OmniTrainingArguments(output_dir="x", report_to="none", use_cpu=True, ddp_find_unused_parameters=True)


def test_model_config_dtype_and_attention_apply():
    model = load_model(ModelConfig(model_name_or_path="tiny", dtype="bfloat16", attn_implementation="eager"))
    assert model.backbone.get_input_embeddings().weight.dtype == torch.bfloat16
    assert model.alignment.log_temperature.dtype == torch.float32
    assert model.config._attn_implementation == "eager"
    with pytest.raises(ValueError, match="not a torch dtype"):
        load_model(ModelConfig(model_name_or_path="tiny", dtype="float33"))


@pytest.mark.parametrize("field,value", [("lora_modules_to_save", ["visual"]), ("lora_task_type", "SEQ_CLS")])
def test_model_config_fields_we_cannot_honour_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        load_model(ModelConfig(model_name_or_path="tiny", **{field: value}))


def test_dora_and_rslora_reach_peft():
    dora = apply_lora(_tiny(), lora_config(r=4, alpha=8, dropout=0.0, use_dora=True))
    assert any("lora_magnitude_vector" in n for n, _ in dora.named_parameters())
    rs = apply_lora(_tiny(), lora_config(r=4, alpha=8, dropout=0.0, use_rslora=True))
    layer = next(m for _, m in rs.named_modules() if hasattr(m, "scaling") and isinstance(m.scaling, dict))
    assert layer.scaling["default"] == pytest.approx(8 / math.sqrt(4))
