"""LoRA on the Qwen3 backbones' language model only (never the towers, MoE experts and router frozen) and one
E5OmniTrainer step on each tiny Qwen3 kind: a finite loss, gradients on the LoRA parameters (and the temperatures)
only."""

from __future__ import annotations

import math

import pytest
import torch

from e5omni.data.synthetic import build_synthetic
from e5omni.tiny import QWEN3_BACKBONES, build_tiny_model
from e5omni.train.lora import apply_lora, lora_config, lora_targets
from e5omni.train.trainer import E5OmniTrainer
from tests.helpers import training_args

#: The synthetic pairs each kind can take (Qwen3-VL has no audio).
PAIRS = {
    "qwen3-vl": ["text->image", "text->video", "image->text"],
    "qwen3-omni": ["text->image", "text->audio", "text->video", "audio->text"],
}


def _tiny(kind):
    model, processor = build_tiny_model(kind, seed=0)
    model.set_processor(processor)
    return model


@pytest.mark.parametrize("kind", QWEN3_BACKBONES)
def test_lora_stays_on_the_language_model(kind):
    model = apply_lora(_tiny(kind), lora_config(r=4, alpha=8, dropout=0.0))
    targets = lora_targets(model)
    assert targets and all(".language_model.layers." in f".{t}" for t in targets), targets
    assert not [t for t in targets if "visual" in t or "audio_tower" in t]
    assert not [t for t in targets if ".experts" in t or t.endswith("mlp.gate")]
    expected_per_layer = 4 if kind == "qwen3-omni" else 7  # attention only under MoE; + gate/up/down when dense
    assert len(targets) == expected_per_layer * model.backbone.config.get_text_config().num_hidden_layers
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all("lora_" in n or n.endswith("log_temperature") for n in trainable)


@pytest.mark.parametrize("kind", QWEN3_BACKBONES)
def test_one_training_step_on_each_qwen3_kind(kind, tmp_path):
    model = apply_lora(_tiny(kind), lora_config(r=4, alpha=8, dropout=0.0))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    args = training_args(tmp_path, per_device_train_batch_size=len(PAIRS[kind]) * 2, max_steps=1, learning_rate=1e-2)
    examples = build_synthetic("train", n=len(PAIRS[kind]) * 2, seed=0, pairs=PAIRS[kind])
    trainer = E5OmniTrainer(model, args, examples)
    trainer.train()
    loss = next(h["loss"] for h in trainer.state.log_history if "loss" in h)
    print(kind, "loss", loss)
    assert math.isfinite(loss)
    trained = trainer.e5omni_model
    params = dict(trained.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in frozen.items())  # towers, experts, router untouched
    moved = [n for n, v in lora_before.items() if not torch.equal(params[n], v)]
    assert moved, "no LoRA B matrix moved"
