"""The `minilm` encoder (infra/triton/models/minilm/1/encoder.py), loaded into this process.

The model repository is not a Python package (a package's `__pycache__` beside the models
would be taken for a model by `--load-model=*`), so its encoder is loaded by file path. The
benchmark's in-process baseline and the encoder's tests run exactly the code Triton runs.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from infra.local.tritonserver import DEFAULT_MODEL_REPOSITORY

MINILM_VERSION_DIR = DEFAULT_MODEL_REPOSITORY / "minilm" / "1"


def encoder_module(version_dir: Path = MINILM_VERSION_DIR) -> ModuleType:
    """encoder.py as a module: `TextEncoder(version_dir)` and its helpers."""
    spec = importlib.util.spec_from_file_location("minilm_encoder", version_dir / "encoder.py")
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"{version_dir / 'encoder.py'} cannot be loaded")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
