"""The installed layout: only distinctive import names, nothing a user's train.py / model_card.py can shadow, every
package folder in the distribution, and the documented entry points working from a user's own folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

REPO = Path(__file__).resolve().parents[1]
ALLOWED_TOP_LEVEL = {"modeling_e5omni", "e5omni"}
SHADOWS = ("train.py", "model_card.py", "data.py", "evaluate.py", "publish.py", "cli.py")

# The documented Python API (README, docs/*.md), imported from a folder that holds the files above.
DOCUMENTED_IMPORTS = """
from modeling_e5omni import E5OmniModel, E5OmniProcessor
from e5omni.train.trainer import E5OmniTrainer, E5OmniTrainingArguments
from e5omni.train.losses import E5OmniLoss, CachedE5OmniLoss
from e5omni.train.lora import apply_lora, lora_config
from e5omni.model_card import render_model_card, context_from_folder
from e5omni.data import load_jsonl, content_hash, to_corpus
from e5omni.data.specs import load_data_spec
from e5omni.data.synthetic import build_synthetic
from e5omni.evaluation import evaluate_retrieval, encode_corpus
from e5omni.publish import push_folder, verify_push
from e5omni.convert import convert_checkpoint
from e5omni.release import save_hub_folder
from e5omni.tiny import build_tiny_model
import e5omni.train, e5omni.model_card
assert e5omni.train.__file__.startswith({repo!r}), e5omni.train.__file__
assert e5omni.model_card.__file__.startswith({repo!r}), e5omni.model_card.__file__
print("imports ok")
"""


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _user_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "user_project"
    folder.mkdir()
    for name in SHADOWS:
        (folder / name).write_text(f"raise SystemExit('the user\\'s own {name} was imported instead of ours')\n")
    return folder


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}


def test_only_distinctive_top_level_names_are_installed():
    packages = _pyproject()["tool"]["setuptools"]["packages"]
    assert {p.split(".")[0] for p in packages} == ALLOWED_TOP_LEVEL


def test_every_package_folder_is_in_the_distribution():
    setuptools = _pyproject()["tool"]["setuptools"]
    mapping = {"": "", **setuptools["package-dir"]}
    declared = set()
    for package in setuptools["packages"]:
        # Resolve through the longest mapped prefix, as setuptools does.
        prefix = max((k for k in mapping if k == "" or package == k or package.startswith(k + ".")), key=len)
        rest = package[len(prefix) :].lstrip(".")
        folder = Path(mapping[prefix], *rest.split(".")) if rest else Path(mapping[prefix])
        assert (REPO / folder / "__init__.py").is_file(), f"{package} -> {folder} has no __init__.py"
        declared.add(folder.as_posix())
    on_disk = {
        init.parent.relative_to(REPO).as_posix()
        for top in ("modeling_e5omni", "e5omni", "train", "model_card")
        for init in (REPO / top).rglob("__init__.py")
    }
    assert on_disk == declared, f"package folders missing from pyproject.toml: {sorted(on_disk - declared)}"


def test_wheel_holds_only_our_namespaces_and_the_card_template(tmp_path):
    # Built from a clean copy: setuptools reuses build/lib, where files of an older layout would linger, and a build in
    # the checkout would leave build/ behind.
    source = tmp_path / "source"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "demo-output", "__pycache__", "runs"),
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(source),
        ],
        check=True,
        capture_output=True,
        env=_env(),
        cwd=tmp_path,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("e5_omni-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == ALLOWED_TOP_LEVEL, tops
    assert "e5omni/train/trainer.py" in names and "e5omni/train/losses/functional.py" in names
    assert "e5omni/model_card/template.md.jinja" in names
    assert "modeling_e5omni/sentence_e5omni.py" in names


def test_documented_api_imports_from_a_folder_with_train_py_and_model_card_py(tmp_path):
    folder = _user_folder(tmp_path)
    code = DOCUMENTED_IMPORTS.format(repo=str(REPO))
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=folder, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "imports ok" in result.stdout


@pytest.mark.parametrize(
    "launcher",
    [
        pytest.param([sys.executable, "-m", "e5omni.cli"], id="python -m e5omni.cli", marks=pytest.mark.slow),
        pytest.param([str(Path(sys.executable).parent / "e5omni")], id="console script", marks=pytest.mark.slow),
        pytest.param(
            [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "1", "-m", "e5omni.cli"],
            id="torchrun -m e5omni.cli",
        ),
    ],
)
def test_entry_points_start_from_a_user_folder(tmp_path, launcher):
    folder = _user_folder(tmp_path)
    result = subprocess.run(
        [*launcher, "train", "--help"], cwd=folder, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    # TrlParser's help lists the three argument groups of `e5omni train`.
    for flag in ("--model_name_or_path", "--train_data", "--temperature_init"):
        assert flag in result.stdout, result.stdout[-2000:]


@pytest.mark.slow
def test_init_tiny_runs_from_a_user_folder(tmp_path):
    folder = _user_folder(tmp_path)
    out = tmp_path / "tiny"
    result = subprocess.run(
        [sys.executable, "-m", "e5omni.cli", "init-tiny", str(out)],
        cwd=folder,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "model.safetensors").is_file() and (out / "modules.json").is_file()
