"""What every adapter shares: the model from a name or an instance, and a client's media value as one of our items."""

from __future__ import annotations

import io
import os
from typing import Any

from PIL import Image, UnidentifiedImageError

from modeling_e5omni import MediaDecodeError
from modeling_e5omni.media_e5omni import load_image

#: The modalities an adapter can be told its source values are (a value of another medium is a path or array).
MEDIA = ("image", "audio", "video")


def resolve_model(model: Any, *, revision: str | None = None, trust_remote_code: bool = True):
    """An `E5OmniModel` as given, or the one a folder / Hub id holds, in eval mode, on the GPU when there is one.

    Anything else is a TypeError naming what was given: a client's configuration passing a wrong object should fail
    here, not as a shape error during its first search."""
    from modeling_e5omni import E5OmniModel

    if isinstance(model, E5OmniModel):
        return model.eval()
    if isinstance(model, str | os.PathLike):
        import torch
        from transformers import AutoModel

        loaded = AutoModel.from_pretrained(model, revision=revision, trust_remote_code=trust_remote_code)
        if not isinstance(loaded, E5OmniModel) and type(loaded).__name__ != "E5OmniModel":
            raise TypeError(f"{model!s} holds a {type(loaded).__name__}, not an e5-omni model")
        if torch.cuda.is_available():
            loaded = loaded.to("cuda")
        return loaded.eval()
    raise TypeError(
        f"model must be a saved e5-omni folder, a Hub id or an E5OmniModel, got {type(model).__name__}: {model!r}"
    )


def model_name(model: Any) -> str:
    """A readable name for the client's records: the folder or Hub id, else the class."""
    if isinstance(model, str | os.PathLike):
        return str(model)
    return str(getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__)


def media_item(value: Any, modality: str, index: int, model) -> Any:
    """One client value -> one item: text as is, a media value under its modality key.

    Image bytes and binary streams (LlamaIndex hands `BytesIO` objects) are decoded here by the model's own image
    loader, so they get the same format allow-list and pixel cap as files; `index` is the value's position in the
    client's list, named by any error."""
    if modality == "text":
        if not isinstance(value, str):
            raise TypeError(f"item {index}: expected a text string, got {type(value).__name__}")
        return value
    if modality not in MEDIA:
        raise ValueError(f"modality must be 'text' or one of {MEDIA}, got {modality!r}")
    if isinstance(value, io.IOBase | bytes | bytearray):
        if modality != "image":
            raise TypeError(f"item {index}: {modality} must be a path or an array, got {type(value).__name__}")
        if isinstance(value, io.BytesIO):
            data = value.getvalue()
        elif isinstance(value, io.IOBase):
            data = value.read()
        else:
            data = value
        return {"image": load_image(_open_image(bytes(data), index, model.config), index, model.config)}
    return {modality: value}


def _open_image(data: bytes, index: int, config) -> Image.Image:
    """Open (not decode) image bytes with only the config's allowed formats' plugins; `load_image` then checks the
    pixel cap and decodes under its own error handling."""
    Image.init()
    formats = [name for name in (str(n).upper() for n in config.image_formats) if name in Image.OPEN]
    try:
        return Image.open(io.BytesIO(data), formats=formats)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise MediaDecodeError(
            f"image bytes are not an image in an allowed format (expected one of {list(config.image_formats)}): {err}",
            index,
        ) from err
