"""The demo's full flow on a few steps: before/after metrics, temperatures, Hub-ready folder, both reload paths."""

from __future__ import annotations

import json

from e5omni.cli import main


def test_demo_writes_metrics_and_a_reloadable_folder(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--output-dir", str(out), "--", "--synthetic_size", "64", "--num_train_epochs", "1"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"before", "after", "temperatures", "paths_agree_max_abs_diff"}
    pairs = [k for k in metrics["after"] if "->" in k]
    assert len(pairs) == 9 and "text->image" in pairs and "overall" in metrics["before"]
    assert 0.0 <= metrics["after"]["overall"]["recall@1"] <= 1.0
    assert metrics["paths_agree_max_abs_diff"] < 1e-5
    assert set(metrics["temperatures"]) == {"text", "image", "audio", "video"}
    assert (out / "model" / "modules.json").exists() and (out / "model" / "model.safetensors").exists()
    printed = capsys.readouterr().out
    assert "R@1 before" in printed and "learned temperatures" in printed
