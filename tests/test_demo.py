"""The demo's full flow on a few steps: before/after metrics, temperatures, Hub-ready folder, both reload paths."""

from __future__ import annotations

import json

import pytest

from e5omni.cli import main


@pytest.mark.slow  # 9-50 s, two evaluations of the whole held-out split; each step it chains has a fast test of its own
def test_demo_writes_metrics_and_a_reloadable_folder(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--output-dir", str(out), "--", "--synthetic_size", "64", "--num_train_epochs", "1"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"before", "after", "temperatures", "paths_agree_max_abs_diff"}
    pairs = [k for k in metrics["after"] if "->" in k]
    assert len(pairs) == 9 and "text->image" in pairs and "overall" in metrics["before"]
    # 64 examples, batch 32, one epoch: two optimizer steps really ran and changed the model.
    assert metrics["train_steps"] == 2
    assert metrics["after"] != metrics["before"]
    assert metrics["paths_agree_max_abs_diff"] < 1e-5
    assert set(metrics["temperatures"]) == {"text", "image", "audio", "video"}
    # two warm-up steps at temperature_lr 0.05 move every tau off tau_0 = 0.02 (measured: by 5.5e-5 to 2.0e-4; fp32
    # resolution there is 2e-9), so the temperatures are really learned
    assert all(abs(tau - 0.02) > 1e-5 for tau in metrics["temperatures"].values()), metrics["temperatures"]
    assert (out / "model" / "modules.json").exists() and (out / "model" / "model.safetensors").exists()
    printed = capsys.readouterr().out
    assert "R@1 before" in printed and "learned temperatures" in printed
