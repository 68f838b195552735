"""Produced fields of real-time writes: a pushed row's raw text becomes its embedding.

A view field with an LLM_EMBEDDING production is computed from its input field before the
upsert, so a pushed batch is acknowledged only once its vectors are stored with it. A row may
instead carry the vector itself (computed elsewhere); it must then have the model's dimension.
"""

from __future__ import annotations

from typing import Any, Protocol

from shared.embeddings import ModelSettings, TextEmbedder
from shared.errors import FailedPrecondition, InvalidArgument
from shared.feature_views import Feature, ViewSchema

Row = tuple[Any, ...]


class EmbeddingModels(Protocol):
    """Where embedding-model call settings come from (the cached registry client)."""

    def embedding_model(self, project: str, model_id: str) -> Any: ...


class ProducedFields:
    def __init__(self, embedder: TextEmbedder | None, models: EmbeddingModels) -> None:
        self._embedder = embedder
        self._models = models

    def fill(self, project: str, view: ViewSchema, rows: list[Row]) -> list[Row]:
        """`rows` (key, *features, event time) with every produced field computed."""
        for position, feature in enumerate(view.features, start=1):
            if feature.produced:
                rows = self._fill_one(project, view, position, feature, rows)
        return rows

    def _fill_one(
        self, project: str, view: ViewSchema, position: int, feature: Feature, rows: list[Row]
    ) -> list[Row]:
        model = ModelSettings.from_proto(
            self._models.embedding_model(project, feature.embedding_model)
        )
        source = 1 + next(i for i, f in enumerate(view.features) if f.name == feature.input_field)
        _check_given(rows, position, feature, model)
        wanted = [
            i for i, row in enumerate(rows) if row[position] is None and row[source] is not None
        ]
        if not wanted:
            return rows
        if self._embedder is None:
            raise FailedPrecondition(
                f"field {feature.name!r} is produced by embedding model {model.name} and this "
                "serving replica has no embedder configured"
            )
        embeddings = self._embedder.embed(model, [rows[i][source] for i in wanted])
        filled = list(rows)
        for index, vector in zip(wanted, embeddings.vectors, strict=True):
            row = filled[index]
            filled[index] = (*row[:position], vector.tolist(), *row[position + 1 :])
        return filled


def _check_given(rows: list[Row], position: int, feature: Feature, model: ModelSettings) -> None:
    """Vectors a caller sends for a produced field must have the model's dimension."""
    for index, row in enumerate(rows):
        vector = row[position]
        if vector is not None and len(vector) != model.dimension:
            raise InvalidArgument(
                f"rows[{index}].values.{feature.name}",
                f"has {len(vector)} dimensions; embedding model {model.name} declares "
                f"{model.dimension} (or leave it out and send {feature.input_field!r})",
                reason="WRONG_VECTOR_DIMENSION",
            )
