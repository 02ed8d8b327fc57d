"""Matryoshka training (issue #23): the e5-omni loss at several leading dimensions, shared temperatures, whitening +
CORAL once at the full dimension; the recipe arguments; the trained dimensions recorded in the saved config."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from e5omni.train.losses import CachedE5OmniLoss, E5OmniLoss
from tests.helpers import (
    LOSS_CONFIGS,
    FakeOmniModel,
    TemperatureHolder,
    fake_slicer,
    make_batch,
    module_and_reference_kwargs,
    random_batch,
)

HASHES = [
    torch.tensor([1, 2, 3, 1, 5, 6]),
    torch.tensor([11, 12, 13, 14, 11, 16]),
    torch.tensor([21, 12, 23, 24, 25, 26]),
    torch.tensor([31, 32, 3, 34, 35, 36]),
]


def _run(options, embeddings, masks, log_tau, dtype=torch.float64, step=(15, 20)):
    """Loss components, gradients of every embedding column and of log tau, diagnostics."""
    model = TemperatureHolder().to(dtype)
    with torch.no_grad():
        model.log_temperature.copy_(log_tau)
    loss = E5OmniLoss(model, **options)
    loss.set_step(*step)
    leaves = [e.to(dtype).clone().requires_grad_() for e in embeddings]
    out = loss.compute_loss_from_embeddings(leaves, masks, HASHES)
    sum(out.values()).backward()
    tau_grad = model.log_temperature.grad
    return out, [leaf.grad for leaf in leaves], tau_grad, loss.last_diagnostics


# ------------------------------------------------------------------------------------------- today's loss kept
@pytest.mark.parametrize("name", list(LOSS_CONFIGS))
def test_full_dimension_listed_alone_equals_the_loss_without_matryoshka(name):
    """Same seed, fp32: listing only the full dimension (weight 1) is today's loss, values and gradients (<= 1e-6;
    measured: bit-identical)."""
    options, _ = module_and_reference_kwargs(LOSS_CONFIGS[name])
    embeddings, masks, log_tau = random_batch(dim=16, seed=4)
    today = _run(options, embeddings, masks, log_tau, dtype=torch.float32)
    listed = _run(options | {"matryoshka_dims": [16]}, embeddings, masks, log_tau, dtype=torch.float32)
    for key in ("dcl", "coral"):
        assert abs(today[0][key].item() - listed[0][key].item()) <= 1e-6
        assert torch.equal(today[0][key], listed[0][key])
    for a, b in zip(today[1], listed[1]):
        assert (a - b).abs().max().item() <= 1e-6
    if today[2] is not None:
        assert (today[2] - listed[2]).abs().max().item() <= 1e-6


# ------------------------------------------------------------------------------------------- what each dim is
@pytest.mark.parametrize("name", ["full", "symmetric", "own_scope", "no_temperature", "no_dcl"])
def test_each_dimension_is_the_loss_of_the_truncated_renormalised_vectors(name):
    """dcl = sum_d w_d * dcl(first d components, re-normalised) with the full dimension at weight 1; coral is the
    full-dimension CORAL alone (whitening runs once, at D)."""
    options, _ = module_and_reference_kwargs(LOSS_CONFIGS[name])
    embeddings, masks, log_tau = random_batch(dim=16, seed=1)
    dims, weights = [8, 3], [0.5, 0.25]
    mat = _run(options | {"matryoshka_dims": dims, "matryoshka_weights": weights}, embeddings, masks, log_tau)

    expected_dcl = torch.zeros((), dtype=torch.float64)
    expected_grads = [torch.zeros_like(e) for e in embeddings]
    expected_tau = torch.zeros(4, dtype=torch.float64)
    coral_full = None
    for d, w in [(16, 1.0), *zip(dims, weights)]:
        # each term on its own: the loss at dimension d of the truncated vectors (CORAL only counted at D)
        leaves = [e.clone().requires_grad_() for e in embeddings]
        truncated = [F.normalize(F.normalize(leaf, dim=-1)[:, :d], dim=-1) for leaf in leaves]
        single = options | ({} if d == 16 else {"use_whitening_coral": False})
        model = TemperatureHolder().double()
        with torch.no_grad():
            model.log_temperature.copy_(log_tau)
        loss = E5OmniLoss(model, **single)
        loss.set_step(15, 20)
        out = loss.compute_loss_from_embeddings(truncated, masks, HASHES)
        total = w * out["dcl"] + (out["coral"] if d == 16 else 0.0)
        total.backward()
        expected_dcl = expected_dcl + w * out["dcl"].detach()
        for acc, leaf in zip(expected_grads, leaves):
            acc += leaf.grad
        if model.log_temperature.grad is not None:
            expected_tau += model.log_temperature.grad
        if d == 16:
            coral_full = out["coral"].detach()
        assert mat[3][f"dcl@{d}"] == pytest.approx(out["dcl"].item(), rel=1e-10)
    torch.testing.assert_close(mat[0]["dcl"], expected_dcl, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(mat[0]["coral"], coral_full, rtol=1e-10, atol=1e-14)
    for mine, theirs in zip(mat[1], expected_grads):
        torch.testing.assert_close(mine, theirs, rtol=1e-8, atol=1e-11)
    if mat[2] is not None:  # temperatures are shared: every dimension's gradient reaches the one log tau
        torch.testing.assert_close(mat[2], expected_tau, rtol=1e-8, atol=1e-11)


def test_logits_on_whitened_truncate_the_full_dimension_whitening():
    """With logits on whitened embeddings each dimension uses the leading components of the full-dimension
    whitened vectors (what a model with config.whitening=True returns before truncate_dim), not a whitening fitted
    on the truncated vectors."""
    options, _ = module_and_reference_kwargs({"logits_on_whitened": True})
    embeddings, masks, log_tau = random_batch(dim=16, seed=2)
    mat = _run(options | {"matryoshka_dims": [6], "matryoshka_weights": [1.0]}, embeddings, masks, log_tau)
    full = _run(options, embeddings, masks, log_tau)
    # the prefix term computed from a whitening of the truncated vectors differs from what was computed
    truncated = [F.normalize(F.normalize(e, dim=-1)[:, :6], dim=-1) for e in embeddings]
    refit = _run(options, truncated, masks, log_tau)
    prefix_term = mat[0]["dcl"].item() - full[0]["dcl"].item()
    assert mat[3]["dcl@6"] == pytest.approx(prefix_term, rel=1e-9)
    assert abs(prefix_term - refit[0]["dcl"].item()) > 1e-3
    torch.testing.assert_close(mat[0]["coral"], full[0]["coral"], rtol=1e-12, atol=0)


# ------------------------------------------------------------------------------------------- weights, gradients
class Encoder(nn.Module):
    def __init__(self, dim=16):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(10, dim).double()
        self.log_temperature = nn.Parameter(torch.tensor([0.02, 0.03, 0.025, 0.04], dtype=torch.float64).log())

    def forward(self, features):
        return {**features, "sentence_embedding": F.normalize(self.proj(features["x"]), dim=-1)}


def _dense_batch(seed=0, bsz=6):
    gen = torch.Generator().manual_seed(seed)
    columns = []
    for _ in range(3):
        modality = torch.rand(bsz, 4, generator=gen) < 0.4
        modality[~modality.any(1), 0] = True
        columns.append({"x": torch.randn(bsz, 10, generator=gen, dtype=torch.float64), "modality_mask": modality})
    columns[1]["x"] = columns[0]["x"] + 0.5 * columns[1]["x"]
    return columns


def _step(weights, dims=(8, 4, 2)):
    model = Encoder()
    loss = E5OmniLoss(model, matryoshka_dims=list(dims), matryoshka_weights=list(weights), curriculum_warmup_steps=0)
    loss.set_step(3, 10)
    out = loss(_dense_batch(), None)
    torch.stack(list(out.values())).sum().backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters()}


def test_every_dimension_sends_gradient_and_weights_scale_it_linearly():
    base_out, base = _step([0.0, 0.0, 0.0])
    for k in range(3):
        one = [0.0] * 3
        one[k] = 1.0
        two = [0.0] * 3
        two[k] = 2.5
        out1, g1 = _step(one)
        out2, g2 = _step(two)
        for name in base:
            delta1, delta2 = g1[name] - base[name], g2[name] - base[name]
            # this dimension's term reaches every parameter, the shared temperatures included ...
            assert delta1.abs().max().item() > 1e-6, f"dims[{k}] sends no gradient to {name}"
            # ... and its weight scales it exactly
            torch.testing.assert_close(delta2, 2.5 * delta1, rtol=1e-9, atol=1e-12)
        assert (out2["dcl"] - base_out["dcl"]).item() == pytest.approx(2.5 * (out1["dcl"] - base_out["dcl"]).item())
        torch.testing.assert_close(out1["coral"], base_out["coral"], rtol=0, atol=0)  # CORAL does not depend on it


def test_all_listed_weights_zero_is_the_full_dimension_loss():
    out, grads = _step([0.0, 0.0, 0.0])
    model = Encoder()
    loss = E5OmniLoss(model, curriculum_warmup_steps=0)
    loss.set_step(3, 10)
    plain = loss(_dense_batch(), None)
    torch.stack(list(plain.values())).sum().backward()
    torch.testing.assert_close(out["dcl"], plain["dcl"], rtol=0, atol=0)
    for name, param in model.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, rtol=0, atol=0)


def test_a_listed_full_dimension_keeps_its_own_weight():
    loss = E5OmniLoss(None, use_temperature=False, matryoshka_dims=[4, 16], matryoshka_weights=[0.5, 2.0])
    assert loss.matryoshka_plan(16) == [(16, 2.0), (4, 0.5)]
    assert E5OmniLoss(None, use_temperature=False, matryoshka_dims=[4]).matryoshka_plan(16) == [(16, 1.0), (4, 1.0)]
    assert E5OmniLoss(None, use_temperature=False).matryoshka_plan(16) == [(16, 1.0)]


# ------------------------------------------------------------------------------------------- GradCache
@pytest.mark.parametrize("mini_batch_size", [1, 3])
def test_gradcache_equals_the_plain_loss_with_matryoshka(mini_batch_size):
    options = {"matryoshka_dims": [8, 4], "matryoshka_weights": [0.5, 0.25], "symmetric": True}
    batch = [
        {k: v.double() if v.is_floating_point() else v for k, v in column.items()} for column in make_batch(seed=3)
    ]
    results = []
    for cached in (False, True):
        torch.manual_seed(0)
        model = FakeOmniModel().double()
        loss = (
            CachedE5OmniLoss(model, mini_batch_size=mini_batch_size, slicer=fake_slicer, **options)
            if cached
            else E5OmniLoss(model, **options)
        )
        loss.set_step(2, 10)
        out = loss(batch, None)
        torch.stack(list(out.values())).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results.append((out, grads, loss.last_diagnostics))
    (plain, plain_grads, plain_diag), (cached, cached_grads, cached_diag) = results
    for key in ("dcl", "coral"):
        torch.testing.assert_close(cached[key], plain[key], rtol=1e-10, atol=1e-12)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(cached_grads[name], grad, rtol=1e-9, atol=1e-11)
    assert {k for k in plain_diag if k.startswith("dcl@")} == {"dcl@12", "dcl@8", "dcl@4"}
    assert cached_diag["dcl@4"] == pytest.approx(plain_diag["dcl@4"], rel=1e-10)


# ------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"matryoshka_dims": []}, "non-empty sequence"),
        ({"matryoshka_dims": "64,32"}, "non-empty sequence"),
        ({"matryoshka_dims": [8, 0]}, r"matryoshka_dims\[1\] must be an int >= 1"),
        ({"matryoshka_dims": [8, True]}, r"matryoshka_dims\[1\] must be an int"),
        ({"matryoshka_dims": [8, 4.0]}, r"matryoshka_dims\[1\] must be an int"),
        ({"matryoshka_dims": [8, 4, 8]}, r"matryoshka_dims\[2\] = 8 repeats matryoshka_dims\[0\]"),
        ({"matryoshka_dims": [8, 4], "matryoshka_weights": [1.0]}, r"one weight per dimension \(2\), got 1"),
        ({"matryoshka_dims": [8, 4], "matryoshka_weights": [1.0, -0.1]}, r"matryoshka_weights\[1\] must be a finite"),
        ({"matryoshka_dims": [8], "matryoshka_weights": [float("nan")]}, r"matryoshka_weights\[0\] must be a finite"),
        ({"matryoshka_weights": [1.0]}, "matryoshka_weights needs matryoshka_dims"),
    ],
)
def test_bad_matryoshka_options_name_the_entry(kwargs, message):
    with pytest.raises(ValueError, match=message):
        E5OmniLoss(None, use_temperature=False, **kwargs)


def test_a_dimension_above_the_embeddings_is_named():
    loss = E5OmniLoss(None, use_temperature=False, matryoshka_dims=[8, 32])
    with pytest.raises(ValueError, match=r"matryoshka_dims\[1\] = 32 exceeds the embedding dimension 16"):
        loss.compute_loss_from_embeddings([torch.randn(4, 16), torch.randn(4, 16)])


def test_config_dict_round_trips_and_diagnostics_name_each_dimension():
    loss = E5OmniLoss(TemperatureHolder(), matryoshka_dims=[8, 4], matryoshka_weights=[0.5, 0.25])
    config = loss.get_config_dict()
    assert config["matryoshka_dims"] == [8, 4] and config["matryoshka_weights"] == [0.5, 0.25]
    assert E5OmniLoss(TemperatureHolder(), **config).get_config_dict() == config
    embeddings, masks, _ = random_batch(dim=16, dtype=torch.float32)
    loss.compute_loss_from_embeddings(embeddings, masks)
    diagnostics = loss.last_diagnostics
    assert [k for k in diagnostics if k.startswith("dcl@")] == ["dcl@16", "dcl@8", "dcl@4"]
    assert all(torch.isfinite(torch.tensor(diagnostics[k])) for k in ("dcl@16", "dcl@8", "dcl@4"))
    plain = E5OmniLoss(TemperatureHolder())
    plain.compute_loss_from_embeddings(embeddings, masks)
    assert not [k for k in plain.last_diagnostics if k.startswith("dcl@")]


# ------------------------------------------------------------------------------------------- config record
def test_config_records_validates_and_warns_for_untrained_dimensions(omni_model, tmp_path):
    from modeling_e5omni import E5OmniConfig

    data = omni_model.config.to_dict()
    config = E5OmniConfig.from_dict({**data, "matryoshka_dimensions": [16, 64, 32]})
    assert config.matryoshka_dimensions == [64, 32, 16]  # largest first
    assert config.untrained_truncation(32) is None and config.untrained_truncation(None) is None
    assert config.untrained_truncation(64) is None  # the full dimension is never a truncation
    message = config.untrained_truncation(24)
    assert "truncate_dim=24" in message and "[64, 32, 16]" in message
    assert E5OmniConfig.from_dict(data).untrained_truncation(24) is None  # no record: nothing to warn about
    for bad, text in (([128], r"matryoshka_dimensions\[0\] must be an int in \[1, 64\]"), ([32, 32], "repeat")):
        with pytest.raises(ValueError, match=text):
            E5OmniConfig.from_dict({**data, "matryoshka_dimensions": bad})
    config.save_pretrained(tmp_path)
    assert E5OmniConfig.from_pretrained(tmp_path).matryoshka_dimensions == [64, 32, 16]


# ------------------------------------------------------------------------------------------- the recipe
def test_training_arguments_parse_the_command_line_and_yaml_forms(tmp_path):
    from e5omni.train.run import parse_recipe
    from e5omni.train.trainer import E5OmniTrainingArguments

    base = {"output_dir": str(tmp_path), "report_to": "none", "use_cpu": True}
    args = E5OmniTrainingArguments(**base, matryoshka_dims="32, 16,8", matryoshka_weights="1,0.5,0.25")
    assert args.matryoshka_dims == [32, 16, 8] and args.matryoshka_weights == [1.0, 0.5, 0.25]
    assert args.loss_kwargs()["matryoshka_dims"] == [32, 16, 8]
    assert E5OmniTrainingArguments(**base, matryoshka_dims=[32, 16]).matryoshka_dims == [32, 16]  # a YAML list
    assert E5OmniTrainingArguments(**base).loss_kwargs()["matryoshka_dims"] is None
    for dims, weights, text in (
        ("32,x", None, r"matryoshka_dims\[1\] must be an int, got 'x'"),
        ("32,,8", None, r"matryoshka_dims\[1\] must be an int"),
        ("32,16", "1", r"one weight per dimension \(2\)"),
        ("32,0", None, r"matryoshka_dims\[1\] must be an int >= 1"),
        ([32, 16.5], None, r"matryoshka_dims\[1\] must be an int, got 16.5"),
    ):
        with pytest.raises(ValueError, match=text):
            E5OmniTrainingArguments(**base, matryoshka_dims=dims, matryoshka_weights=weights)
    _, _, parsed = parse_recipe(
        ["--output_dir", str(tmp_path), "--matryoshka_dims", "32,16", "--matryoshka_weights", "0.5,0.25"]
    )
    assert parsed.matryoshka_dims == [32, 16] and parsed.matryoshka_weights == [0.5, 0.25]
    config = tmp_path / "recipe.yaml"
    config.write_text(f"output_dir: {tmp_path}\nmatryoshka_dims: [32, 16]\n")
    _, _, parsed = parse_recipe(["--config", str(config)])
    assert parsed.matryoshka_dims == [32, 16] and parsed.matryoshka_weights is None


def _trainer_args(tmp_path, **overrides):
    from e5omni.train.trainer import E5OmniTrainingArguments

    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        max_steps=1,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    return E5OmniTrainingArguments(**(defaults | overrides))


def test_trainer_records_the_dimensions_logs_each_and_the_release_keeps_them(tmp_path):
    from e5omni.data.synthetic import build_synthetic
    from e5omni.tiny import build_tiny_model
    from e5omni.train.trainer import E5OmniTrainer
    from modeling_e5omni import E5OmniModel

    model, processor = build_tiny_model("qwen2.5-omni", seed=0)
    model.set_processor(processor)
    examples = build_synthetic("train", n=8, seed=0)
    with pytest.raises(ValueError, match=r"matryoshka_dims\[0\] = 128 exceeds the embedding dimension 64"):
        E5OmniTrainer(model, _trainer_args(tmp_path, matryoshka_dims="128,32"), examples)
    trainer = E5OmniTrainer(model, _trainer_args(tmp_path, matryoshka_dims="32,16"), examples)
    assert model.config.matryoshka_dimensions == [64, 32, 16]
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged and {"dcl@64", "dcl@32", "dcl@16"} <= set(logged[0])
    assert trainer.model_card_context()["training"]["matryoshka_dimensions"] == [64, 32, 16]
    folder = trainer.save_release(tmp_path / "release")
    reloaded = E5OmniModel.from_pretrained(folder)
    assert reloaded.config.matryoshka_dimensions == [64, 32, 16]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert reloaded.config.untrained_truncation(32) is None
    assert "truncate_dim=8" in reloaded.config.untrained_truncation(8)

    # a later run without Matryoshka records none (the saved config says what was trained), with a warning
    plain = E5OmniTrainer(reloaded, _trainer_args(tmp_path / "again"), examples)
    assert plain.e5omni_model.config.matryoshka_dimensions is None
