"""Publishing: one atomic commit, refusals, dry run + manifest, token hygiene, retries, verified reload. No network:
a recording fake `HfApi` (below) stands in for the Hub at the HfApi level."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub.errors import HfHubHTTPError

from e5omni.cli.publish import add_push_parser
from e5omni.publish import (
    ConcurrentUpdateError,
    DisallowedFileError,
    HubError,
    IncompleteFolderError,
    InvalidFileError,
    MissingCodeFileError,
    PickleFileError,
    RemoteCodeReferenceError,
    SecretInFolderError,
    VisibilityError,
    check_manifest,
    push_folder,
    verify_push,
)
from e5omni.release import save_hub_folder
from e5omni.tiny import build_tiny_model
from tests.helpers import FAKE_TOKEN, FakeHfApi, http_error

PAPER_TAUS = {"text": 0.0130, "image": 0.0127, "audio": 0.0219, "video": 0.0223}
EXPECTED_FILES = {
    "1_Pooling/config.json",
    "2_Normalize/config.json",
    "README.md",
    "calibration.json",
    "chat_template.jinja",
    "config.json",
    "config_sentence_transformers.json",
    "configuration_e5omni.py",
    "manifest.json",
    "model.safetensors",
    "modeling_e5omni.py",
    "modules.json",
    "processing_e5omni.py",
    "inputs_e5omni.py",
    "media_e5omni.py",
    "media_image_e5omni.py",
    "media_audio_e5omni.py",
    "media_video_e5omni.py",
    "media_remote_e5omni.py",
    "processor_config.json",
    "sentence_e5omni.py",
    "tokenizer.json",
    "tokenizer_config.json",
}


# -------------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model with learned-looking temperatures and estimated whitening statistics, and its saved folder."""
    model, processor = build_tiny_model("qwen2.5-omni", seed=3)
    model.set_processor(processor)
    d = model.config.hidden_size
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.log_temperature.copy_(
            torch.log(torch.tensor([PAPER_TAUS[m] for m in ("text", "image", "audio", "video")]))
        )
        model.alignment.train()
        for _ in range(3):
            batch = torch.nn.functional.normalize(torch.randn(16, d, generator=generator) + 0.5, dim=-1)
            model.alignment.update_running_stats(batch, momentum=0.1)
        model.refresh_whitening()
    model.eval()
    folder = save_hub_folder(model, processor, tmp_path_factory.mktemp("trained") / "model")
    return model, folder


@pytest.fixture
def folder(trained, tmp_path):
    """A private copy of the saved folder that a test may damage."""
    return Path(shutil.copytree(trained[1], tmp_path / "model"))


def _scan_for_token(blob: bytes | str, where: str) -> None:
    needle = FAKE_TOKEN if isinstance(blob, str) else FAKE_TOKEN.encode()
    assert needle not in blob, f"the token leaked into {where}"


# ------------------------------------------------------------------------------------------------------ the commit
def test_push_is_one_commit_with_the_expected_files(trained, capsys):
    model, folder = trained
    api = FakeHfApi()
    result = push_folder(folder, "me/e5-omni-tiny", api=api, model_card_context={"base_model": "Qwen/Qwen2.5-Omni-3B"})
    assert [name for name, _ in api.calls] == ["create_repo", "repo_info", "list_repo_files", "create_commit"]
    commits = [kw for name, kw in api.calls if name == "create_commit"]
    assert len(commits) == 1
    initial = api.history("me/e5-omni-tiny")[-1]
    assert commits[0]["parent_commit"] == initial == result.parent_commit
    assert api.history("me/e5-omni-tiny") == [result.commit_oid, initial]  # exactly one new commit
    files = api.commit_files("me/e5-omni-tiny")
    assert set(files) == EXPECTED_FILES | {".gitattributes"}
    assert not [p for p in files if p.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"))]
    for path, data in files.items():  # no code reference to another repo anywhere
        if path.endswith((".json", ".py")):
            assert not re.search(r"[\w.-]+/[\w.-]+--\w", data.decode()), path

    manifest = json.loads(files["manifest.json"])
    assert {e["path"] for e in manifest["files"]} == EXPECTED_FILES - {"manifest.json"}
    for entry in manifest["files"]:
        assert hashlib.sha256(files[entry["path"]]).hexdigest() == entry["sha256"], entry["path"]
        assert len(files[entry["path"]]) == entry["size"]
    assert files["model.safetensors"] == (folder / "model.safetensors").read_bytes()

    calibration = json.loads(files["calibration.json"])
    assert calibration["temperatures"] == pytest.approx(PAPER_TAUS, rel=1e-5)
    assert calibration["whitening"]["updates"] == 3 and calibration["whitening"]["estimated"] is True
    assert calibration["whitening"]["enabled"] is False
    readme = files["README.md"].decode()
    assert "0.0219" in readme and "me/e5-omni-tiny" in readme and "base_model: Qwen/Qwen2.5-Omni-3B" in readme
    assert "temperatures: text=0.013" in commits[0]["commit_description"]
    out = capsys.readouterr().out
    assert result.commit_oid in out and "revision=" in out


def test_dry_run_writes_the_exact_commit_and_calls_nothing(trained, tmp_path, capsys):
    _, folder = trained
    api = FakeHfApi()
    dry = push_folder(folder, "me/e5-omni-tiny", api=api, dry_run_dir=tmp_path / "staged")
    assert api.calls == [] and dry.dry_run and dry.commit_oid is None
    staged = tmp_path / "staged"
    names = {p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file()}
    assert names == EXPECTED_FILES
    assert check_manifest(staged) == []
    manifest = json.loads((staged / "manifest.json").read_text())
    for entry in manifest["files"]:
        assert hashlib.sha256((staged / entry["path"]).read_bytes()).hexdigest() == entry["sha256"]
    out = capsys.readouterr().out
    assert "nothing was sent" in out and all(name in out for name in EXPECTED_FILES)

    # the real push sends byte for byte what the dry run staged
    push_folder(folder, "me/e5-omni-tiny", api=api, verbose=False)
    committed = api.commit_files("me/e5-omni-tiny")
    assert {n: (staged / n).read_bytes() for n in names} == {n: committed[n] for n in names}
    # a damaged staged folder is caught by its manifest
    (staged / "config.json").write_text("{}")
    assert any(p.startswith("changed: config.json") for p in check_manifest(staged))
    with pytest.raises(FileExistsError):
        push_folder(folder, "me/e5-omni-tiny", api=api, dry_run_dir=staged)
    with pytest.raises(ValueError, match="outside the folder"):
        push_folder(folder, "me/e5-omni-tiny", api=api, dry_run_dir=folder / "staged")
    assert not (folder / "staged").exists()


# -------------------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("name", ["training_args.bin", "optimizer.pt", "rng_state.pth", "stats.pkl", "last.ckpt"])
def test_pickles_are_refused_before_any_call(folder, name):
    (folder / name).write_bytes(b"\x80\x04K\x01.")
    api = FakeHfApi()
    with pytest.raises(PickleFileError, match=re.escape(name)) as info:
        push_folder(folder, "me/x", api=api)
    assert info.value.path == name and api.calls == []


def test_disguised_pickle_and_unknown_kinds_are_refused(folder):
    (folder / "tokenizer.model").write_bytes(b"\x80\x04K\x01.")  # allowed name, pickle content
    with pytest.raises(PickleFileError, match="tokenizer.model"):
        push_folder(folder, "me/x", api=FakeHfApi())
    (folder / "tokenizer.model").unlink()
    (folder / "model.onnx").write_bytes(b"onnx")
    (folder / "logs").mkdir()
    (folder / "logs" / "events.out.tfevents").write_bytes(b"x")
    with pytest.raises(DisallowedFileError) as info:
        push_folder(folder, "me/x", api=FakeHfApi())
    assert {p for p, _ in info.value.problems} == {"model.onnx", "logs/events.out.tfevents"}
    assert "safetensors, JSON, Python, Markdown" in str(info.value)


def test_invalid_content_is_refused(folder):
    (folder / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(InvalidFileError, match="tokenizer_config.json"):
        push_folder(folder, "me/x", api=FakeHfApi())


@pytest.mark.parametrize("where", ["config.json", "modules.json", "modeling_e5omni.py"])
def test_code_in_another_repo_is_refused(folder, where):
    path = folder / where
    if where == "config.json":
        config = json.loads(path.read_text())
        config["auto_map"]["AutoModel"] = "someone/other-repo--modeling_other.OtherModel"
        path.write_text(json.dumps(config))
    elif where == "modules.json":
        modules = json.loads(path.read_text())
        modules[0]["type"] = "someone/other-repo--sentence_other.Module"
        path.write_text(json.dumps(modules))
    else:
        path.write_text(path.read_text() + '\nOTHER = "someone/other-repo--helpers.Thing"\n')
    api = FakeHfApi()
    with pytest.raises(RemoteCodeReferenceError, match=re.escape(where)) as info:
        push_folder(folder, "me/x", api=api)
    assert info.value.path == where and api.calls == []


def test_missing_code_module_is_refused(folder):
    (folder / "sentence_e5omni.py").unlink()
    with pytest.raises(MissingCodeFileError, match="modules.json.*sentence_e5omni"):
        push_folder(folder, "me/x", api=FakeHfApi())


@pytest.mark.parametrize("name", ["modules.json", "model.safetensors"])
def test_incomplete_folder_is_refused(folder, name):
    (folder / name).unlink()
    with pytest.raises(IncompleteFolderError, match="save_hub_folder") as info:
        push_folder(folder, "me/x", api=FakeHfApi())
    assert info.value.path == name


def test_private_push_into_a_public_repo_is_refused(trained):
    api = FakeHfApi()
    api.create_repo("me/public", private=False)
    with pytest.raises(VisibilityError, match="public"):
        push_folder(trained[1], "me/public", api=api, private=True)
    assert len(api.history("me/public")) == 1


# ------------------------------------------------------------------------------------------------------ the token
def test_token_never_appears_anywhere(trained, tmp_path, monkeypatch, caplog, capsys):
    """Env token, a failed commit whose server message echoes it, a retry: the token reaches only the HfApi calls."""
    _, folder = trained
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    caplog.set_level(logging.DEBUG)
    api = FakeHfApi()
    api.fail_next_commit = lambda token: http_error(
        HfHubHTTPError, 500, f"500 Server Error: upload interrupted (Authorization: Bearer {token}; token={token})"
    )
    with pytest.raises(HubError) as failed:
        push_folder(folder, "me/secret", api=api)
    err = failed.value
    assert err.operation == "create_commit" and err.status_code == 500 and "upload interrupted" in str(err)
    chain = [err, err.__cause__, err.__context__]
    for exc in chain:
        _scan_for_token(f"{exc!s} {exc!r} {getattr(exc, 'args', '')}", "the exception")
    result = push_folder(folder, "me/secret", api=api)  # the retry
    dry = push_folder(folder, "me/secret", api=api, dry_run_dir=tmp_path / "dry")
    explicit = push_folder(folder, "me/secret", api=api, token=FAKE_TOKEN, dry_run_dir=tmp_path / "dry2")

    assert set(api.tokens) == {FAKE_TOKEN}  # authentication did happen, through the api only
    for path in [*(tmp_path / "dry").rglob("*"), *(tmp_path / "dry2").rglob("*")]:
        if path.is_file():
            _scan_for_token(path.read_bytes(), str(path))
    for path, data in api.commit_files("me/secret").items():
        _scan_for_token(data, f"committed {path}")
    for r in (result, dry, explicit):
        _scan_for_token(f"{r!s} {r!r}", "the result")
    for record in caplog.records:
        _scan_for_token(f"{record.getMessage()} {record.args!r}", f"log record {record.name}")
    _scan_for_token(caplog.text, "the logs")
    captured = capsys.readouterr()
    _scan_for_token(captured.out + captured.err, "stdout/stderr")
    for name, kwargs in api.calls:
        _scan_for_token(repr(kwargs), f"the arguments of {name}")


def test_a_file_holding_the_token_is_refused(folder):
    (folder / "notes.txt").write_text(f"login with {FAKE_TOKEN}\n")
    with pytest.raises(SecretInFolderError, match="notes.txt") as info:
        push_folder(folder, "me/x", api=FakeHfApi(), token=FAKE_TOKEN)
    _scan_for_token(str(info.value), "the exception")
    (folder / "notes.txt").unlink()
    with pytest.raises(SecretInFolderError, match="README.md"):  # through the card context, without a known token
        push_folder(folder, "me/x", api=FakeHfApi(), model_card_context={"description": f"token: {FAKE_TOKEN}"})


# ---------------------------------------------------------------------------------------------- atomicity, updates
def test_failed_push_leaves_no_partial_commit_and_retry_succeeds(trained):
    _, folder = trained
    api = FakeHfApi()
    api.fail_next_commit = lambda token: http_error(HfHubHTTPError, 502, "502 Bad Gateway")
    with pytest.raises(HubError, match="502"):
        push_folder(folder, "me/atomic", api=api, verbose=False)
    assert api.uploaded_blobs  # some files had reached storage ...
    initial = api.history("me/atomic")
    assert len(initial) == 1 and set(api.commit_files("me/atomic")) == {".gitattributes"}  # ... but no commit
    result = push_folder(folder, "me/atomic", api=api, verbose=False)
    assert api.history("me/atomic") == [result.commit_oid, *initial]
    assert set(api.commit_files("me/atomic")) == EXPECTED_FILES | {".gitattributes"}


def test_concurrent_update_fails_instead_of_overwriting(trained):
    _, folder = trained
    api = FakeHfApi()
    api.create_repo("me/busy")

    def other_writer(fake):
        head = fake.history("me/busy")[0]
        fake.add_commit("me/busy", {"README.md": b"theirs"}, head, "someone else's push", "main")

    api.before_commit = other_writer
    with pytest.raises(ConcurrentUpdateError, match="re-run"):
        push_folder(folder, "me/busy", api=api, verbose=False)
    assert api.commit_files("me/busy") == {"README.md": b"theirs"}  # their commit survived untouched
    push_folder(folder, "me/busy", api=api, verbose=False)  # the retry builds on their head
    assert len(api.history("me/busy")) == 3


def test_stale_files_are_deleted_in_the_same_commit(trained):
    _, folder = trained
    api = FakeHfApi()
    api.create_repo("me/old")
    head = api.history("me/old")[0]
    old = {".gitattributes": b"", "pytorch_model.bin": b"\x80", "model.safetensors.index.json": b"{}", "x.md": b""}
    api.add_commit("me/old", old, head, "an old upload", "main")
    result = push_folder(folder, "me/old", api=api, verbose=False)
    assert result.deleted == ("model.safetensors.index.json", "pytorch_model.bin", "x.md")
    assert set(api.commit_files("me/old")) == EXPECTED_FILES | {".gitattributes"}
    kept = push_folder(folder, "me/old", api=api, verbose=False, delete_stale=False)
    assert kept.deleted == ()


def test_new_branch_and_pull_request(trained):
    _, folder = trained
    api = FakeHfApi()
    branch = push_folder(folder, "me/branches", api=api, revision="dev", verbose=False)
    assert ("create_branch", {"repo_id": "me/branches", "branch": "dev"}) in api.calls
    assert set(api.commit_files("me/branches", "main")) == {".gitattributes"}  # main untouched
    assert api.history("me/branches", "dev")[0] == branch.commit_oid
    pr = push_folder(folder, "me/branches", api=api, create_pr=True, verbose=False)
    assert pr.pr_url.endswith("/discussions/1") and set(api.commit_files("me/branches", "main")) == {".gitattributes"}
    with pytest.raises(HubError, match="does not exist"):
        push_folder(folder, "me/branches", api=api, revision="nope", create_pr=True, verbose=False)


# ------------------------------------------------------------------------------------------------- verified reload
def test_reloaded_commit_embeds_identically_through_both_paths(trained, tmp_path):
    model, folder = trained
    api = FakeHfApi()
    result = push_folder(folder, "me/verified", api=api, verbose=False)
    verified = verify_push(model, result.repo_id, result.commit_oid, api=api, download_dir=tmp_path, verbose=False)
    assert ("snapshot_download", {"repo_id": "me/verified", "revision": result.commit_oid}) in api.calls
    assert verified.ok and verified.manifest_problems == ()
    assert set(verified.max_abs_diff) == {"transformers", "sentence-transformers"}
    probes = {"text", "image", "audio", "video", "mixed", "query:text", "query:mixed"}
    for path, diffs in verified.max_abs_diff.items():
        assert set(diffs) == probes
        assert max(diffs.values()) < 1e-5, (path, diffs)
    assert max(verified.max_abs_diff["transformers"].values()) == 0.0  # same code, same weights, bit for bit
    assert all(m.startswith("transformers_modules.") for m in verified.loaded_from.values())
    print(verified)


def test_verification_catches_a_changed_commit(trained, tmp_path):
    """The verifier is not vacuous: different weights in the commit -> MISMATCH and a manifest problem."""
    from safetensors.torch import load, save

    model, folder = trained
    api = FakeHfApi()
    result = push_folder(folder, "me/tampered", api=api, verbose=False)
    files = api.commit_files("me/tampered")
    tensors = load(files["model.safetensors"])
    key = next(k for k in tensors if k.endswith("embed_tokens.weight"))
    tensors[key] = tensors[key] + 0.1 * torch.randn(tensors[key].shape, generator=torch.Generator().manual_seed(1))
    files["model.safetensors"] = save(tensors, metadata={"format": "pt"})
    verified = verify_push(model, result.repo_id, result.commit_oid, api=api, download_dir=tmp_path, verbose=False)
    assert not verified.ok
    assert verified.max_diff > 1e-3
    assert verified.manifest_problems and verified.manifest_problems[0].startswith("changed: model.safetensors")


# ---------------------------------------------------------------------------------------------------------- the CLI
def test_cli_push_dry_run_and_refusal(folder, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="e5omni")
    add_push_parser(parser.add_subparsers(dest="command", required=True))
    context = tmp_path / "card.json"
    context.write_text(json.dumps({"metrics": {"text->image": {"recall@1": 0.5}}, "training": {"epochs": 1}}))
    args = parser.parse_args(
        ["push", str(folder), "--repo-id", "me/cli", "--dry-run", str(tmp_path / "out"), "--card-context", str(context)]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "create_commit(repo_id='me/cli'" in out and "model.safetensors" in out
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "recall@1" in readme and "model-index" in readme

    (folder / "training_args.bin").write_bytes(b"\x80")
    args = parser.parse_args(["push", str(folder), "--repo-id", "me/cli", "--dry-run", str(tmp_path / "out2")])
    assert args.func(args) == 2
    assert "training_args.bin" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()


def test_reviewed_dry_run_folder_pushes_as_is(trained, tmp_path):
    """A dry-run folder keeps its README when pushed again without card context; generated files are rebuilt."""
    _, folder = trained
    staged = tmp_path / "staged"
    push_folder(folder, "me/reviewed", dry_run_dir=staged, verbose=False, model_card_context={"description": "v1"})
    readme = (staged / "README.md").read_text().replace("v1", "reviewed by a human")
    (staged / "README.md").write_text(readme)
    api = FakeHfApi()
    push_folder(staged, "me/reviewed", api=api, verbose=False)
    files = api.commit_files("me/reviewed")
    assert files["README.md"].decode() == readme
    manifest = json.loads(files["manifest.json"])
    readme_entry = next(e for e in manifest["files"] if e["path"] == "README.md")
    assert readme_entry["sha256"] == hashlib.sha256(readme.encode()).hexdigest()
    assert io.BytesIO(files["calibration.json"]).read() == (staged / "calibration.json").read_bytes()
