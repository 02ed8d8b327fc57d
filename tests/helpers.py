"""Helpers shared by several test modules (issue #21): media writers, corpora, the tiny app index, training
arguments, the loss test doubles and the recording fake HfApi. Test modules import these from here, never from each
other. Fixtures stay in tests/conftest.py. Optional dependencies (faiss, gradio, the train extra) are imported inside
the helpers that need them, so importing this module costs only the core dependencies."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import av
import httpx2
import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from huggingface_hub import CommitOperationAdd, CommitOperationDelete
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.hf_api import CommitInfo, RepoUrl
from PIL import Image
from torch import nn

from tests.cli_runs import REPO, env

# ------------------------------------------------------------------------------------------------------- media files


def write_mp4(path, frames: np.ndarray, fps: int = 4) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_clip(
    path,
    seconds: float = 1.8,
    fps: int = 10,
    size: int = 56,
    audio: str | None = "pcm_s16le",
    rate: int = 16000,
    channels: int = 1,
    video: bool = True,
) -> None:
    """A clip whose picture changes every frame and whose sound is a tone that changes pitch every half second."""
    n = int(seconds * fps)
    with av.open(str(path), "w") as container:
        vstream = container.add_stream("mpeg4", rate=fps) if video else None
        if vstream is not None:
            vstream.width = vstream.height = size
            vstream.pix_fmt = "yuv420p"
        astream = None
        if audio is not None:
            astream = container.add_stream(audio, rate=rate, layout="mono" if channels == 1 else "stereo")
        if vstream is not None:
            for i in range(n):
                frame = np.zeros((size, size, 3), np.uint8)
                frame[:] = (i * 9 % 256, 255 - i * 9 % 256, i * 41 % 256)
                frame[(i % 7) * 8 : (i % 7) * 8 + 8] = 255
                for packet in vstream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in vstream.encode():
                container.mux(packet)
        if astream is not None:
            t = np.arange(int(seconds * rate)) / rate
            pitch = 220 * (1 + np.floor(t * 2))
            tone = 0.4 * np.sin(2 * np.pi * pitch * t)
            samples = np.stack([tone, -0.5 * tone]) if channels == 2 else tone[None]
            pcm = (samples * 32767).astype(np.int16)
            fmt = "s16" if audio.startswith("pcm") else "fltp"
            step = 1024
            for start in range(0, pcm.shape[1], step):
                chunk = pcm[:, start : start + step]
                if fmt == "s16":
                    data = np.ascontiguousarray(chunk.T.reshape(1, -1))
                else:
                    data = np.ascontiguousarray(chunk.astype(np.float32) / 32768)
                frame = av.AudioFrame.from_ndarray(data, format=fmt, layout="mono" if channels == 1 else "stereo")
                frame.sample_rate = rate
                frame.pts = start
                for packet in astream.encode(frame):
                    container.mux(packet)
            for packet in astream.encode():
                container.mux(packet)


# ------------------------------------------------------------------------------------------ corpora for e5omni index


def salted_folder(root: Path) -> tuple[Path, set[str], set[str]]:
    """A small corpus of every medium plus broken and hostile files: (folder, good ids, bad ids)."""
    folder = root / "corpus"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    t = np.arange(16000) / 16000
    sf.write(folder / "sub" / "tone.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
    write_mp4(folder / "sub" / "clip.mp4", rng.integers(0, 256, (4, 48, 48, 3), dtype=np.uint8))
    (folder / "a.txt").write_text("a red square on the left")
    (folder / "sub" / "b.txt").write_text("a loud beep")
    (folder / "README.md").write_text("not a medium: not part of the corpus")
    good = {"img0.png", "img1.png", "img2.png", "sub/tone.wav", "sub/clip.mp4", "a.txt", "sub/b.txt"}
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    Image.new("1", (9400, 9400)).save(folder / "bomb.png")  # 88 Mpx declared, refused from the header
    clip = (folder / "sub" / "clip.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(clip[: len(clip) // 3])
    os.symlink("/etc/passwd", folder / "escape.txt")
    os.mkfifo(folder / "pipe.wav")
    bad = {"corrupt.png", "bomb.png", "truncated.mp4", "escape.txt", "pipe.wav"}
    return folder, good, bad


def text_corpus(root: Path, n: int) -> Path:
    folder = root / "texts"
    folder.mkdir()
    for i in range(n):
        (folder / f"{i:03d}.txt").write_text(f"document number {i}: a {['red', 'blue', 'green'][i % 3]} shape")
    (folder / "000-broken.txt").write_bytes(b"\xff\xfe not utf-8 \xff")
    return folder


def kill_9_after_shards(cmd: list[str], out: Path, shards: int, timeout: float) -> int:
    """Start `e5omni index` (cmd), SIGKILL it once its manifest lists `shards` finished shards; the shards done."""
    from e5omni.index import read_manifest

    proc = subprocess.Popen(cmd, env=env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        manifest = out / "manifest.json"
        if manifest.exists() and len(json.loads(manifest.read_text())["shards"]) >= shards:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return len(read_manifest(out)["shards"])


# ------------------------------------------------------------------------------------------- the search page's index

HOSTILE_TEXT = "${7*7} {{constructor}} <img src=x onerror=alert(1)> `backtick`"


def make_app_corpus(root: Path) -> Path:
    """The demo corpus (shapes as images, sounds, clips, captions) plus a caption of hostile markup."""
    from e5omni.app.demo import write_demo_corpus

    folder = root / "corpus"
    write_demo_corpus(folder, n=16)
    (folder / "captions" / "zz-hostile.txt").write_text(HOSTILE_TEXT)
    return folder


def make_app_index(root: Path) -> tuple[Path, Path, Path]:
    """(model folder, corpus folder, index folder): the index built with the model as loaded from its folder, so
    `e5omni search` (which loads it the same way) and the page search with the same model."""
    from e5omni.cli.common import load_inference_model
    from e5omni.index import CorpusIndex, build_corpus
    from e5omni.release import save_hub_folder
    from e5omni.tiny import build_tiny_model

    model, processor = build_tiny_model("qwen2.5-omni", seed=0)
    model_dir = save_hub_folder(model, processor, root / "model")
    folder = make_app_corpus(root)
    loaded = load_inference_model(str(model_dir))
    build_corpus(loaded, folder, root / "index", model_path=str(model_dir), show_progress_bar=False)
    CorpusIndex.build(root / "index")
    return model_dir, folder, root / "index"


# ---------------------------------------------------------------------------------------------------------- training


def training_args(tmp_path, **overrides):
    """The trainer tests' arguments: CPU, no saves or reports, logged every step; `overrides` replace any."""
    from e5omni.train.trainer import E5OmniTrainingArguments

    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        num_train_epochs=1,
        learning_rate=1e-3,
        temperature_lr=0.05,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        curriculum_warmup_steps=1,
        disable_tqdm=True,
    )
    defaults.update(overrides)
    return E5OmniTrainingArguments(**defaults)


# -------------------------------------------------------------------------------------------------------- E5OmniLoss


class TemperatureHolder(nn.Module):
    """The smallest model the loss accepts: it only holds the per-modality log-temperatures."""

    def __init__(self, taus=(0.02, 0.02, 0.02, 0.02)):
        super().__init__()
        self.log_temperature = nn.Parameter(torch.tensor(taus, dtype=torch.float32).log())


def random_batch(bsz=6, dim=16, num_negatives=2, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    cols = 2 + num_negatives
    embeddings = [torch.randn(bsz, dim, generator=gen, dtype=dtype) for _ in range(cols)]
    # Positives correlated with their queries, so the problem is not pure noise.
    embeddings[1] = embeddings[0] + 0.7 * embeddings[1]
    masks = []
    for _ in range(cols):
        m = torch.rand(bsz, 4, generator=gen) < 0.4
        m[~m.any(1), 0] = True
        masks.append(m)
    log_tau = torch.tensor([0.013, 0.02, 0.022, 0.05], dtype=torch.float32).log()
    return embeddings, masks, log_tau


LOSS_CONFIGS = {
    "full": {},
    "full_on_whitened": {"logits_on_whitened": True},
    "symmetric": {"symmetric": True},
    "own_scope": {"hard_negative_scope": "own"},
    "no_temperature": {"use_temperature": False, "temperature": 0.05},
    "no_curriculum": {"use_curriculum": False},
    "no_dcl": {"use_dcl": False},
    "no_whitening": {"use_whitening_coral": False},
}


def module_and_reference_kwargs(overrides):
    options = {
        "rho_init": 0.1,
        "rho_final": 0.5,
        "curriculum_warmup_steps": 10,
        "gamma_plus": 0.15,
        "dcl_eps": 1e-6,
        "lambda_coral": 0.05,
        "whitening_eps": 1e-3,
    } | overrides
    ref = {
        "rho": 0.3 if options.get("use_curriculum", True) else 0.0,  # step 15 of 20, warmup 10 -> 0.1 + 0.4 * 0.5
        "gamma": options["gamma_plus"],
        "eps": options["dcl_eps"],
        "lam": options["lambda_coral"],
        "w_eps": options["whitening_eps"],
        "fixed_tau": None if options.get("use_temperature", True) else options["temperature"],
        "on_whitened": options.get("logits_on_whitened", False),
        "use_dcl": options.get("use_dcl", True),
        "whitening": options.get("use_whitening_coral", True),
        "symmetric": options.get("symmetric", False),
        "scope": options.get("hard_negative_scope", "batch"),
    }
    return options, ref


# ------------------------------------------------------------------------------- CachedE5OmniLoss: a fake omni model

VOCAB, DIM, PATCH, MEL, FRAMES = 40, 12, 6, 5, 9
TEXT, IMAGE, AUDIO, VIDEO = 0, 1, 2, 3


class FakeOmniModel(nn.Module):
    """Embeds features laid out like the Qwen2.5-Omni processor's: batch-first ``input_ids``/``attention_mask``;
    images and videos as flattened patch rows (one block of prod(grid) rows per item that has one); audio rows
    (``input_features`` + ``feature_attention_mask``) only for the items that have audio."""

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.tokens = nn.Embedding(VOCAB, DIM)
        self.image = nn.Linear(PATCH, DIM)
        self.video = nn.Linear(PATCH, DIM)
        self.audio = nn.Linear(MEL, DIM)
        self.dropout = nn.Dropout(dropout)
        self.log_temperature = nn.Parameter(torch.tensor([0.02, 0.03, 0.025, 0.04]).log())
        self.outputs: list[torch.Tensor] = []

    def _media(self, features, pixels, grid, owners, linear):
        out = torch.zeros(owners.shape[0], DIM, dtype=linear.weight.dtype)
        if pixels not in features:
            assert not owners.any(), f"items own {pixels} rows that the features do not have"
            return out
        blocks = features[pixels].split(features[grid].prod(-1).tolist())
        assert len(blocks) == int(owners.sum()), f"{pixels}: {len(blocks)} blocks for {int(owners.sum())} items"
        pooled = torch.stack([block.mean(0) for block in blocks])  # (n_media, PATCH)
        return out.index_add(0, owners.nonzero().flatten(), linear(pooled))

    def forward(self, features):
        ids, attention = features["input_ids"], features["attention_mask"]
        hidden = (self.tokens(ids) * attention[..., None]).sum(1) / attention.sum(1, keepdim=True)  # (b, DIM)
        mask = features["modality_mask"]
        hidden = hidden + self._media(features, "pixel_values", "image_grid_thw", mask[:, IMAGE], self.image)
        hidden = hidden + self._media(features, "pixel_values_videos", "video_grid_thw", mask[:, VIDEO], self.video)
        if mask[:, AUDIO].any():
            feats, valid = features["input_features"], features["feature_attention_mask"]
            assert feats.shape[0] == int(mask[:, AUDIO].sum())
            pooled = (feats * valid[:, None, :]).sum(-1) / valid.sum(-1, keepdim=True)  # (n_audio, MEL)
            audio = torch.zeros_like(hidden).index_add(0, mask[:, AUDIO].nonzero().flatten(), self.audio(pooled))
            hidden = hidden + audio
        embedding = F.normalize(self.dropout(hidden), dim=-1)
        self.outputs.append(embedding.detach().clone())
        return {**features, "sentence_embedding": embedding}


def fake_slicer(features, start, end):
    """Items start:end with their media rows, for the fake model's layout (the test's own slicer)."""
    mask = features["modality_mask"]
    out = {
        k: features[k][start:end]
        for k in ("input_ids", "attention_mask", "modality_mask", "content_hash")
        if k in features
    }
    for column, pixels, grid in (
        (IMAGE, "pixel_values", "image_grid_thw"),
        (VIDEO, "pixel_values_videos", "video_grid_thw"),
    ):
        first, last = int(mask[:start, column].sum()), int(mask[:end, column].sum())
        if pixels in features and first < last:
            rows = torch.cat([torch.zeros(1, dtype=torch.long), features[grid].prod(-1).cumsum(0)])
            out[pixels] = features[pixels][int(rows[first]) : int(rows[last])]
            out[grid] = features[grid][first:last]
    first, last = int(mask[:start, AUDIO].sum()), int(mask[:end, AUDIO].sum())
    if "input_features" in features and first < last:
        out["input_features"] = features["input_features"][first:last]
        out["feature_attention_mask"] = features["feature_attention_mask"][first:last]
    return out


def make_column(modalities: list[str], seed: int, hash_base: int) -> dict[str, torch.Tensor]:
    """One input column; ``modalities[i]`` is e.g. "t", "ti", "a", "tav" for item i."""
    gen = torch.Generator().manual_seed(seed)
    bsz, length = len(modalities), 7
    ids = torch.randint(1, VOCAB, (bsz, length), generator=gen)
    lengths = torch.randint(2, length + 1, (bsz,), generator=gen)
    attention = (torch.arange(length)[None, :] >= length - lengths[:, None]).long()  # left padding
    mask = torch.tensor([[c in m for c in "tiav"] for m in modalities], dtype=torch.bool)
    features = {
        "input_ids": ids * attention,
        "attention_mask": attention,
        "modality_mask": mask,
        "content_hash": torch.arange(bsz) + hash_base,
    }
    for column, pixels, grid in (
        (IMAGE, "pixel_values", "image_grid_thw"),
        (VIDEO, "pixel_values_videos", "video_grid_thw"),
    ):
        owners = int(mask[:, column].sum())
        if owners:
            grids = torch.stack(
                [
                    torch.tensor([1 if column == IMAGE else 2, 2, int(r)])
                    for r in torch.randint(1, 4, (owners,), generator=gen)
                ]
            )
            features[grid] = grids
            features[pixels] = torch.randn(int(grids.prod(-1).sum()), PATCH, generator=gen)
    owners = int(mask[:, AUDIO].sum())
    if owners:
        features["input_features"] = torch.randn(owners, MEL, FRAMES, generator=gen)
        audio_len = torch.randint(3, FRAMES + 1, (owners,), generator=gen)
        features["feature_attention_mask"] = (torch.arange(FRAMES)[None, :] < audio_len[:, None]).long()
    return features


def make_batch(seed: int = 0, layout: str = "mixed") -> list[dict[str, torch.Tensor]]:
    """`mixed`: queries, positives and one hard-negative column, every column mixing modalities, audio included.
    `one_modality_per_column`: text queries, image positives, audio and video hard negatives."""
    if layout == "one_modality_per_column":
        columns = (["t"] * 8, ["i"] * 8, ["a"] * 8, ["v"] * 8)
        return [make_column(m, seed + c, 100 * c) for c, m in enumerate(columns)]
    queries = ["t", "t", "ti", "a", "t", "tv", "t", "ta"]
    positives = ["i", "a", "ti", "t", "v", "av", "tiav", "a"]
    negatives = ["a", "i", "t", "tv", "ia", "t", "v", "ti"]
    batch = [make_column(m, seed + c, 100 * c) for c, m in enumerate((queries, positives, negatives))]
    batch[2]["content_hash"][4] = batch[1]["content_hash"][0]  # a hard negative duplicating pair 0's positive
    return batch


# ------------------------------------------------------------------------------------------------------ the fake Hub

FAKE_TOKEN = "hf_FakeTokenForTests0123456789abcdefXYZ"


def http_error(cls, status: int, message: str):
    request = httpx2.Request("POST", "https://huggingface.co/api/models/x")
    return cls(message, response=httpx2.Response(status, request=request))


class FakeHfApi:
    """Records every call; keeps repos as branches -> commit oids -> {path: bytes}; never touches the network.

    Behaves like the Hub where the push depends on it: a new repo has an initial commit with .gitattributes,
    `create_commit` is all-or-nothing and refuses a stale `parent_commit` with HTTP 412, `create_pr` commits to
    refs/pr/N, and `snapshot_download` materialises exactly one commit. `fail_next_commit` makes the next
    create_commit "upload" half of the files (as preupload_lfs_files would) and then raise.
    """

    def __init__(self):
        self.repos: dict[str, dict] = {}
        self.calls: list[tuple[str, dict]] = []
        self.tokens: list[str | None] = []
        self.uploaded_blobs: set[str] = set()
        self.fail_next_commit = None  # a callable(token) -> exception
        self.before_commit = None  # a callable(api) run inside create_commit before the parent check

    # helpers
    def _record(self, name, token, **kwargs):
        self.calls.append((name, kwargs))
        self.tokens.append(token)

    def _repo(self, repo_id):
        if repo_id not in self.repos:
            raise http_error(RepositoryNotFoundError, 404, f"404 Repository Not Found: {repo_id}")
        return self.repos[repo_id]

    def _resolve(self, repo, revision):
        revision = revision or "main"
        oid = repo["branches"].get(revision) or (revision if revision in repo["commits"] else None)
        if oid is None:
            raise http_error(RevisionNotFoundError, 404, f"404 Revision Not Found: {revision}")
        return oid

    def commit_files(self, repo_id, revision="main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return repo["commits"][self._resolve(repo, revision)]["files"]

    def history(self, repo_id, revision="main") -> list[str]:
        repo = self.repos[repo_id]
        oid, out = self._resolve(repo, revision), []
        while oid:
            out.append(oid)
            oid = repo["commits"][oid]["parent"]
        return out

    def add_commit(self, repo_id, files, parent, message, branch=None):
        repo = self.repos[repo_id]
        oid = hashlib.sha1(f"{repo_id}{parent}{message}{len(repo['commits'])}".encode()).hexdigest()
        repo["commits"][oid] = {"files": files, "parent": parent, "message": message}
        if branch:
            repo["branches"][branch] = oid
        return oid

    # the HfApi surface used by e5omni.publish
    def create_repo(self, repo_id, *, token=None, private=None, exist_ok=False, repo_type=None, **kwargs):
        self._record("create_repo", token, repo_id=repo_id, private=private, exist_ok=exist_ok)
        if repo_id in self.repos:
            if not exist_ok:
                raise http_error(HfHubHTTPError, 409, "409 Conflict: You already created this model repo")
        else:
            self.repos[repo_id] = {"private": bool(private), "branches": {}, "commits": {}, "prs": 0}
            self.add_commit(repo_id, {".gitattributes": b"*.safetensors filter=lfs\n"}, None, "initial commit", "main")
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def repo_info(self, repo_id, *, revision=None, token=None, **kwargs):
        self._record("repo_info", token, repo_id=repo_id, revision=revision)
        repo = self._repo(repo_id)
        return SimpleNamespace(id=repo_id, sha=self._resolve(repo, revision), private=repo["private"])

    def list_repo_files(self, repo_id, *, revision=None, token=None, **kwargs):
        self._record("list_repo_files", token, repo_id=repo_id, revision=revision)
        repo = self._repo(repo_id)
        return sorted(repo["commits"][self._resolve(repo, revision)]["files"])

    def create_branch(self, repo_id, *, branch, revision=None, token=None, exist_ok=False, **kwargs):
        self._record("create_branch", token, repo_id=repo_id, branch=branch)
        repo = self._repo(repo_id)
        if branch not in repo["branches"]:
            repo["branches"][branch] = self._resolve(repo, revision)

    def create_commit(
        self,
        repo_id,
        operations,
        *,
        commit_message,
        commit_description=None,
        token=None,
        revision=None,
        create_pr=None,
        parent_commit=None,
        **kwargs,
    ):
        operations = list(operations)
        self._record(
            "create_commit",
            token,
            repo_id=repo_id,
            operations=[(type(op).__name__, op.path_in_repo) for op in operations],
            commit_message=commit_message,
            commit_description=commit_description,
            revision=revision,
            create_pr=create_pr,
            parent_commit=parent_commit,
        )
        repo = self._repo(repo_id)
        additions = [op for op in operations if isinstance(op, CommitOperationAdd)]
        for op in additions:
            assert not op._is_committed, "huggingface_hub refuses to reuse a committed operation"
        contents = {}
        for i, op in enumerate(additions):  # "preupload": blobs reach storage before the commit exists
            if self.fail_next_commit is not None and i == len(additions) // 2:
                failure, self.fail_next_commit = self.fail_next_commit, None
                raise failure(token)
            with op.as_file() as handle:
                contents[op.path_in_repo] = handle.read()
            self.uploaded_blobs.add(hashlib.sha256(contents[op.path_in_repo]).hexdigest())
        if self.before_commit is not None:
            hook, self.before_commit = self.before_commit, None
            hook(self)
        head = self._resolve(repo, revision)
        if parent_commit is not None and parent_commit != head:
            raise http_error(HfHubHTTPError, 412, "412 Precondition Failed: parent commit is not the head")
        files = dict(repo["commits"][parent_commit or head]["files"])
        for op in operations:
            if isinstance(op, CommitOperationDelete):
                files.pop(op.path_in_repo)
        files.update(contents)
        pr_url = None
        if create_pr:
            repo["prs"] += 1
            branch = f"refs/pr/{repo['prs']}"
            pr_url = f"https://huggingface.co/{repo_id}/discussions/{repo['prs']}"
        else:
            branch = revision or "main"
        oid = self.add_commit(repo_id, files, parent_commit or head, commit_message, branch)
        for op in additions:
            op._is_committed = True
        return CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/{oid}",
            commit_message=commit_message,
            commit_description=commit_description or "",
            oid=oid,
            pr_url=pr_url,
        )

    def snapshot_download(self, repo_id, *, revision=None, local_dir=None, token=None, **kwargs):
        self._record("snapshot_download", token, repo_id=repo_id, revision=revision)
        local = Path(local_dir)
        for path, data in self.commit_files(repo_id, revision).items():
            (local / path).parent.mkdir(parents=True, exist_ok=True)
            (local / path).write_bytes(data)
        (local / ".cache" / "huggingface").mkdir(parents=True, exist_ok=True)  # as the real local_dir mode does
        return str(local)


def write_released(folder, layout: str = "5.x") -> None:
    """A tiny checkpoint in the released e5-omni format: Qwen2_5OmniThinkerForConditionalGeneration + processor."""
    from safetensors.torch import load_file, save_file
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    from e5omni.tiny import build_backbone_config, build_processor, build_tokenizer

    tokenizer = build_tokenizer("qwen2.5-omni")
    config = build_backbone_config("qwen2.5-omni", tokenizer)
    torch.manual_seed(7)
    model = Qwen2_5OmniThinkerForConditionalGeneration(config).eval()
    model.save_pretrained(folder)
    build_processor("qwen2.5-omni", tokenizer).save_pretrained(folder)
    if layout == "4.x":  # transformers 4.x wrote model.layers.*, visual.*, audio_tower.* (no model.language_model)
        path = folder / "model.safetensors"
        weights = load_file(str(path))
        renamed = {}
        for key, value in weights.items():
            if key.startswith("model.language_model."):
                key = "model." + key[len("model.language_model.") :]
            elif key.startswith("model.visual.") or key.startswith("model.audio_tower."):
                key = key[len("model.") :]
            renamed[key] = value
        assert any(k.startswith("visual.") for k in renamed) and any(k.startswith("model.layers.") for k in renamed)
        save_file(renamed, str(path), metadata={"format": "pt"})
