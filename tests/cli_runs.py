"""`e5omni train` runs in subprocesses, as users launch them (plain or under torchrun), on the demo recipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def train_args(out: Path, *extra: str, steps: int = 16, batch: int = 8, **flags: object) -> list[str]:
    """`-m e5omni.cli train` on configs/demo.yaml with small, logged-every-step settings; `flags` override them."""
    settings = {
        "synthetic_size": 64,
        "max_steps": steps,
        "per_device_train_batch_size": batch,
        "logging_steps": 1,
        "save_strategy": "no",
        "temperature_lr": 0.05,
        "curriculum_warmup_steps": 2,
        "disable_tqdm": "true",
        "output_dir": out,
        **flags,
    }
    cmd = ["-m", "e5omni.cli", "train", "--config", str(REPO / "configs" / "demo.yaml")]
    for key, value in settings.items():
        cmd += [f"--{key}", str(value)]
    return cmd + list(extra)


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def launcher(nproc: int | None = None, port: int | None = None) -> list[str]:
    """The Python interpreter, or torchrun with `nproc` processes (gloo on CPU) on `port`."""
    if nproc is None:
        return [sys.executable]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(port)]


def run(cmd: list[str], nproc: int | None = None, port: int | None = None, timeout: int = 300) -> None:
    result = subprocess.run(
        launcher(nproc, port) + cmd, env=env(), cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


def logged_losses(folder: Path) -> dict[int, float]:
    state = json.loads((folder / "trainer_state.json").read_text())
    return {h["step"]: h["loss"] for h in state["log_history"] if "loss" in h}
