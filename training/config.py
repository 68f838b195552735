"""A training config (`recstack train CONFIG`): what to train, on which rows, with which FG.

    project: movielens
    model: ranker                     # registry Model id; created when missing
    model_feature_set: ranking
    user_entity: user
    item_entity: item
    fg: fg.json                       # the FG document, stored with the model version
    trainer: dnn                      # dnn | gbdt
    samples:                          # labelled rows built from interactions ...
      interactions: data/ratings.parquet
      negatives: 4
    # ... or given: train_rows: train.parquet / test_rows: test.parquet
    labels: {probs_ctr: clicked, probs_cvr: converted}

Paths are relative to the config file. Unknown keys are errors, so a typo never silently
falls back to a default.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.feature_generator import FeatureConfigError, FeatureGenerator
from training.embeddings import fg_entry
from training.samples import SampleConfig


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SamplesConfig(Strict):
    """Labelled rows built from a ratings log (see `training.samples`): every rating a
    clicked impression, `negatives` unrated items per rating, the last `test_fraction` of
    each user's ratings held out."""

    interactions: Path
    negatives: int = Field(default=4, ge=0, le=100)
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    conversion_rating: int = 4
    seed: int = 20261202

    def sample_config(self) -> SampleConfig:
        return SampleConfig(self.negatives, self.test_fraction, self.conversion_rating, self.seed)


class DnnConfig(Strict):
    embedding_dimension: int = Field(default=16, ge=1, le=512)
    hidden: tuple[int, ...] = (256, 128)
    tower: int = Field(default=64, ge=1)
    epochs: int = Field(default=3, ge=1, le=100)
    batch_size: int = Field(default=1024, ge=2)
    learning_rate: float = Field(default=2e-3, gt=0)


class GbdtConfig(Strict):
    num_trees: int = Field(default=200, ge=1, le=10_000)
    num_leaves: int = Field(default=31, ge=2)
    learning_rate: float = Field(default=0.05, gt=0)
    min_child_samples: int = Field(default=20, ge=1)


class ItemEmbeddingsConfig(Strict):
    """Write the trained dnn's embedding row of every item (see `training.embeddings`)."""

    # The FG id feature of the item whose embedding table is exported.
    feature: str = "item_id"
    output: Path


class TrainingConfig(Strict):
    project: str
    model: str
    model_feature_set: str
    user_entity: str = "user"
    item_entity: str = "item"
    fg: Path
    trainer: Literal["dnn", "gbdt"]
    samples: SamplesConfig | None = None
    train_rows: Path | None = None
    test_rows: Path | None = None
    # Model output → label column of the rows. A dnn has two heads (ctr, cvr: cvr is learnt
    # as P(conversion | click)); a gbdt trains one model per output.
    labels: dict[str, str] = Field(default_factory=lambda: {"probs_ctr": "clicked"})
    timestamp_column: str = "event_ts"
    dnn: DnnConfig = DnnConfig()
    gbdt: GbdtConfig = GbdtConfig()
    item_embeddings: ItemEmbeddingsConfig | None = None
    description: str = ""

    @model_validator(mode="after")
    def _one_row_source(self) -> TrainingConfig:
        given = self.train_rows is not None and self.test_rows is not None
        if (self.samples is None) == (not given):
            raise ValueError("give either `samples` or both `train_rows` and `test_rows`")
        if (self.train_rows is None) != (self.test_rows is None):
            raise ValueError("`train_rows` and `test_rows` go together")
        if self.trainer == "dnn" and set(self.labels) != {"probs_ctr", "probs_cvr"}:
            raise ValueError("the dnn trainer has two heads: labels needs probs_ctr and probs_cvr")
        if not self.labels:
            raise ValueError("labels must name at least one output")
        if self.item_embeddings is not None and self.trainer != "dnn":
            raise ValueError("item_embeddings: only a dnn learns item embeddings")
        return self

    @property
    def fg_config(self) -> dict[str, Any]:
        return json.loads(self.fg.read_text())

    def generator(self) -> FeatureGenerator:
        return FeatureGenerator.from_config(self.fg_config)


class ConfigError(ValueError):
    """The config file cannot be used; the message names the file and the setting."""


def load(path: Path) -> TrainingConfig:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must be a mapping of settings")
    base = path.resolve().parent
    for key in ("fg", "train_rows", "test_rows"):
        if isinstance(raw.get(key), str):
            raw[key] = base / raw[key]
    embeddings = raw.get("item_embeddings")
    if isinstance(embeddings, dict) and isinstance(embeddings.get("output"), str):
        embeddings["output"] = base / embeddings["output"]
    samples = raw.get("samples")
    if isinstance(samples, dict) and isinstance(samples.get("interactions"), str):
        samples["interactions"] = base / samples["interactions"]
    try:
        config = TrainingConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'config'}: {error['msg']}"
            for error in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from None
    try:
        config.generator()
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: fg {config.fg}: {exc}") from None
    except FeatureConfigError as exc:
        raise ConfigError(f"{config.fg}: {exc}") from None
    if config.item_embeddings is not None:
        try:
            fg_entry(config.fg_config, config.item_embeddings.feature)
        except FeatureConfigError as exc:
            raise ConfigError(f"{path}: item_embeddings.feature: {exc}") from None
    return config
