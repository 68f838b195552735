"""The `dnn` trainer: a DIN-style ranking network with ESMM's two heads, on PyTorch (CPU).

Why this model:
- **DIN** (Zhou et al., KDD 2018): a user's history is pooled by attention to the candidate
  item, so the part of the history that matters for *this* item weighs most. MovieLens
  users rate dozens of films across genres; a mean of the history blurs that.
- **ESMM** (Ma et al., SIGIR 2018): the conversion label (rating >= 4) only exists for items
  the user clicked (rated). Training CVR on clicked rows alone is biased towards what users
  already chose; ESMM trains p(ctr) on every impression and p(ctcvr) = p(ctr) * p(cvr) on
  every impression, so `probs_cvr` is learned over the whole space.

The network is built from the FG signature alone: one embedding table per `TensorSpec.table`
(outputs with the same `embedding_name` share it), `id` outputs pooled by their combiner,
`sequence` outputs attended by the candidate's embedding from the same table (mean-pooled
when the candidate has none), `dense` outputs batch-normalised. Index -1 means "no value"
everywhere: its embedding is masked to zero. Exported with `torch.onnx.export`, its inputs
are exactly the FG outputs, so Triton receives what the rank stage generates.
"""

from __future__ import annotations

import io
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from shared.feature_generator import DENSE, ID, SEQUENCE, TensorSpec

OUTPUTS = ("probs_ctr", "probs_cvr")
# ONNX opset and IR version that onnxruntime in Triton's backend venv (1.22) loads.
OPSET = 17


@dataclass(frozen=True)
class DnnSettings:
    embedding_dimension: int = 16
    hidden: tuple[int, ...] = (256, 128)
    tower: int = 64
    attention_hidden: int = 32
    epochs: int = 3
    batch_size: int = 1024
    learning_rate: float = 2e-3
    weight_decay: float = 1e-6
    seed: int = 20261202


class DinEsmm(nn.Module):
    def __init__(self, signature: Sequence[TensorSpec], settings: DnnSettings) -> None:
        super().__init__()
        self.signature = tuple(signature)
        self.names = [spec.name for spec in self.signature]
        width = settings.embedding_dimension
        tables: dict[str, int] = {}
        for spec in self.signature:
            if spec.kind in (ID, SEQUENCE):
                tables[spec.table] = max(tables.get(spec.table, 0), spec.cardinality)
        self.tables = nn.ModuleDict(
            {
                name: nn.Embedding(rows, _width(self.signature, name, width))
                for name, rows in tables.items()
            }
        )
        for table in self.tables.values():
            nn.init.normal_(table.weight, std=0.05)
        self.ids = [s for s in self.signature if s.kind == ID]
        self.sequences = [s for s in self.signature if s.kind == SEQUENCE]
        self.dense = [s for s in self.signature if s.kind == DENSE]
        dense_width = sum(math.prod(s.dims) for s in self.dense)
        self.dense_norm = nn.BatchNorm1d(dense_width) if dense_width else None
        # The candidate-side id output a sequence attends with: the id output on its table.
        self.queries = {
            seq.name: next((i.name for i in self.ids if i.table == seq.table), None)
            for seq in self.sequences
        }
        self.attention = nn.ModuleDict(
            {
                seq.name: Attention(self.tables[seq.table].embedding_dim, settings.attention_hidden)
                for seq in self.sequences
                if self.queries[seq.name] is not None
            }
        )
        features = (
            sum(self.tables[s.table].embedding_dim for s in (*self.ids, *self.sequences))
            + dense_width
        )
        layers: list[nn.Module] = []
        for size in settings.hidden:
            layers += [nn.Linear(features, size), nn.ReLU()]
            features = size
        self.shared = nn.Sequential(*layers)
        self.ctr = _tower(features, settings.tower)
        self.cvr = _tower(features, settings.tower)

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`tensors` in signature order (ONNX export names them); probs_ctr, probs_cvr [B, 1]."""
        inputs = dict(zip(self.names, tensors, strict=True))
        pooled = {spec.name: self._pool_ids(spec, inputs[spec.name]) for spec in self.ids}
        parts = [pooled[spec.name] for spec in self.ids]
        for spec in self.sequences:
            parts.append(self._pool_sequence(spec, inputs[spec.name], pooled))
        if self.dense_norm is not None:
            dense = torch.cat(
                [inputs[s.name].reshape(inputs[s.name].shape[0], -1) for s in self.dense], 1
            )
            parts.append(self.dense_norm(dense))
        hidden = self.shared(torch.cat(parts, dim=1))
        ctr = torch.sigmoid(self.ctr(hidden))
        cvr = torch.sigmoid(self.cvr(hidden))
        return ctr, cvr

    def _embed(self, table: str, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings [B, k, d] with padding (-1) rows zeroed, and the mask [B, k, 1]."""
        mask = (indices >= 0).unsqueeze(-1).to(torch.float32)
        vectors = self.tables[table](indices.clamp(min=0)) * mask
        return vectors, mask

    def _pool_ids(self, spec: TensorSpec, indices: torch.Tensor) -> torch.Tensor:
        vectors, mask = self._embed(spec.table, indices)
        summed = vectors.sum(dim=1)
        if spec.combiner == "sum":
            return summed
        return summed / mask.sum(dim=1).clamp(min=1.0)

    def _pool_sequence(
        self, spec: TensorSpec, indices: torch.Tensor, pooled: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        vectors, mask = self._embed(spec.table, indices)
        query = self.queries[spec.name]
        if query is None:
            return vectors.sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return self.attention[spec.name](pooled[query], vectors, mask)


class Attention(nn.Module):
    """DIN's local activation unit: a small MLP scores each history item against the
    candidate from [q, k, q - k, q * k]; scores are not softmax-normalised (as in DIN), so
    the pooled vector keeps how much of the history is relevant."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(4 * width, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q = query.unsqueeze(1).expand_as(keys)
        weights = self.score(torch.cat([q, keys, q - keys, q * keys], dim=-1)) * mask
        return (weights * keys).sum(dim=1)


def _tower(width: int, hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, 1))


def _width(signature: Sequence[TensorSpec], table: str, default: int) -> int:
    widths = {
        s.embedding_dimension for s in signature if s.table == table and s.embedding_dimension
    }
    return max(widths) if widths else default


@dataclass(frozen=True)
class TrainReport:
    epochs: int
    rows: int
    seconds: float
    final_loss: float


def train(
    signature: Sequence[TensorSpec],
    inputs: Mapping[str, np.ndarray],
    clicked: np.ndarray,
    converted: np.ndarray,
    settings: DnnSettings,
    log: Callable[[str], None] = print,
) -> tuple[DinEsmm, TrainReport]:
    """ESMM loss: BCE(p_ctr, click) + BCE(p_ctr * p_cvr, click and conversion)."""
    torch.manual_seed(settings.seed)
    generator = np.random.default_rng(settings.seed)
    model = DinEsmm(signature, settings)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    tensors = [torch.from_numpy(np.ascontiguousarray(inputs[spec.name])) for spec in signature]
    click = torch.from_numpy(clicked.astype(np.float32)).reshape(-1, 1)
    ctcvr = torch.from_numpy((clicked * converted).astype(np.float32)).reshape(-1, 1)
    rows = len(click)
    started = time.perf_counter()
    loss_value = math.nan
    model.train()
    for epoch in range(settings.epochs):
        order = torch.from_numpy(generator.permutation(rows))
        total, batches = 0.0, 0
        for start in range(0, rows, settings.batch_size):
            batch = order[start : start + settings.batch_size]
            if len(batch) < 2:  # BatchNorm needs two rows
                continue
            p_ctr, p_cvr = model(*(tensor[batch] for tensor in tensors))
            loss = nn.functional.binary_cross_entropy(p_ctr, click[batch])
            loss = loss + nn.functional.binary_cross_entropy(
                (p_ctr * p_cvr).clamp(1e-7, 1 - 1e-7), ctcvr[batch]
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
            batches += 1
        loss_value = total / max(batches, 1)
        log(f"epoch {epoch + 1}/{settings.epochs}: loss {loss_value:.4f}")
    model.eval()
    return model, TrainReport(settings.epochs, rows, time.perf_counter() - started, loss_value)


def predict(
    model: DinEsmm, inputs: Mapping[str, np.ndarray], batch: int = 8192
) -> dict[str, np.ndarray]:
    rows = len(next(iter(inputs.values())))
    ctr, cvr = [], []
    with torch.no_grad():
        for start in range(0, rows, batch):
            part = [torch.from_numpy(inputs[name][start : start + batch]) for name in model.names]
            p_ctr, p_cvr = model(*part)
            ctr.append(p_ctr.numpy())
            cvr.append(p_cvr.numpy())
    return {"probs_ctr": np.concatenate(ctr), "probs_cvr": np.concatenate(cvr)}


def embedding_rows(model: DinEsmm, table: str, rows: np.ndarray) -> np.ndarray:
    """Rows of the embedding table `table`, [len(rows), width] float32; index -1 ("no value")
    is the zero vector, as in the forward pass."""
    weights = model.tables[table].weight.detach().numpy()
    vectors = weights[np.clip(rows, 0, None)].astype(np.float32)
    vectors[rows < 0] = 0.0
    return vectors


def to_onnx(model: DinEsmm, example: Mapping[str, np.ndarray]) -> bytes:
    """The model as ONNX bytes with inputs named after the FG outputs and a dynamic batch."""
    buffer = io.BytesIO()
    sample = tuple(torch.from_numpy(example[name][:2]) for name in model.names)
    dynamic = {name: {0: "batch"} for name in (*model.names, *OUTPUTS)}
    model.eval()
    with warnings.catch_warnings():
        # The TorchScript exporter (dynamo=False) is deprecated in favour of torch.export; it
        # is kept because its graphs load in the onnxruntime of Triton's backend venv.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            sample,
            buffer,
            input_names=model.names,
            output_names=list(OUTPUTS),
            dynamic_axes=dynamic,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return buffer.getvalue()
