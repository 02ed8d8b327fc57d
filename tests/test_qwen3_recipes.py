"""configs/e5-omni-qwen3-vl.yaml and configs/e5-omni-qwen3-omni.yaml mirror configs/e5-omni-3b.yaml (the paper's
recipe) but for their base folder, run folder and (Qwen3-VL) the audio-free mixture; each trains through the real
CLI when its model and data are swapped for the tiny kind and the synthetic set."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from e5omni.cli import main

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

#: recipe -> (the keys that differ from e5-omni-3b.yaml and their values, the tiny kind, the synthetic pairs)
RECIPES = {
    "e5-omni-qwen3-vl.yaml": (
        {
            "model_name_or_path": "./base-qwen3-vl",
            "output_dir": "runs/e5-omni-qwen3-vl",
            "train_data": "mix:configs/mixtures/e5-omni-vision.yaml",
        },
        "qwen3-vl",
        "text->image,text->video,image->text",
    ),
    "e5-omni-qwen3-omni.yaml": (
        {"model_name_or_path": "./base-qwen3-omni", "output_dir": "runs/e5-omni-qwen3-omni"},
        "qwen3-omni",
        "text->image,text->audio,text->video,audio->text",
    ),
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_mirrors_the_3b_one(name):
    base = yaml.safe_load((CONFIGS / "e5-omni-3b.yaml").read_text())
    recipe = yaml.safe_load((CONFIGS / name).read_text())
    changed = {k: v for k, v in recipe.items() if base.get(k) != v}
    assert changed == RECIPES[name][0]
    assert set(recipe) == set(base)


def test_vision_mixture_is_the_paper_mixture_without_audio():
    paper = yaml.safe_load((CONFIGS / "mixtures" / "e5-omni.yaml").read_text())
    vision = yaml.safe_load((CONFIGS / "mixtures" / "e5-omni-vision.yaml").read_text())
    assert vision["sources"] == [s for s in paper["sources"] if s["name"] != "audiocaps"]
    assert len(vision["sources"]) == len(paper["sources"]) - 1
    assert {k: v for k, v in vision.items() if k != "sources"} == {k: v for k, v in paper.items() if k != "sources"}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_trains_one_step_on_the_tiny_kind(name, tmp_path):
    _, kind, pairs = RECIPES[name]
    overrides = {
        "model_name_or_path": f"tiny:{kind}",
        "train_data": "synthetic:train",
        "synthetic_pairs": pairs,
        "synthetic_size": 8,
        "max_steps": 1,
        "per_device_train_batch_size": 8,
        "gradient_accumulation_steps": 1,
        "gradcache_mini_batch_size": 4,
        "bf16": "false",
        "activation_checkpointing": "false",
        "use_cpu": "true",
        "save_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": "true",
        "output_dir": tmp_path / "run",
    }
    argv = ["train", "--config", str(CONFIGS / name)]
    assert main(argv + [arg for key, value in overrides.items() for arg in (f"--{key}", str(value))]) == 0
