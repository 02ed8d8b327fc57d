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

# What `python -m e5omni.cli train --help` runs (runpy is how -m runs a module), in the same process.
CLI_HELP = """
import runpy, sys
sys.argv = ["e5omni", "train", "--help"]
try:
    runpy.run_module("e5omni.cli", run_name="__main__", alter_sys=True)
except SystemExit as exit:
    assert exit.code in (0, None), exit.code
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


def _wheel_files(names) -> None:
    """What the wheel must hold: our two top-level names only, the remapped train / model_card packages, the card
    template (package data) and the model's code files."""
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == ALLOWED_TOP_LEVEL, tops
    assert "e5omni/train/trainer.py" in names and "e5omni/train/losses/functional.py" in names
    assert "e5omni/model_card/template.md.jinja" in names
    assert "modeling_e5omni/sentence_e5omni.py" in names


def test_wheel_file_list_from_setuptools_metadata(monkeypatch):
    """The files setuptools' build_py would put in the wheel, from pyproject.toml, without building (the build itself:
    the slow test below): every module of every package folder on disk, under its installed name."""
    from setuptools.dist import Distribution

    monkeypatch.chdir(REPO)
    distribution = Distribution({"script_name": "setup.py"})
    distribution.parse_config_files()
    build_py = distribution.get_command_obj("build_py")
    build_py.ensure_finalized()
    names = {Path(p).relative_to(build_py.build_lib).as_posix() for p in build_py.get_outputs(include_bytecode=False)}
    _wheel_files(names)
    installed = {"train": "e5omni/train", "model_card": "e5omni/model_card"}
    on_disk = set()
    for top in ("modeling_e5omni", "e5omni", "train", "model_card"):
        for module in (REPO / top).rglob("*.py"):
            relative = module.relative_to(REPO).as_posix()
            on_disk.add(installed[top] + relative[len(top) :] if top in installed else relative)
    assert on_disk <= names, f"modules missing from the wheel: {sorted(on_disk - names)}"


@pytest.mark.slow
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
    _wheel_files(zipfile.ZipFile(wheel).namelist())


def test_documented_api_imports_from_a_folder_with_train_py_and_model_card_py(tmp_path):
    """One process start for the documented imports and the `-m e5omni.cli` entry (its launchers: the slow test
    below), from a folder holding a user's train.py, model_card.py, ..."""
    folder = _user_folder(tmp_path)
    code = DOCUMENTED_IMPORTS.format(repo=str(REPO)) + CLI_HELP
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=folder, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "imports ok" in result.stdout
    _lists_the_train_arguments(result.stdout)


def _lists_the_train_arguments(stdout: str) -> None:
    # TrlParser's help lists the three argument groups of `e5omni train`.
    for flag in ("--model_name_or_path", "--train_data", "--temperature_init"):
        assert flag in stdout, stdout[-2000:]


@pytest.mark.parametrize(
    "launcher",
    [
        pytest.param([sys.executable, "-m", "e5omni.cli"], id="python -m e5omni.cli", marks=pytest.mark.slow),
        pytest.param([str(Path(sys.executable).parent / "e5omni")], id="console script", marks=pytest.mark.slow),
        pytest.param(
            [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "1", "-m", "e5omni.cli"],
            id="torchrun -m e5omni.cli",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_entry_points_start_from_a_user_folder(tmp_path, launcher):
    folder = _user_folder(tmp_path)
    result = subprocess.run(
        [*launcher, "train", "--help"], cwd=folder, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    _lists_the_train_arguments(result.stdout)


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
