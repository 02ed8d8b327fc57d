"""`e5omni demo` finds its recipe outside the repository: the recipe is part of the package, not a file in the cwd."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from e5omni.demo import DEMO_RECIPE, resolve_demo_config

REPO = Path(__file__).resolve().parents[1]


def test_packaged_recipe_is_configs_demo_yaml():
    """configs/demo.yaml (what the README's train command uses) and the packaged recipe are one text."""
    assert (REPO / "configs" / "demo.yaml").read_text(encoding="utf-8") == DEMO_RECIPE


def test_demo_recipe_resolves_from_another_working_directory(tmp_path, monkeypatch):
    """From a folder with no configs/ (a wheel install, a user's project), the demo trains with the packaged
    recipe, written next to its outputs; the recipe parses into the trainer's arguments."""
    from e5omni.train.run import parse_recipe

    elsewhere = tmp_path / "project"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = resolve_demo_config(None, "demo-output")
    assert path == Path("demo-output") / "recipe.yaml" and path.resolve().is_relative_to(elsewhere)
    assert yaml.safe_load(path.read_text()) == yaml.safe_load(DEMO_RECIPE)
    model_args, data_args, args = parse_recipe(["--config", str(path), "--output_dir", str(tmp_path / "ckpt")])
    assert model_args.model_name_or_path == "tiny:qwen2.5-omni" and args.num_train_epochs == 12
    assert data_args.train_data == "synthetic:train"


def test_an_explicit_recipe_must_exist(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"demo recipe not found: .*missing\.yaml"):
        resolve_demo_config("missing.yaml", "out")
    (tmp_path / "mine.yaml").write_text(DEMO_RECIPE)
    assert resolve_demo_config("mine.yaml", "out") == Path("mine.yaml")
