"""The ecosystem's array layouts embed exactly like the canonical forms; ambiguous layouts are refused, never guessed.

Images: numpy/torch ``(H, W)``, ``(H, W, C)``, ``(C, H, W)`` (C = 1, 3, 4), uint8 or float in [0, 1] (torchvision's
``to_pil_image`` scaling), bare or under ``"image"``. Videos: ``(T, H, W, 3)`` or ``(T, 3, H, W)`` uint8.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import to_pil_image

from e5omni.data import validate_example
from e5omni.data.errors import BadRowError
from modeling_e5omni import E5OmniInputError
from modeling_e5omni.processing_e5omni import check_item
from tests.conftest import make_video

H, W = 40, 56  # not square, so a transposed layout cannot pass by accident
rng = np.random.default_rng(7)
RGB = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
RGBA = rng.integers(0, 256, (H, W, 4), dtype=np.uint8)
GREY = rng.integers(0, 256, (H, W), dtype=np.uint8)
UNIT = torch.from_numpy(rng.random((3, H, W), dtype=np.float32))  # float CHW in [0, 1]
IMAGE_LAYOUTS = "(H, W), (H, W, C) or (C, H, W) with C = 1, 3 or 4"
VIDEO_LAYOUTS = "(T, H, W, 3) or (T, 3, H, W)"


def chw(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


# (new form, canonical form): every new form must give exactly the canonical form's vector.
IMAGE_FORMS = {
    "np HWC uint8 (bare)": (RGB, Image.fromarray(RGB)),
    "np HWC uint8 in a dict": ({"image": RGB}, {"image": Image.fromarray(RGB)}),
    "np HWC uint8 + text": ({"text": "a caption", "image": RGB}, {"text": "a caption", "image": Image.fromarray(RGB)}),
    "np HWC non-contiguous view": (RGB[:, ::-1], Image.fromarray(np.ascontiguousarray(RGB[:, ::-1]))),
    "np HW greyscale": ({"image": GREY}, Image.fromarray(GREY, "L")),
    "np HW1 greyscale": (GREY[:, :, None], Image.fromarray(GREY, "L")),
    "np HWC RGBA": (RGBA, Image.fromarray(RGBA, "RGBA")),
    "np HWC float [0, 1]": (RGB / 255.0, to_pil_image(RGB / 255.0)),
    "torch CHW uint8 (bare)": (chw(RGB), Image.fromarray(RGB)),
    "torch CHW uint8 in a dict": ({"image": chw(RGB)}, Image.fromarray(RGB)),
    "torch 1HW greyscale": (torch.from_numpy(GREY)[None], Image.fromarray(GREY, "L")),
    "torch CHW RGBA": (chw(RGBA), Image.fromarray(RGBA, "RGBA")),
    "torch HWC uint8": ({"image": torch.from_numpy(RGB)}, Image.fromarray(RGB)),
    "torch CHW float [0, 1]": (UNIT, to_pil_image(UNIT)),
    "torch CHW float, requires grad": (UNIT.clone().requires_grad_(True), to_pil_image(UNIT)),
}

VIDEO = make_video(5, frames=4, size=32)[:, :, :24]  # (T, H, W, 3) with H != W
VIDEO_FORMS = {
    "np TCHW": ({"video": np.ascontiguousarray(VIDEO.transpose(0, 3, 1, 2))}, {"video": VIDEO}),
    "torch TCHW": ({"video": torch.from_numpy(VIDEO).permute(0, 3, 1, 2)}, {"video": VIDEO}),
    "torch THWC": ({"video": torch.from_numpy(VIDEO)}, {"video": VIDEO}),
    "np TCHW + text": (
        {"text": "moving", "video": VIDEO.transpose(0, 3, 1, 2)},
        {"text": "moving", "video": VIDEO},
    ),
}
LONG = make_video(6, frames=40, size=32)  # over max_frames: subsampled the same way in both layouts
VIDEO_FORMS["np TCHW over max_frames"] = ({"video": LONG.transpose(0, 3, 1, 2)}, {"video": LONG})

FORMS = {**IMAGE_FORMS, **VIDEO_FORMS}


def test_every_new_layout_embeds_exactly_like_its_canonical_form(omni_model):
    names = list(FORMS)
    new = omni_model.encode_document([FORMS[n][0] for n in names], batch_size=4)
    canonical = omni_model.encode_document([FORMS[n][1] for n in names], batch_size=4)
    diffs = {n: (new[i] - canonical[i]).abs().max().item() for i, n in enumerate(names)}
    assert all(d == 0 for d in diffs.values()), diffs
    assert torch.equal(new, canonical)


def test_queries_and_the_processor_take_them_too(omni_model):
    query = omni_model.encode_query([{"text": "find", "image": chw(RGB)}])
    assert torch.equal(query, omni_model.encode_query([{"text": "find", "image": Image.fromarray(RGB)}]))
    processor = omni_model.processor
    a, b = processor([RGB, {"video": VIDEO.transpose(0, 3, 1, 2)}]), processor([Image.fromarray(RGB), {"video": VIDEO}])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_datasets_formats_embed_like_the_image(omni_model):
    """What `datasets` hands over for an Image column: numpy (H, W, 3) / (H, W), torch (3, H, W) / (1, H, W).

    Under "image" all four embed like the PIL image; bare, the 3-D ones do (a bare 2-D array is refused, see below)."""
    datasets = pytest.importorskip("datasets")
    images = [Image.fromarray(RGB), Image.fromarray(GREY, "L")]
    ds = datasets.Dataset.from_dict({"image": images}).cast_column("image", datasets.Image())
    canonical = omni_model.encode_document(images)
    alone = omni_model.encode_document(images[:1])  # batch of one vs batch of one: padding differs from the pair
    for fmt in ("numpy", "torch"):
        rows = [ds.with_format(fmt)[i]["image"] for i in range(len(images))]
        assert [tuple(r.shape) for r in rows] == ([(H, W, 3), (H, W)] if fmt == "numpy" else [(3, H, W), (1, H, W)])
        assert torch.equal(omni_model.encode_document([{"image": r} for r in rows]), canonical), fmt
        assert torch.equal(omni_model.encode_document(rows[:1]), alone), fmt  # a bare 2-D array is refused


def test_new_forms_are_training_items_too():
    for item, _ in FORMS.values():
        validate_example({"query": "q", "positive": item, "negatives": [item]}, 0)
    assert check_item(RGB, 0) == (False, True, False, False)
    assert check_item({"video": VIDEO.transpose(0, 3, 1, 2)}, 0) == (False, False, False, True)


AMBIGUOUS = {
    "video T3H3": (
        {"video": np.zeros((4, 3, 8, 3), np.uint8)},
        ["cannot tell the channel axis", "both", VIDEO_LAYOUTS],
    ),
    "video T333 torch": ({"video": torch.zeros((4, 3, 3, 3), dtype=torch.uint8)}, ["channel axis", VIDEO_LAYOUTS]),
    "video no 3": ({"video": np.zeros((4, 8, 8, 4), np.uint8)}, ["video array must be uint8 of shape", VIDEO_LAYOUTS]),
    "video float": (
        {"video": np.zeros((4, 3, 8, 8), np.float32)},
        ["video array must be uint8 of shape", VIDEO_LAYOUTS],
    ),
    "image 3x8x4": (np.zeros((3, 8, 4), np.uint8), ["cannot tell the channel axis", "both", IMAGE_LAYOUTS]),
    "image 1x8x3": ({"image": torch.zeros((1, 8, 3))}, ["cannot tell the channel axis", "both", IMAGE_LAYOUTS]),
    "image 8x6x5": ({"image": np.zeros((8, 6, 5), np.uint8)}, ["channel axis", "neither", IMAGE_LAYOUTS]),
    "image 4-D": ({"image": np.zeros((2, 8, 6, 3), np.uint8)}, ["image array must be", IMAGE_LAYOUTS]),
    "image int64": ({"image": np.zeros((8, 6, 3), np.int64)}, ["image array must be uint8 or float in [0, 1]"]),
    "image float 255": ({"image": torch.full((3, 8, 6), 255.0)}, ["float image array must lie in [0, 1]"]),
    "image NaN": ({"image": np.full((8, 6, 3), np.nan, np.float32)}, ["float image array must lie in [0, 1]"]),
    "image empty": ({"image": np.zeros((0, 6, 3), np.uint8)}, ["image has no pixels"]),
}


@pytest.mark.parametrize(("item", "parts"), list(AMBIGUOUS.values()), ids=list(AMBIGUOUS))
def test_ambiguous_or_wrong_layouts_are_refused_naming_the_item(omni_model, item, parts):
    with pytest.raises(E5OmniInputError) as err:
        omni_model.encode_document(["fine", RGB, item])
    assert err.value.index == 2 and str(err.value).startswith("item 2: ")
    for part in parts:
        assert part in str(err.value)


BARE = [
    np.zeros(16_000, np.float32),  # audio samples: never an image
    np.zeros((2, 16_000), np.float32),  # multi-channel audio, or greyscale? refused bare
    torch.zeros(16_000),
    make_video(1),  # 4-D: a video, or a stacked batch of images? refused bare
    np.array([["a", "b"], ["c", "d"], ["e", "f"]]),  # 3-D only in the sense of shape: strings are not pixels
]


@pytest.mark.parametrize("item", BARE, ids=["1d", "2d", "torch-1d", "4d", "str-array"])
def test_bare_arrays_other_than_images_are_refused_with_the_wrapping_to_use(omni_model, item):
    with pytest.raises(E5OmniInputError) as err:
        omni_model.encode_document(["fine", RGB, item])
    message = str(err.value)
    assert message.startswith("item 2: a bare ") and "is not an item" in message
    assert "{'audio': samples}" in message and VIDEO_LAYOUTS in message
    with pytest.raises(BadRowError, match="is not an item"):  # training refuses them the same way
        validate_example({"query": "q", "positive": item}, 0)


def test_a_single_array_is_not_a_list_of_items(omni_model):
    for items in (RGB, chw(RGB), make_video(1)):
        with pytest.raises(E5OmniInputError, match="wrap it in a list"):
            omni_model.encode_document(items)


def test_sentence_transformers_gets_the_same_vectors(omni_model):
    """sentence-transformers (6.2) passes bare arrays and dicts through to our module untouched (it only infers
    the modality: 3-D array -> image, 4-D -> video, dict -> its keys), so every form gives the canonical vector."""
    from modeling_e5omni.sentence_e5omni import sentence_transformer

    st = sentence_transformer(omni_model, omni_model.processor)
    names = ["np HWC uint8 (bare)", "np HWC uint8 in a dict", "torch CHW uint8 (bare)", "torch CHW float [0, 1]"]
    names += ["np HW greyscale", "np TCHW", "torch TCHW"]
    new = st.encode([FORMS[n][0] for n in names], convert_to_tensor=True)
    canonical = st.encode([FORMS[n][1] for n in names], convert_to_tensor=True)
    assert torch.equal(new, canonical)
    assert torch.equal(
        st.encode([RGB], convert_to_tensor=True), st.encode([Image.fromarray(RGB)], convert_to_tensor=True)
    )
    with pytest.raises(E5OmniInputError, match="item 0: a bare ndarray of shape"):
        st.encode([make_video(1)])  # sentence-transformers calls a bare 4-D array a video; we refuse it


def test_test_modules_never_import_from_one_another():
    """Shared test code lives in tests/helpers.py, tests/conftest.py, tests/cli_runs.py or tests/reference.py: a test
    module's private helper imported elsewhere could not be renamed or moved, and importing a test module also runs
    its module-level skips."""
    import ast
    from pathlib import Path

    offenders = []
    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            offenders += [f"{path.name}:{node.lineno} {n}" for n in names if n.startswith("tests.test_")]
    assert not offenders, offenders
