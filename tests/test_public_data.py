"""The public training sets in the schemas they ship in: MMEB-train (`mmeb:`), Tevatron OmniEmbed (`tevatron:`, new and
legacy text forms), caption tables (`caption:`), weighted mixtures (`mix:`), and training on them through the CLI.

Replicas are built here in the exact column layouts (Parquet written with pyarrow / `datasets`, real images, MP3 and
MP4 files), with rows modelled on the real sets' conventions: MMEB's `<|image_1|>` placeholder (also on a query with
no image, as in WebQA), empty strings for absent paths and negatives, image paths under `images/<subset>/Train/`;
Tevatron's corpus with `docid` / `text` (null for image documents) / `image` / `video` / `audio` paths under the
assets path, `positive_document_ids` / `negative_document_ids`; BGE-M3's pairs in Tevatron's legacy form.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile
import yaml
from PIL import Image

from e5omni.data import BadRowError, DataError, MissingMediaError, UnsafeMediaPathError, validate_example
from e5omni.data.mixture import MixedExamples, MixtureError
from e5omni.data.public import CaptionExamples, MMEBExamples, TevatronExamples
from e5omni.data.specs import DataSpecError, load_data_spec
from tests.cli_runs import logged_losses, run, train_args

MMEB_COLUMNS = ["qry", "qry_image_path", "pos_text", "pos_image_path", "neg_text", "neg_image_path"]


def _image(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), (shade, 255 - shade, 90)).save(path)


def _tone(seconds: float = 0.3, freq: float = 440.0, rate: int = 16_000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _mp4(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for k in range(4):
            frame = np.full((32, 32, 3), (shade + 20 * k) % 256, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# ---------------------------------------------------------------------------------------------------------------------
# MMEB-train replica: <root>/<subset>/{original,diverse_instruction}-00000-of-00001.parquet, images under <root>/images
# ---------------------------------------------------------------------------------------------------------------------


def _mmeb_rows(subset: str, n: int) -> dict:
    rows = {c: [] for c in MMEB_COLUMNS}
    for i in range(n):
        if subset == "CIRR":  # image + modification text -> image
            q, qi = (
                f"<|image_1|>\nGiven an image, find a similar everyday image with the described changes: {i}.\n",
                f"images/CIRR/Train/train-{i}-img1.jpg",
            )
            p, pi, nt, ni = "<|image_1|>\nRepresent the given image.\n", f"images/CIRR/Train/train-{i}-img0.jpg", "", ""
        elif subset == "HatefulMemes":  # image -> label text, the other label as the negative
            q, qi = (
                "<|image_1|>\nRepresent the given image for binary classification\n",
                f"images/HatefulMemes/Train/HatefulMemes_image_{i}.jpg",
            )
            p, pi, nt, ni = ("Yes", "", "No", "") if i % 2 else ("No", "", "Yes", "")
        else:  # WebQA: a text query that still carries the placeholder, and no query image
            q, qi = f"<|image_1|>\nFind a Wikipedia image that answers this question: number {i}?\n", ""
            p, pi = (
                f"<|image_1|>\nRepresent the given Wikipedia image with related text information: {i}.\n",
                f"images/WebQA/Train/{3000 + i}.jpg",
            )
            nt, ni = "", ""
        for column, value in zip(MMEB_COLUMNS, (q, qi, p, pi, nt, ni)):
            rows[column].append(value)
    return rows


@pytest.fixture
def mmeb(tmp_path: Path) -> Path:
    root = tmp_path / "MMEB-train"
    for subset in ("CIRR", "HatefulMemes", "WebQA"):
        rows = _mmeb_rows(subset, 6)
        for column in ("qry_image_path", "pos_image_path"):
            for k, rel in enumerate(rows[column]):
                if rel:
                    _image(root / rel, 30 * k + len(column))
        (root / subset).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(rows), root / subset / "original-00000-of-00001.parquet")
        diverse = dict(rows, qry=[q.replace("Represent", "Encode") for q in rows["qry"]])
        pq.write_table(pa.table(diverse), root / subset / "diverse_instruction-00000-of-00001.parquet")
    return root


def test_mmeb_reads_the_real_conventions(mmeb: Path):
    examples = load_data_spec(f"mmeb:{mmeb / 'CIRR'}?split=original", media_root=mmeb)
    assert isinstance(examples, MMEBExamples) and len(examples) == 6  # the diverse_instruction file is not mixed in
    first = examples[0]
    assert first["query"]["text"] == "Given an image, find a similar everyday image with the described changes: 0."
    assert first["query"]["image"] == str((mmeb / "images/CIRR/Train/train-0-img1.jpg").resolve())
    assert first["positive"] == {
        "text": "Represent the given image.",
        "image": str((mmeb / "images/CIRR/Train/train-0-img0.jpg").resolve()),
    }
    assert "negatives" not in first  # "" / "" is no negative
    webqa = MMEBExamples(mmeb / "WebQA", mmeb, split="original")
    assert webqa[2]["query"] == "Find a Wikipedia image that answers this question: number 2?"  # text only, no token
    memes = MMEBExamples(mmeb / "HatefulMemes" / "original-00000-of-00001.parquet", mmeb)
    assert memes[1]["positive"] == "Yes" and memes[1]["negatives"] == ["No"] and memes.min_negatives() == 1
    assert webqa.min_negatives() == 0
    for view in (examples, webqa, memes):
        for i in range(len(view)):
            validate_example(view[i], i)
            assert "<|image_1|>" not in json.dumps(view[i], default=str)  # the placeholder never becomes data


def test_mmeb_bad_rows_name_file_row_and_column(mmeb: Path, tmp_path: Path):
    rows = _mmeb_rows("WebQA", 3)
    rows["qry"][1] = "<|image_1|>\n"  # empty once the placeholder goes, and no image: VLM2Vec skips it silently
    pq.write_table(pa.table(rows), tmp_path / "bad-empty.parquet")
    view = MMEBExamples(tmp_path / "bad-empty.parquet", mmeb)
    view[0]
    with pytest.raises(BadRowError, match=r"bad-empty\.parquet row 1, column 'qry': the query is empty"):
        view[1]
    rows = _mmeb_rows("WebQA", 3)
    rows["pos_image_path"][2] = "images/WebQA/Train/missing.jpg"
    pq.write_table(pa.table(rows), tmp_path / "bad-missing.parquet")
    with pytest.raises(MissingMediaError, match=r"bad-missing\.parquet row 2, column 'pos_image_path'"):
        MMEBExamples(tmp_path / "bad-missing.parquet", mmeb)[2]
    rows["pos_image_path"][2] = "../../etc/passwd"
    pq.write_table(pa.table(rows), tmp_path / "bad-escape.parquet")
    with pytest.raises(UnsafeMediaPathError, match=r"bad-escape\.parquet row 2, column 'pos_image_path'.*'\.\.'"):
        MMEBExamples(tmp_path / "bad-escape.parquet", mmeb)[2]
    rows = _mmeb_rows("WebQA", 2)
    rows["neg_text"] = [None, 7]
    pq.write_table(pa.table({**rows, "neg_text": pa.array([None, 7])}), tmp_path / "bad-type.parquet")
    with pytest.raises(BadRowError, match=r"bad-type\.parquet row 1, column 'neg_text': expected a string, got int"):
        MMEBExamples(tmp_path / "bad-type.parquet", mmeb)[1]
    pq.write_table(pa.table({"query": ["x"], "positive": ["y"]}), tmp_path / "ours.parquet")
    with pytest.raises(DataError, match=r"ours\.parquet: not the MMEB-train layout: missing column\(s\) \['qry'"):
        MMEBExamples(tmp_path / "ours.parquet", mmeb)


def test_mmeb_hard_negative_lists(tmp_path: Path):
    root = tmp_path / "m"
    _image(root / "images/a.jpg", 10)
    table = pa.table(
        {
            "qry": ["find the red one", "find the blue one"],
            "qry_image_path": ["", ""],
            "pos_text": ["red", "blue"],
            "pos_image_path": ["", "images/a.jpg"],
            "neg_text": [["green", "<|image_1|>\nan image"], ["pink", ""]],
            "neg_image_path": [["", "images/a.jpg"], ["", ""]],
        }
    )
    pq.write_table(table, root / "neg.parquet")
    view = MMEBExamples(root / "neg.parquet", root)
    assert view[0]["negatives"] == ["green", {"text": "an image", "image": str((root / "images/a.jpg").resolve())}]
    assert view[1]["negatives"] == ["pink"] and view.min_negatives() == 1
    assert view.with_max_negatives(1)[0]["negatives"] == ["green"]


# ---------------------------------------------------------------------------------------------------------------------
# Tevatron replica: queries + corpus Parquet written by `datasets` (Image feature), video / audio paths under assets
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def tevatron(tmp_path: Path) -> Path:
    root = tmp_path / "tevatron"
    assets = root / "assets"
    docs = {"docid": [], "text": [], "image": [], "video": [], "audio": [], "title": []}
    for d in range(6):  # 0-1 image documents (text null), 2-3 videos, 4-5 audio clips; as pixmo / msrvtt / audiocaps
        image = video = audio = None
        if d < 2:
            img = Image.new("RGB", (32, 32), (40 * d, 10, 200))
            image = img
        elif d < 4:
            video = f"videos/video{d}.mp4"
            _mp4(assets / video, 50 * d)
        else:
            audio = f"audios/{d}.mp3"
            (assets / "audios").mkdir(parents=True, exist_ok=True)
            soundfile.write(assets / audio, _tone(freq=300.0 + 100 * d), 16_000, format="MP3")
        docs["docid"].append(str(d))
        docs["text"].append(None if d < 4 else f"clip {d}")
        docs["image"].append(image)
        docs["video"].append(video)
        docs["audio"].append(audio)
        docs["title"].append("" if d != 5 else "Birds")
    features = datasets.Features(
        {
            "docid": datasets.Value("string"),
            "text": datasets.Value("string"),
            "image": datasets.Image(),
            "video": datasets.Value("string"),
            "audio": datasets.Value("string"),
            "title": datasets.Value("string"),
        }
    )
    datasets.Dataset.from_dict(docs, features=features).to_parquet(
        str(root / "corpus" / "train-00000-of-00001.parquet")
    )
    queries = {
        "query_id": [str(q) for q in range(6)],
        "query_text": [f"what does document {q} show?" for q in range(6)],
        "query_image": [None] * 5 + [Image.new("RGB", (32, 32), (1, 2, 3))],
        "query_video": [None] * 6,
        "query_audio": [None] * 6,
        "positive_document_ids": [[str(q)] for q in range(6)],
        "negative_document_ids": [[str((q + 1) % 6), str((q + 2) % 6), str((q + 3) % 6)] for q in range(6)],
    }
    qfeatures = datasets.Features(
        {
            "query_id": datasets.Value("string"),
            "query_text": datasets.Value("string"),
            "query_image": datasets.Image(),
            "query_video": datasets.Value("string"),
            "query_audio": datasets.Value("string"),
            "positive_document_ids": datasets.List(datasets.Value("string")),
            "negative_document_ids": datasets.List(datasets.Value("string")),
        }
    )
    datasets.Dataset.from_dict(queries, features=qfeatures).to_parquet(str(root / "train" / "train-00000.parquet"))
    return root


def test_tevatron_queries_and_corpus(tevatron: Path):
    spec = f"tevatron:{tevatron / 'train'}?corpus={tevatron / 'corpus'}&assets={tevatron / 'assets'}"
    view = load_data_spec(spec)
    assert isinstance(view, TevatronExamples) and len(view) == 6 and view.min_negatives() == 3
    first = view[0]
    assert first["query"] == "what does document 0 show?"
    assert isinstance(first["positive"]["image"], Image.Image) and "text" not in first["positive"]  # text null
    assert [set(n) for n in first["negatives"]] == [{"image"}, {"video"}, {"video"}]
    assert first["negatives"][1]["video"] == str((tevatron / "assets/videos/video2.mp4").resolve())
    assert view[5]["positive"] == {
        "text": "Birds clip 5",  # title + text, as Tevatron joins them
        "audio": str((tevatron / "assets/audios/5.mp3").resolve()),
    }
    assert set(view[5]["query"]) == {"text", "image"}
    assert len(view.with_max_negatives(1)[0]["negatives"]) == 1
    for i in range(len(view)):
        validate_example(view[i], i)


def test_tevatron_bad_rows_and_ids(tevatron: Path, tmp_path: Path):
    table = pq.read_table(tevatron / "train" / "train-00000.parquet")
    ids = table.column("negative_document_ids").to_pylist()
    ids[4] = ["1", "no-such-doc"]
    pq.write_table(table.set_column(6, "negative_document_ids", pa.array(ids)), tmp_path / "q.parquet")
    view = TevatronExamples(tmp_path / "q.parquet", tevatron / "corpus", tevatron / "assets")
    with pytest.raises(
        BadRowError,
        match=r"q\.parquet row 4, column 'negative_document_ids': document id "
        r"'no-such-doc' is not in the corpus",
    ):
        view[4]
    with pytest.raises(DataError, match="give the corpus"):
        TevatronExamples(tevatron / "train")
    corpus = pq.read_table(tevatron / "corpus" / "train-00000-of-00001.parquet")
    videos = corpus.column("video").to_pylist()
    videos[2] = "/etc/hosts"
    pq.write_table(corpus.set_column(3, "video", pa.array(videos)), tmp_path / "corpus.parquet")
    view = TevatronExamples(tevatron / "train", tmp_path / "corpus.parquet", tevatron / "assets")
    with pytest.raises(UnsafeMediaPathError, match=r"corpus\.parquet row 2, column 'video'.*absolute"):
        view[0]  # document 2 is one of query 0's negatives


def test_tevatron_legacy_text_form(tmp_path: Path):
    """BGE-M3's pairs as Tevatron/bge-ir ships them: passages inline, with docid / title / text."""
    rows = [
        {
            "query_id": "0",
            "query": "what is a dog",
            "positive_passages": [{"docid": "a", "title": "Dog", "text": "A domesticated wolf."}],
            "negative_passages": [
                {"docid": "b", "title": "", "text": "A cat is small."},
                {"docid": "c", "title": "", "text": "Cars have wheels."},
            ],
        },
        {
            "query_id": "1",
            "query": "capital of France",
            "positive_passages": [{"docid": "d", "title": "", "text": "Paris."}],
            "negative_passages": [{"docid": "e", "title": "", "text": "Berlin."}],
        },
    ]
    path = tmp_path / "bge.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    view = load_data_spec(f"tevatron:{path}")
    assert view[0] == {
        "query": "what is a dog",
        "positive": "Dog A domesticated wolf.",
        "negatives": ["A cat is small.", "Cars have wheels."],
    }
    assert view.min_negatives() == 1
    rows[1]["positive_passages"] = []
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(BadRowError, match=r"bge\.jsonl line 2, column 'positive_passages': no positive passage"):
        load_data_spec(f"tevatron:{path}")[1]


# ---------------------------------------------------------------------------------------------------------------------
# caption tables: AudioCaps (Audio feature, as on the Hub) and MSR-VTT (caption + video file under the media root)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def captions(tmp_path: Path) -> Path:
    root = tmp_path / "captions"
    wavs = []
    for i in range(6):
        (root / "audiocaps").mkdir(parents=True, exist_ok=True)
        soundfile.write(root / "audiocaps" / f"{i}.wav", _tone(freq=200.0 + 50 * i), 16_000)
        wavs.append({"bytes": (root / "audiocaps" / f"{i}.wav").read_bytes(), "path": None})
        _mp4(root / "msrvtt" / "videos" / f"video{i}.mp4", 30 * i)
    audiocaps = datasets.Dataset.from_dict(
        {
            "audiocap_id": list(range(6)),
            "youtube_id": [f"yt{i}" for i in range(6)],
            "start_time": [30] * 6,
            "audio": wavs,
            "caption": [f"a dog barks {i} times" for i in range(6)],
        },
        features=datasets.Features(
            {
                "audiocap_id": datasets.Value("int32"),
                "youtube_id": datasets.Value("string"),
                "start_time": datasets.Value("int32"),
                "audio": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
                "caption": datasets.Value("string"),
            }
        ),
    ).cast_column("audio", datasets.Audio(sampling_rate=16_000))
    audiocaps.to_parquet(str(root / "audiocaps" / "train-00000-of-00001.parquet"))
    lines = ["video_id,caption,video"] + [
        f"video{i},a person is cooking dish {i},videos/video{i}.mp4" for i in range(6)
    ]
    (root / "msrvtt" / "train_9k.csv").write_text("\n".join(lines) + "\n")
    return root


def test_caption_tables(captions: Path):
    audio = load_data_spec(f"caption:{captions / 'audiocaps' / 'train-00000-of-00001.parquet'}")
    assert isinstance(audio, CaptionExamples) and len(audio) == 6
    assert audio[2]["query"] == "a dog barks 2 times"
    clip = audio[2]["positive"]["audio"]
    assert clip["sampling_rate"] == 16_000 and clip["array"].dtype == np.float32 and clip["array"].shape == (4800,)
    video = load_data_spec(f"caption:{captions / 'msrvtt' / 'train_9k.csv'}")
    assert video[3] == {
        "query": "a person is cooking dish 3",
        "positive": {"video": str((captions / "msrvtt/videos/video3.mp4").resolve())},
    }
    (captions / "msrvtt" / "bad.csv").write_text("caption,video\nfine,videos/video0.mp4\n,videos/video1.mp4\n")
    with pytest.raises(BadRowError, match=r"bad\.csv line 3, column 'caption': the caption is empty"):
        load_data_spec(f"caption:{captions / 'msrvtt' / 'bad.csv'}")[1]
    (captions / "msrvtt" / "nomedia.csv").write_text("caption,video_id\nfine,video0\n")
    with pytest.raises(DataError, match="needs a media column"):
        load_data_spec(f"caption:{captions / 'msrvtt' / 'nomedia.csv'}")


# ---------------------------------------------------------------------------------------------------------------------
# specs and mixtures
# ---------------------------------------------------------------------------------------------------------------------


def test_spec_options_are_checked(mmeb: Path):
    with pytest.raises(DataSpecError, match="unknown option 'corpus' for mmeb"):
        load_data_spec(f"mmeb:{mmeb / 'CIRR'}?corpus=x")
    with pytest.raises(DataSpecError, match="not found"):
        load_data_spec("tevatron:/nonexistent/queries.parquet")
    with pytest.raises(DataError, match="no file whose name starts with split 'train'"):
        load_data_spec(f"mmeb:{mmeb / 'CIRR'}?split=train")


def _mixture_file(path: Path, sources: list, **top) -> Path:
    path.write_text(yaml.safe_dump({**top, "sources": sources}))
    return path


def test_mixture_weights_set_each_sources_share(mmeb: Path, tmp_path: Path):
    sources = [
        {"name": "cirr", "spec": f"mmeb:{mmeb / 'CIRR'}?split=original", "media_root": str(mmeb), "weight": 1},
        {
            "name": "webqa",
            "spec": f"mmeb:{mmeb / 'WebQA'}?split=original",
            "media_root": str(mmeb),
            "weight": 3,
            "examples": 4,
        },
    ]
    mix = load_data_spec(f"mix:{_mixture_file(tmp_path / 'mix.yaml', sources, size=20, seed=1)}")
    assert isinstance(mix, MixedExamples) and len(mix) == 20 and mix.counts == {"cirr": 5, "webqa": 15}
    drawn = [mix.source_of(i) for i in range(len(mix))]
    webqa_rows = sorted(r for name, r in drawn if name == "webqa")
    assert set(webqa_rows) == {0, 1, 2, 3} and len(webqa_rows) == 15  # only the first 4 rows, each >= 3 times
    cirr_rows = [r for name, r in drawn if name == "cirr"]
    assert len(cirr_rows) == len(set(cirr_rows)) == 5 and set(cirr_rows) <= set(range(6))  # 5 of 6 rows, no repeats
    assert mix.min_negatives() == 0
    again = load_data_spec(f"mix:{tmp_path / 'mix.yaml'}")
    assert [again.source_of(i) for i in range(20)] == drawn  # seeded
    with pytest.raises(MixtureError, match=r"mix2\.yaml line \d+, source 0 \(cirr\): 'weight' must be a number > 0"):
        load_data_spec(f"mix:{_mixture_file(tmp_path / 'mix2.yaml', [dict(sources[0], weight=0)])}")
    with pytest.raises(MixtureError, match=r"unknown key\(s\) \['wieght'\]"):
        load_data_spec(f"mix:{_mixture_file(tmp_path / 'mix3.yaml', [{'spec': sources[0]['spec'], 'wieght': 2}])}")


# ---------------------------------------------------------------------------------------------------------------------
# training through the CLI on the replicas
# ---------------------------------------------------------------------------------------------------------------------


def _replica_specs(mmeb: Path, tevatron: Path, captions: Path) -> dict[str, dict]:
    return {
        "mmeb": {"spec": f"mmeb:{mmeb / 'CIRR'}?split=original", "media_root": str(mmeb)},
        "tevatron": {
            "spec": f"tevatron:{tevatron / 'train'}?corpus={tevatron / 'corpus'}&assets={tevatron / 'assets'}"
        },
        "caption": {"spec": f"caption:{captions / 'msrvtt' / 'train_9k.csv'}"},
    }


def test_cli_trains_on_a_mixture_of_the_three_schemas(mmeb: Path, tevatron: Path, captions: Path, tmp_path: Path):
    sources = [{"name": name, "weight": 1, **spec} for name, spec in _replica_specs(mmeb, tevatron, captions).items()]
    mixture = _mixture_file(tmp_path / "mixture.yaml", sources, size=12)
    out = tmp_path / "run"
    run(train_args(out, "--train_data", f"mix:{mixture}", steps=2, batch=6))
    losses = logged_losses(out)
    assert sorted(losses) == [1, 2] and all(np.isfinite(v) for v in losses.values())


@pytest.mark.slow
@pytest.mark.parametrize("schema", ["mmeb", "tevatron", "caption"])
def test_cli_trains_on_each_schema(schema: str, mmeb: Path, tevatron: Path, captions: Path, tmp_path: Path):
    spec = _replica_specs(mmeb, tevatron, captions)[schema]
    extra = ["--media_root", spec["media_root"]] if "media_root" in spec else []
    out = tmp_path / "run"
    run(train_args(out, "--train_data", spec["spec"], *extra, steps=3, batch=4))
    losses = logged_losses(out)
    assert sorted(losses) == [1, 2, 3] and all(np.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("size", ["3b", "7b"])
def test_paper_configs_point_at_the_public_mixture(size: str):
    """The recipes train on configs/mixtures/e5-omni.yaml, whose every source is a well-formed public spec covering
    the paper's five sets (the data itself is not here: downloading it is the user's step)."""
    from e5omni.data.specs import SPEC_OPTIONS, parse_options
    from e5omni.train.run import parse_recipe

    repo = Path(__file__).resolve().parents[1]
    _, data_args, training_args = parse_recipe(
        ["--config", str(repo / f"configs/e5-omni-{size}.yaml"), "--bf16", "false", "--use_cpu", "true"]
    )
    assert data_args.train_data == "mix:configs/mixtures/e5-omni.yaml" and training_args.num_negatives == 0
    mixture = yaml.safe_load((repo / "configs/mixtures/e5-omni.yaml").read_text())
    names = set()
    for source in mixture["sources"]:
        assert set(source) <= {"name", "spec", "media_root", "examples", "weight"}
        prefix = source["spec"].split(":", 1)[0]
        assert prefix in SPEC_OPTIONS
        parse_options(source["spec"], prefix)
        names.add(source["name"])
    assert {"bge-m3-pairs", "pixmo-docs", "msr-vtt", "audiocaps", "MSCOCO_i2t"} <= names
    assert sum(s["spec"].startswith("mmeb:") for s in mixture["sources"]) == 20  # MMEB-V1's 20 training subsets
