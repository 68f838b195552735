"""The training pipeline: labelled rows → ExportTrainingSet → FG → train → evaluate → ONNX.

Every step goes through the platform: the rows are joined with their features by the
materialization service (point in time, from the offline store), and the FG is the same code
the rank stage runs, bound to the same model feature set. The result is a `TrainedModel`
(ONNX bytes, signature, metrics) ready to be registered and deployed (`training.deploy`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shared.feature_generator import (
    AvailableFeature,
    FeatureGenerator,
    InputBinding,
    TensorSpec,
    bind_inputs,
)
from training import embeddings, evaluate, samples
from training.config import TrainingConfig
from training.data import FeatureColumns, SnapshotLookup, labels

Log = Callable[[str], None]
# ONNX and the in-process model must agree this closely on the test rows.
ONNX_TOLERANCE = 1e-4


class TrainingServices(Protocol):
    """What the pipeline asks of the platform (the CLI implements it over gRPC)."""

    def available_features(self, project: str, feature_set: str) -> list[AvailableFeature]:
        """The feature set's pinned features with their entity and stored type."""
        ...

    def export(
        self,
        project: str,
        feature_set: str,
        output_path: Path,
        *,
        entity_rows: Path | None = None,
        snapshot_time: datetime | None = None,
    ) -> int:
        """ExportTrainingSet into `output_path`; the number of rows written."""
        ...

    def entity_key(self, project: str, entity: str) -> AvailableFeature:
        """The entity's join key (`AvailableFeature.key`): a column of the labelled rows."""
        ...


@dataclass(frozen=True)
class Prepared:
    generator: FeatureGenerator
    binding: InputBinding
    columns: FeatureColumns


@dataclass
class TrainedModel:
    config: TrainingConfig
    onnx: bytes
    signature: tuple[TensorSpec, ...]
    outputs: tuple[str, ...]
    metrics: dict[str, float]
    window: tuple[datetime, datetime]
    timings: dict[str, float] = field(default_factory=dict)
    # The item embeddings file written (config `item_embeddings`), and how many items.
    item_embeddings: Path | None = None
    # A few test rows' FG outputs, for Triton's warm-up and the deployment check.
    sample: dict[str, np.ndarray] = field(default_factory=dict)
    sample_scores: dict[str, np.ndarray] = field(default_factory=dict)


def prepare(config: TrainingConfig, services: TrainingServices) -> Prepared:
    """The FG bound to the model feature set: a config naming a feature the set lacks fails
    here, before any data is read."""
    generator = config.generator()
    available = services.available_features(config.project, config.model_feature_set)
    keys = [
        services.entity_key(config.project, entity)
        for entity in (config.user_entity, config.item_entity)
    ]
    binding = bind_inputs(
        generator,
        available,
        user_entity=config.user_entity,
        item_entity=config.item_entity,
        keys=keys,
    )
    return Prepared(generator, binding, FeatureColumns(generator, binding))


def labelled_rows(config: TrainingConfig, work_dir: Path, log: Log = print) -> tuple[Path, Path]:
    """The train and test entity rows: given in the config, or built from its `samples`."""
    if config.samples is None:
        assert config.train_rows is not None and config.test_rows is not None
        return config.train_rows, config.test_rows
    started = time.perf_counter()
    paths = samples.write_samples(
        config.samples.interactions, work_dir / "samples", config.samples.sample_config()
    )
    log(
        f"samples: {paths.train_rows:,} train and {paths.test_rows:,} test rows "
        f"in {time.perf_counter() - started:.1f}s"
    )
    return paths.train, paths.test


def train(
    config: TrainingConfig,
    services: TrainingServices,
    work_dir: Path,
    log: Log = print,
) -> TrainedModel:
    timings: dict[str, float] = {}
    prepared = prepare(config, services)
    work_dir.mkdir(parents=True, exist_ok=True)
    rows = labelled_rows(config, work_dir, log)
    with _timed(timings, "export_seconds"):
        tables = [
            _export(config, services, path, work_dir / f"{name}_set.parquet", log)
            for name, path in zip(("train", "test"), rows, strict=True)
        ]
        lookup = _item_lookup(config, services, prepared, tables[0], work_dir)
    with _timed(timings, "fg_seconds"):
        generated = [
            prepared.generator.generate_rows(
                prepared.columns.inputs(table), table.num_rows, item_lookup=lookup
            )
            for table in tables
        ]
    train_labels, test_labels = (labels(table, config.labels) for table in tables)
    log(f"features: {len(prepared.generator.signature)} tensors, fg {timings['fg_seconds']:.1f}s")
    with _timed(timings, "train_seconds"):
        trainer = TRAINERS[config.trainer](config, prepared.generator.signature, log)
        trainer.fit(generated[0], train_labels)
    predicted = trainer.predict(generated[1])
    item_key = services.entity_key(config.project, config.item_entity).feature
    embeddings_path = _write_item_embeddings(config, trainer, tables, item_key, log)
    test_clicked = test_labels.get(evaluate.CLICK_OUTPUT, next(iter(test_labels.values())))
    model_scores = {}
    for output in config.labels:
        judged = evaluate.evaluation_rows(output, test_clicked)
        model_scores[output] = evaluate.score(
            test_labels[output][judged], predicted[output][judged]
        )
    baseline = evaluate.popularity_baseline(
        tables[0].column(item_key).to_numpy(zero_copy_only=False),
        train_labels,
        tables[1].column(item_key).to_numpy(zero_copy_only=False),
        test_labels,
    )
    onnx_bytes = trainer.to_onnx()
    sample = {name: array[:64] for name, array in generated[1].items()}
    sample_scores = _check_onnx(onnx_bytes, sample, {k: v[:64] for k, v in predicted.items()})
    metrics = evaluate.metrics(model_scores, baseline)
    metrics |= {"train_rows": float(tables[0].num_rows), "test_rows": float(tables[1].num_rows)}
    metrics |= timings
    return TrainedModel(
        config,
        onnx_bytes,
        prepared.generator.signature,
        tuple(config.labels),
        metrics,
        _window(tables[0], config.timestamp_column),
        timings,
        item_embeddings=embeddings_path,
        sample=sample,
        sample_scores=sample_scores,
    )


# --- trainers ---------------------------------------------------------------------------------


class Trainer(Protocol):
    def fit(self, inputs: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> None: ...
    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...
    def to_onnx(self) -> bytes: ...


class DnnTrainer:
    def __init__(self, config: TrainingConfig, signature: Sequence[TensorSpec], log: Log) -> None:
        from training import dnn  # torch is imported only when a dnn is trained

        self._dnn = dnn
        self._signature = tuple(signature)
        settings = config.dnn
        self._settings = dnn.DnnSettings(
            embedding_dimension=settings.embedding_dimension,
            hidden=settings.hidden,
            tower=settings.tower,
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            learning_rate=settings.learning_rate,
        )
        self._log = log
        self._model: Any = None
        self._example: dict[str, np.ndarray] = {}

    def fit(self, inputs: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> None:
        self._model, _ = self._dnn.train(
            self._signature,
            inputs,
            labels["probs_ctr"],
            labels["probs_cvr"],
            self._settings,
            self._log,
        )
        self._example = {name: array[:2] for name, array in inputs.items()}

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._dnn.predict(self._model, inputs)

    def to_onnx(self) -> bytes:
        return self._dnn.to_onnx(self._model, self._example)

    @property
    def signature(self) -> tuple[TensorSpec, ...]:
        return self._signature

    def embedding_rows(self, table: str, rows: np.ndarray) -> np.ndarray:
        """Rows of one learnt embedding table ([n, width] float32; zeros where row is -1)."""
        return self._dnn.embedding_rows(self._model, table, rows)


class GbdtTrainer:
    def __init__(self, config: TrainingConfig, signature: Sequence[TensorSpec], log: Log) -> None:
        from training import gbdt

        self._gbdt = gbdt
        self._signature = tuple(signature)
        settings = config.gbdt
        self._settings = gbdt.GbdtSettings(
            num_trees=settings.num_trees,
            num_leaves=settings.num_leaves,
            learning_rate=settings.learning_rate,
            min_child_samples=settings.min_child_samples,
        )
        self._log = log
        self._models: dict[str, Any] = {}

    def fit(self, inputs: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> None:
        clicked = labels.get(evaluate.CLICK_OUTPUT, next(iter(labels.values())))
        rows = {output: evaluate.evaluation_rows(output, clicked) for output in labels}
        self._models = self._gbdt.train(self._signature, inputs, labels, rows, self._settings)
        self._log(f"gbdt: {self._settings.num_trees} trees per output, {len(labels)} outputs")

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._gbdt.predict(self._signature, self._models, inputs)

    def to_onnx(self) -> bytes:
        return self._gbdt.to_onnx(self._signature, self._models)


TRAINERS: dict[str, Callable[[TrainingConfig, Sequence[TensorSpec], Log], Trainer]] = {
    "dnn": DnnTrainer,
    "gbdt": GbdtTrainer,
}


# --- steps ------------------------------------------------------------------------------------


def _export(
    config: TrainingConfig, services: TrainingServices, rows: Path, output: Path, log: Log
) -> pa.Table:
    started = time.perf_counter()
    count = services.export(
        config.project, config.model_feature_set, output, entity_rows=rows.resolve()
    )
    log(f"exported {count:,} rows of {rows.name} in {time.perf_counter() - started:.1f}s")
    return pq.read_table(output)


def _item_lookup(
    config: TrainingConfig,
    services: TrainingServices,
    prepared: Prepared,
    train_rows: pa.Table,
    work_dir: Path,
) -> SnapshotLookup | None:
    """Item attributes for sequence side features, as of the end of the training rows."""
    if not prepared.generator.lookup_inputs:
        return None
    _, end = _window(train_rows, config.timestamp_column)
    path = work_dir / "items_snapshot.parquet"
    services.export(config.project, config.model_feature_set, path, snapshot_time=end)
    item_key = services.entity_key(config.project, config.item_entity).feature
    return SnapshotLookup(pq.read_table(path), item_key, prepared.binding)


def _write_item_embeddings(
    config: TrainingConfig,
    trainer: Trainer,
    tables: Sequence[pa.Table],
    item_key: str,
    log: Log,
) -> Path | None:
    """The item id embedding of every item in the train and test rows (see
    `training.embeddings`), when the config asks for it."""
    wanted = config.item_embeddings
    if wanted is None:
        return None
    assert isinstance(trainer, DnnTrainer), "the config admits item_embeddings with a dnn only"
    column = pa.chunked_array([table.column(item_key) for table in tables])
    item_ids = pc.unique(column.drop_null()).sort().to_numpy(zero_copy_only=False)
    fg = config.fg_config
    rows = embeddings.item_rows(fg, wanted.feature, item_ids)
    vectors = trainer.embedding_rows(embeddings.table_of(trainer.signature, wanted.feature), rows)
    _, end = _window(tables[0], config.timestamp_column)
    path = embeddings.write(wanted.output, item_key, item_ids, vectors, end, column.type)
    log(f"item embeddings: {len(item_ids):,} items x {vectors.shape[1]} written to {path}")
    return path


def _window(table: pa.Table, column: str) -> tuple[datetime, datetime]:
    times = table.column(column)
    low, high = pc.min(times).as_py(), pc.max(times).as_py()
    return low, high


def _check_onnx(
    onnx_bytes: bytes, sample: dict[str, np.ndarray], expected: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Run the exported graph in onnxruntime on test rows; it must match the trained model."""
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    got = dict(zip(names, session.run(names, sample), strict=True))
    for name, values in expected.items():
        difference = float(np.max(np.abs(got[name] - values.reshape(got[name].shape))))
        if difference > ONNX_TOLERANCE:
            raise RuntimeError(
                f"the ONNX export of {name} differs from the trained model by {difference:g} "
                f"(limit {ONNX_TOLERANCE:g})"
            )
    return got


@contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = time.perf_counter() - started
