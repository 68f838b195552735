"""Invalid registry requests over gRPC: each gets the right code and writes nothing.

"Writes nothing" is checked against the registry's change log: its head revision must not
move while a rejected request is processed.
"""

from __future__ import annotations

import threading
import uuid

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2
from recstack.common.v1 import value_pb2
from recstack.registry.v1 import (
    data_source_pb2,
    embedding_model_pb2,
    entity_pb2,
    feature_view_pb2,
    model_feature_set_pb2,
    model_pb2,
    project_pb2,
    registry_service_pb2_grpc,
)
from recstack.registry.v1 import registry_service_pb2 as pb

VT = value_pb2.ValueType
FV = feature_view_pb2.FeatureView
FF = feature_view_pb2.FeatureField
EM = embedding_model_pb2.EmbeddingModel
DS = data_source_pb2.DataSource
FILE = data_source_pb2.FileSource
P = "projects/bad"
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND


@pytest.fixture(scope="module")
def stub(registry_address, connect):
    with connect(registry_address) as channel:
        stub = registry_service_pb2_grpc.RegistryServiceStub(channel)
        stub.Apply(
            pb.ApplyRequest(
                parent=P,
                definitions=[
                    pb.Definition(
                        id="user",
                        entity=entity_pb2.Entity(join_key="user_id", key_type=VT.VALUE_TYPE_INT64),
                    ),
                    pb.Definition(
                        id="events",
                        data_source=DS(
                            file=FILE(path="data/e.parquet", format=FILE.FORMAT_PARQUET),
                            event_timestamp_column="ts",
                        ),
                    ),
                    pb.Definition(id="profile", feature_view=_view()),
                    pb.Definition(
                        id="profile_features",
                        model_feature_set=model_feature_set_pb2.ModelFeatureSet(
                            features=["profile:*"]
                        ),
                    ),
                    pb.Definition(id="ranker", model=model_pb2.Model(description="CTR")),
                    pb.Definition(
                        id="minilm",
                        embedding_model=EM(
                            model_type=EM.MODEL_TYPE_TEXT_EMBEDDING,
                            provider=EM.PROVIDER_TRITON,
                            model_name="minilm",
                            dimension=384,
                        ),
                    ),
                ],
            )
        )
        yield stub


def _view(**changes):
    fields = changes.pop(
        "fields",
        [
            FF(name="user_id", value_type=VT.VALUE_TYPE_INT64),
            FF(name="age", value_type=VT.VALUE_TYPE_DOUBLE),
        ],
    )
    return FV(**({"entity": "user", "type": FV.TYPE_REAL_TIME, "fields": fields} | changes))


def _embedding_field(model="minilm", value_type=VT.VALUE_TYPE_FLOAT_LIST):
    production = feature_view_pb2.FeatureProduction(
        transform=feature_view_pb2.FeatureProduction.TRANSFORM_LLM_EMBEDDING,
        input_field="review",
        multimodal_type=feature_view_pb2.FeatureProduction.MULTIMODAL_TYPE_TEXT,
        embedding_model=model,
    )
    return [
        FF(name="user_id", value_type=VT.VALUE_TYPE_INT64),
        FF(name="review", value_type=VT.VALUE_TYPE_STRING),
        FF(name="review_embedding", value_type=value_type, production=production),
    ]


def _count_by_value(column, value_type=VT.VALUE_TYPE_STRING_DOUBLE_MAP):
    aggregation = AGG(
        function=AGG.FUNCTION_COUNT_BY_VALUE,
        column=column,
        output="genre_counts",
        window=duration_pb2.Duration(seconds=86400),
    )
    return _view(
        fields=[
            FF(name="user_id", value_type=VT.VALUE_TYPE_INT64),
            FF(name="genre_counts", value_type=value_type),
        ],
        transformation=SQL(aggregations=feature_view_pb2.Aggregations(aggregations=[aggregation])),
    )


def _create_view(view):
    return (
        "CreateFeatureView",
        pb.CreateFeatureViewRequest(parent=P, feature_view_id="v", feature_view=view),
    )


def _model(**changes):
    fields = {
        "model_type": EM.MODEL_TYPE_TEXT_EMBEDDING,
        "provider": EM.PROVIDER_OPENAI_COMPATIBLE,
        "model_name": "text-embedding-v4",
    }
    return (
        "CreateEmbeddingModel",
        pb.CreateEmbeddingModelRequest(
            parent=P, embedding_model_id="m", embedding_model=EM(**(fields | changes))
        ),
    )


def _source(source):
    return (
        "CreateDataSource",
        pb.CreateDataSourceRequest(parent=P, data_source_id="s", data_source=source),
    )


def _feature_set(*features):
    return (
        "CreateModelFeatureSet",
        pb.CreateModelFeatureSetRequest(
            parent=P,
            model_feature_set_id="fs",
            model_feature_set=model_feature_set_pb2.ModelFeatureSet(features=features),
        ),
    )


def _model_version(parent=f"{P}/models/ranker", expression="user:age", **changes):
    fields = {"model_feature_set": f"{P}/modelFeatureSets/profile_features"} | changes
    version = model_pb2.ModelVersion(
        signature=model_pb2.ModelSignature(
            inputs=[model_pb2.TensorSpec(name="age", data_type="TYPE_FP32", dims=[1])],
            outputs=[model_pb2.TensorSpec(name="probs_ctr", data_type="TYPE_FP32", dims=[1])],
        ),
        **fields,
    )
    version.fg_config.update(
        {
            "features": [
                {"feature_type": "raw_feature", "feature_name": "age", "expression": expression}
            ]
        }
    )
    return (
        "CreateModelVersion",
        pb.CreateModelVersionRequest(parent=parent, model_version=version),
    )


SQL = feature_view_pb2.Transformation
AGG = feature_view_pb2.Aggregation
CASES = {
    "model version of an unknown model": (
        _model_version(parent=f"{P}/models/nope"),
        NOT_FOUND,
        "projects/bad/models/nope",
    ),
    "model version parent not a model": (_model_version(parent=P), INVALID, "parent"),
    "model version without feature set": (
        _model_version(model_feature_set=""),
        INVALID,
        "model_version.model_feature_set",
    ),
    "model version with an unknown feature set": (
        _model_version(model_feature_set=f"{P}/modelFeatureSets/nope"),
        NOT_FOUND,
        "model_version.model_feature_set",
    ),
    "model version fg naming a missing feature": (
        _model_version(expression="user:height"),
        INVALID,
        "model_version.fg_config.features[0].expression",
    ),
    "model version fg with an unknown side": (
        _model_version(expression="session:age"),
        INVALID,
        "model_version.fg_config.features[0].expression",
    ),
    "model version with an infinite metric": (
        _model_version(metrics={"probs_ctr_auc": float("inf")}),
        INVALID,
        "model_version.metrics.probs_ctr_auc",
    ),
    "model version name without a number": (
        ("DeployModelVersion", pb.DeployModelVersionRequest(name=f"{P}/models/ranker/versions/0")),
        INVALID,
        "name",
    ),
    "unknown model version": (
        (
            "ActivateModelVersion",
            pb.ActivateModelVersionRequest(name=f"{P}/models/ranker/versions/9"),
        ),
        NOT_FOUND,
        "projects/bad/models/ranker/versions/9",
    ),
    "rollback of an unknown model": (
        ("RollbackModel", pb.RollbackModelRequest(name=f"{P}/models/nope")),
        NOT_FOUND,
        "projects/bad/models/nope",
    ),
    "rollback with no previous version": (
        ("RollbackModel", pb.RollbackModelRequest(name=f"{P}/models/ranker")),
        grpc.StatusCode.FAILED_PRECONDITION,
        "no previous version",
    ),
    "model update of the active version": (
        (
            "UpdateModel",
            pb.UpdateModelRequest(
                model=model_pb2.Model(name=f"{P}/models/ranker", active_version=3),
                update_mask=field_mask_pb2.FieldMask(paths=["active_version"]),
            ),
        ),
        INVALID,
        "output only",
    ),
    "model versions page token from elsewhere": (
        (
            "ListModelVersions",
            pb.ListModelVersionsRequest(parent=f"{P}/models/ranker", page_token="cHJvZmlsZQ=="),
        ),
        INVALID,
        "page_token",
    ),
    "project id uppercase": (
        ("CreateProject", pb.CreateProjectRequest(project_id="Bad", project=project_pb2.Project())),
        INVALID,
        "project_id",
    ),
    "parent not a name": (
        (
            "CreateEntity",
            pb.CreateEntityRequest(
                parent="bad",
                entity_id="e",
                entity=entity_pb2.Entity(join_key="k", key_type=VT.VALUE_TYPE_INT64),
            ),
        ),
        INVALID,
        "parent",
    ),
    "unknown project": (
        (
            "CreateEntity",
            pb.CreateEntityRequest(
                parent="projects/nope",
                entity_id="e",
                entity=entity_pb2.Entity(join_key="k", key_type=VT.VALUE_TYPE_INT64),
            ),
        ),
        NOT_FOUND,
        "projects/nope",
    ),
    "entity without join key": (
        (
            "CreateEntity",
            pb.CreateEntityRequest(
                parent=P, entity_id="e", entity=entity_pb2.Entity(key_type=VT.VALUE_TYPE_INT64)
            ),
        ),
        INVALID,
        "entity.join_key",
    ),
    "entity double key": (
        (
            "CreateEntity",
            pb.CreateEntityRequest(
                parent=P,
                entity_id="e",
                entity=entity_pb2.Entity(join_key="k", key_type=VT.VALUE_TYPE_DOUBLE),
            ),
        ),
        INVALID,
        "entity.key_type",
    ),
    "duplicate entity": (
        (
            "CreateEntity",
            pb.CreateEntityRequest(
                parent=P,
                entity_id="user",
                entity=entity_pb2.Entity(join_key="user_id", key_type=VT.VALUE_TYPE_INT64),
            ),
        ),
        grpc.StatusCode.ALREADY_EXISTS,
        "user",
    ),
    "source without kind": (_source(DS(event_timestamp_column="ts")), INVALID, "data_source"),
    "file source without path": (
        _source(DS(file=FILE(format=FILE.FORMAT_PARQUET), event_timestamp_column="ts")),
        INVALID,
        "data_source.file.path",
    ),
    "file source without format": (
        _source(DS(file=FILE(path="x"), event_timestamp_column="ts")),
        INVALID,
        "data_source.file.format",
    ),
    "postgres table and query": (
        _source(
            DS(
                postgres=data_source_pb2.PostgresSource(table="t", query="select 1"),
                event_timestamp_column="ts",
            )
        ),
        INVALID,
        "data_source.postgres",
    ),
    "source without timestamp column": (
        _source(DS(file=FILE(path="x", format=FILE.FORMAT_CSV))),
        INVALID,
        "data_source.event_timestamp_column",
    ),
    "view of unknown entity": (
        _create_view(
            FV(
                entity="nope",
                type=FV.TYPE_REAL_TIME,
                fields=[FF(name="a", value_type=VT.VALUE_TYPE_INT64)],
            )
        ),
        NOT_FOUND,
        "feature_view.entity",
    ),
    "batch view without source": (
        _create_view(_view(type=FV.TYPE_BATCH)),
        INVALID,
        "feature_view.source",
    ),
    "view of unknown source": (
        _create_view(_view(type=FV.TYPE_BATCH, source="nope")),
        NOT_FOUND,
        "feature_view.source",
    ),
    "duplicate field": (
        _create_view(
            _view(
                fields=[
                    FF(name="user_id", value_type=VT.VALUE_TYPE_INT64),
                    FF(name="user_id", value_type=VT.VALUE_TYPE_INT64),
                ]
            )
        ),
        INVALID,
        "feature_view.fields[1].name",
    ),
    "no join key field": (
        _create_view(_view(fields=[FF(name="age", value_type=VT.VALUE_TYPE_DOUBLE)])),
        INVALID,
        "feature_view.fields",
    ),
    "join key of wrong type": (
        _create_view(
            _view(
                fields=[
                    FF(name="user_id", value_type=VT.VALUE_TYPE_STRING),
                    FF(name="a", value_type=VT.VALUE_TYPE_DOUBLE),
                ]
            )
        ),
        INVALID,
        "feature_view.fields.user_id",
    ),
    "negative ttl": (
        _create_view(_view(ttl=duration_pb2.Duration(seconds=-5))),
        INVALID,
        "feature_view.ttl",
    ),
    "field name uppercase": (
        _create_view(
            _view(
                fields=[
                    FF(name="user_id", value_type=VT.VALUE_TYPE_INT64),
                    FF(name="Age", value_type=VT.VALUE_TYPE_DOUBLE),
                ]
            )
        ),
        INVALID,
        "feature_view.fields[1].name",
    ),
    "field without type": (
        _create_view(
            _view(fields=[FF(name="user_id", value_type=VT.VALUE_TYPE_INT64), FF(name="age")])
        ),
        INVALID,
        "feature_view.fields[1].value_type",
    ),
    "embedding of unknown model": (
        _create_view(_view(fields=_embedding_field(model="nope"))),
        NOT_FOUND,
        "feature_view.fields[2].production",
    ),
    "embedding not a float list": (
        _create_view(_view(fields=_embedding_field(value_type=VT.VALUE_TYPE_DOUBLE_LIST))),
        INVALID,
        "feature_view.fields[2].production",
    ),
    "sql that does not parse": (
        _create_view(_view(transformation=SQL(sql="SELEC user_id FROM source"))),
        INVALID,
        "feature_view.transformation.sql",
    ),
    "sql that is not a select": (
        _create_view(_view(transformation=SQL(sql="DELETE FROM source"))),
        INVALID,
        "feature_view.transformation.sql",
    ),
    "aggregation without window": (
        _create_view(
            _view(
                transformation=SQL(
                    aggregations=feature_view_pb2.Aggregations(
                        aggregations=[AGG(function=AGG.FUNCTION_SUM, column="x", output="age")]
                    )
                )
            )
        ),
        INVALID,
        "feature_view.transformation.aggregations[0].window",
    ),
    "aggregation into undeclared field": (
        _create_view(
            _view(
                transformation=SQL(
                    aggregations=feature_view_pb2.Aggregations(
                        aggregations=[
                            AGG(
                                function=AGG.FUNCTION_SUM,
                                column="x",
                                output="total",
                                window=duration_pb2.Duration(seconds=86400),
                            )
                        ]
                    )
                )
            )
        ),
        INVALID,
        "feature_view.transformation.aggregations",
    ),
    "count by value into a field that is no map": (
        _create_view(_count_by_value(column="genres", value_type=VT.VALUE_TYPE_INT64)),
        INVALID,
        "feature_view.transformation.aggregations[0].output",
    ),
    "count by value of every column": (
        _create_view(_count_by_value(column="*")),
        INVALID,
        "feature_view.transformation.aggregations[0].column",
    ),
    "model batch size too large": (_model(batch_size=5000), INVALID, "embedding_model.batch_size"),
    "model dimension too large": (_model(dimension=20000), INVALID, "embedding_model.dimension"),
    "model without provider": (
        _model(provider=EM.PROVIDER_UNSPECIFIED),
        INVALID,
        "embedding_model.provider",
    ),
    "model without name": (_model(model_name=""), INVALID, "embedding_model.model_name"),
    "feature set without features": (_feature_set(), INVALID, "model_feature_set.features"),
    "feature set of unknown view": (
        _feature_set("nope:age"),
        NOT_FOUND,
        "model_feature_set.features[0]",
    ),
    "feature set with bad ref": (_feature_set("profile"), INVALID, "model_feature_set.features[0]"),
    "feature set with unknown feature": (
        _feature_set("profile:height"),
        INVALID,
        "model_feature_set.features[0]",
    ),
    "get with bad name": (
        ("GetEntity", pb.GetEntityRequest(name="entities/user")),
        INVALID,
        "name",
    ),
    "get negative version": (
        ("GetFeatureView", pb.GetFeatureViewRequest(name=f"{P}/featureViews/profile", version=-1)),
        INVALID,
        "version",
    ),
    "get missing version": (
        ("GetFeatureView", pb.GetFeatureViewRequest(name=f"{P}/featureViews/profile", version=9)),
        NOT_FOUND,
        "version 9",
    ),
    "negative page size": (
        ("ListEntities", pb.ListEntitiesRequest(parent=P, page_size=-1)),
        INVALID,
        "page_size",
    ),
    "forged page token": (
        ("ListEntities", pb.ListEntitiesRequest(parent=P, page_token="???")),
        INVALID,
        "page_token",
    ),
    "filter on unknown field": (
        ("ListEntities", pb.ListEntitiesRequest(parent=P, filter="colour=red")),
        INVALID,
        "filter",
    ),
    "filter that does not parse": (
        ("ListEntities", pb.ListEntitiesRequest(parent=P, filter="join_key ~ x")),
        INVALID,
        "filter",
    ),
    "update output-only field": (
        (
            "UpdateEntity",
            pb.UpdateEntityRequest(
                entity=entity_pb2.Entity(name=f"{P}/entities/user"),
                update_mask=field_mask_pb2.FieldMask(paths=["create_time"]),
            ),
        ),
        INVALID,
        "update_mask",
    ),
    "update with stale etag": (
        (
            "UpdateEntity",
            pb.UpdateEntityRequest(
                entity=entity_pb2.Entity(name=f"{P}/entities/user", etag="stale"),
                update_mask=field_mask_pb2.FieldMask(paths=["description"]),
            ),
        ),
        grpc.StatusCode.ABORTED,
        "etag",
    ),
    "delete entity in use": (
        ("DeleteEntity", pb.DeleteEntityRequest(name=f"{P}/entities/user")),
        grpc.StatusCode.FAILED_PRECONDITION,
        "featureViews/profile",
    ),
    "apply declaring an id twice": (
        (
            "Apply",
            pb.ApplyRequest(
                parent=P,
                definitions=[
                    pb.Definition(
                        id="x",
                        entity=entity_pb2.Entity(join_key="x_id", key_type=VT.VALUE_TYPE_INT64),
                    )
                ]
                * 2,
            ),
        ),
        INVALID,
        "definitions[1].id",
    ),
    "apply with one invalid definition": (
        (
            "Apply",
            pb.ApplyRequest(
                parent=P,
                definitions=[
                    pb.Definition(
                        id="item",
                        entity=entity_pb2.Entity(join_key="item_id", key_type=VT.VALUE_TYPE_INT64),
                    ),
                    pb.Definition(
                        id="bad_view", feature_view=FV(entity="item", type=FV.TYPE_REAL_TIME)
                    ),
                ],
            ),
        ),
        INVALID,
        "feature_view.fields",
    ),
}


def _head(stub):
    return stub.ListChanges(pb.ListChangesRequest(page_size=1)).head_revision


@pytest.mark.parametrize("case", sorted(CASES))
def test_invalid_request_is_rejected_and_writes_nothing(stub, case):
    (method, request), code, mentioned = CASES[case]
    before = _head(stub)
    with pytest.raises(grpc.RpcError) as caught:
        getattr(stub, method)(request)
    assert caught.value.code() == code, caught.value.details()
    assert mentioned in caught.value.details()
    assert _head(stub) == before


def test_concurrent_creates_of_one_name_give_one_already_exists(registry_address, connect):
    project = f"race_{uuid.uuid4().hex[:8]}"
    results: list[grpc.StatusCode] = []
    with connect(registry_address) as channel:
        stub = registry_service_pb2_grpc.RegistryServiceStub(channel)
        barrier = threading.Barrier(4)

        def create():
            barrier.wait()
            try:
                stub.CreateProject(
                    pb.CreateProjectRequest(project_id=project, project=project_pb2.Project())
                )
                results.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                results.append(exc.code())

        threads = [threading.Thread(target=create) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sorted(results, key=lambda code: code.name) == [grpc.StatusCode.ALREADY_EXISTS] * 3 + [
        grpc.StatusCode.OK
    ]
