"""Security regression tests against the four real services, in both runs of the e2e tier:
plain, and `--secure-stack` (TLS and bearer tokens on every service)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from functools import partial

import grpc
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from recstack.common.v1 import time_window_pb2, value_pb2
from recstack.materialization.v1 import job_pb2, materialization_service_pb2_grpc
from recstack.materialization.v1 import materialization_service_pb2 as mpb
from recstack.recommend.v1 import recommend_service_pb2 as cpb
from recstack.recommend.v1 import recommend_service_pb2_grpc
from recstack.registry.v1 import (
    data_source_pb2,
    embedding_model_pb2,
    entity_pb2,
    feature_view_pb2,
    model_feature_set_pb2,
    project_pb2,
    registry_service_pb2_grpc,
)
from recstack.registry.v1 import registry_service_pb2 as rpb
from recstack.serving.v1 import serving_service_pb2 as spb
from recstack.serving.v1 import serving_service_pb2_grpc

from shared.channels import ClientSettings, open_channel
from shared.db import to_libpq
from shared.healthcheck import check
from tests.openai_api import API_KEY, OTHER_SECRETS


@pytest.fixture(scope="module")
def calls(registry_address, materialization_address, serving_address, recommend_address):
    """One cheap read per service: (address, call on a channel)."""
    return [
        (
            registry_address,
            lambda ch: registry_service_pb2_grpc.RegistryServiceStub(ch).ListProjects(
                rpb.ListProjectsRequest(), timeout=10
            ),
        ),
        (
            materialization_address,
            lambda ch: materialization_service_pb2_grpc.MaterializationServiceStub(ch).ListJobs(
                mpb.ListJobsRequest(parent="projects/none/featureViews/none"), timeout=10
            ),
        ),
        (
            serving_address,
            lambda ch: serving_service_pb2_grpc.FeatureServingServiceStub(ch).GetOnlineFeatures(
                spb.GetOnlineFeaturesRequest(project="none", features=["v:f"]), timeout=10
            ),
        ),
        (
            recommend_address,
            lambda ch: recommend_service_pb2_grpc.RecommendServiceStub(ch).ListScenes(
                cpb.ListScenesRequest(), timeout=10
            ),
        ),
    ]


def _code(address, client, call):
    with open_channel(address, client) as channel:
        try:
            call(channel)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def test_only_clients_with_the_stacks_ca_and_token_get_through(calls, stack_security):
    """Secure: plaintext and a wrong CA never connect, no or a wrong token is UNAUTHENTICATED,
    health stays open. Plain: every client gets through."""
    plaintext = ClientSettings(max_attempts=1)
    for address, call in calls:
        assert check(address, client=stack_security.client()) == "SERVING"
        # The stack's own credentials always pass authentication (NOT_FOUND etc. are answers).
        assert _code(address, stack_security.client(), call) not in (
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.UNAVAILABLE,
        )
        if not stack_security.enabled:
            assert _code(address, plaintext, call) != grpc.StatusCode.UNAUTHENTICATED
            continue
        assert _code(address, plaintext, call) == grpc.StatusCode.UNAVAILABLE
        assert check(address) == "UNREACHABLE"
        no_token = stack_security.client(token_file=None)
        assert _code(address, no_token, call) == grpc.StatusCode.UNAUTHENTICATED


# --- credentials: only ever sent where the operator bound them ------------------------------

EM = embedding_model_pb2.EmbeddingModel
FV = feature_view_pb2.FeatureView
VT = value_pb2.ValueType


@pytest.fixture(scope="module")
def registry(registry_address, connect):
    return registry_service_pb2_grpc.RegistryServiceStub(connect(registry_address))


@pytest.fixture(scope="module")
def serving(serving_address, connect):
    return serving_service_pb2_grpc.FeatureServingServiceStub(connect(serving_address))


def _project(registry, prefix):
    project = f"{prefix}_{uuid.uuid4().hex[:8]}"
    registry.CreateProject(
        rpb.CreateProjectRequest(project_id=project, project=project_pb2.Project())
    )
    return project


def _model(**fields):
    return EM(
        model_type=EM.MODEL_TYPE_TEXT_EMBEDDING,
        provider=EM.PROVIDER_OPENAI_COMPATIBLE,
        model_name="text-embedding-v4",
        dimension=8,
        max_retries=0,
        **fields,
    )


def _refused(call, field, reason):
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert f"{field}:" in caught.value.details()
    assert _reason(caught.value) == reason, caught.value.details()


def _reason(error):
    status = rpc_status.from_call(error)
    for detail in status.details if status else []:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return ""


def _push_view(registry, project, view_id, model_id):
    key = feature_view_pb2.FeatureField(name="item_id", value_type=VT.VALUE_TYPE_INT64)
    text = feature_view_pb2.FeatureField(name="review", value_type=VT.VALUE_TYPE_STRING)
    produced = feature_view_pb2.FeatureField(
        name="review_embedding",
        value_type=VT.VALUE_TYPE_FLOAT_LIST,
        production=feature_view_pb2.FeatureProduction(
            transform=feature_view_pb2.FeatureProduction.TRANSFORM_LLM_EMBEDDING,
            input_field="review",
            embedding_model=model_id,
        ),
    )
    registry.Apply(
        rpb.ApplyRequest(
            parent=f"projects/{project}",
            definitions=[
                rpb.Definition(
                    id=f"{view_id}_push",
                    data_source=data_source_pb2.DataSource(
                        push=data_source_pb2.PushSource(schema=[key, text])
                    ),
                ),
                rpb.Definition(
                    id=view_id,
                    feature_view=FV(
                        entity="item",
                        source=f"{view_id}_push",
                        type=FV.TYPE_REAL_TIME,
                        online_enabled=True,
                        fields=[key, text, produced],
                    ),
                ),
            ],
        )
    )


def _push(serving, project, view_id, text):
    row = spb.FeatureRow(
        values={
            "item_id": value_pb2.Value(int64_value=1),
            "review": value_pb2.Value(string_value=text),
        }
    )
    row.event_time.GetCurrentTime()
    request = spb.PushFeaturesRequest(project=project, feature_view=view_id, rows=[row])
    return serving.PushFeatures(iter([request]), timeout=30)


def test_a_catcher_endpoint_never_receives_a_secret_unless_it_is_the_bound_credential(
    registry, serving, embedding_api, database_url, stack_security
):
    project = _project(registry, "catch")
    parent = f"projects/{project}"
    registry.CreateEntity(
        rpb.CreateEntityRequest(
            parent=parent,
            entity_id="item",
            entity=entity_pb2.Entity(join_key="item_id", key_type=VT.VALUE_TYPE_INT64),
        )
    )
    catcher = embedding_api.url

    def create(model_id, model):
        return registry.CreateEmbeddingModel(
            rpb.CreateEmbeddingModelRequest(
                parent=parent, embedding_model_id=model_id, embedding_model=model
            )
        ).embedding_model

    # The old hole: a caller naming any environment variable of the service as the key.
    _refused(
        lambda: create(
            "env", _model(endpoint=f"{catcher}/open", api_key_env="RECSTACK_DATABASE_URL")
        ),
        "embedding_model.api_key_env",
        "API_KEY_ENV_UNSUPPORTED",
    )
    # Declared credentials, but not for this endpoint; and a name nobody declared.
    for credential, endpoint, reason in (
        ("elsewhere_key", f"{catcher}/open", "CREDENTIAL_ENDPOINT_NOT_BOUND"),
        ("test_api_key", f"{catcher}/open", "CREDENTIAL_ENDPOINT_NOT_BOUND"),
        ("test_api_key", f"{catcher}/boundary", "CREDENTIAL_ENDPOINT_NOT_BOUND"),
        ("nobody_declared", f"{catcher}/bound", "CREDENTIAL_NOT_DECLARED"),
    ):
        _refused(
            partial(create, "m", _model(endpoint=endpoint, credential=credential)),
            "embedding_model.credential",
            reason,
        )
    bound = create("bound", _model(endpoint=f"{catcher}/bound", credential="test_api_key"))
    create("open", _model(endpoint=f"{catcher}/open"))
    # The registry's declaration of stale_key still covers this endpoint; the services' no
    # longer does: refused again at call time.
    create("stale", _model(endpoint=f"{catcher}/stale", credential="stale_key"))
    moved = EM()
    moved.CopyFrom(bound)
    moved.endpoint = f"{catcher}/open"
    _refused(
        lambda: registry.UpdateEmbeddingModel(
            rpb.UpdateEmbeddingModelRequest(
                embedding_model=moved, update_mask=field_mask_pb2.FieldMask(paths=["endpoint"])
            )
        ),
        "embedding_model.credential",
        "CREDENTIAL_ENDPOINT_NOT_BOUND",
    )

    marker = uuid.uuid4().hex
    for view_id in ("bound", "open", "stale"):
        _push_view(registry, project, f"{view_id}_reviews", view_id)
    assert _push(serving, project, "bound_reviews", f"{marker} bound").rows_written == 1
    assert _push(serving, project, "open_reviews", f"{marker} open").rows_written == 1
    with pytest.raises(grpc.RpcError) as caught:
        _push(serving, project, "stale_reviews", f"{marker} stale")
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert _reason(caught.value) == "CREDENTIAL_ENDPOINT_NOT_BOUND"

    mine = [r for r in embedding_api.requests if any(marker in text for text in r["body"]["input"])]
    assert {(r["path"], r["auth"]) for r in mine} == {
        ("/bound/v1/embeddings", f"Bearer {API_KEY}"),
        ("/open/v1/embeddings", ""),
    }
    # Nothing the services hold ever reached the catcher, in any request of the session.
    leaked = [database_url, *OTHER_SECRETS]
    if stack_security.enabled:
        leaked.append(stack_security.token)
    seen = repr(embedding_api.requests)
    assert not [secret for secret in leaked if secret in seen]
    stored = registry.GetEmbeddingModel(rpb.GetEmbeddingModelRequest(name=bound.name))
    assert stored.embedding_model.credential == "test_api_key"
    assert API_KEY not in str(stored)


def test_passwords_are_refused_in_source_urls_and_never_returned(registry):
    project = _project(registry, "pw")
    parent = f"projects/{project}"

    def create(url, credential=""):
        source = data_source_pb2.DataSource(
            postgres=data_source_pb2.PostgresSource(url=url, table="t", credential=credential),
            event_timestamp_column="ts",
        )
        return registry.CreateDataSource(
            rpb.CreateDataSourceRequest(parent=parent, data_source_id="db", data_source=source)
        )

    _refused(
        lambda: create("postgresql://app:s3cret@db.example.com/sales"),
        "data_source.postgres.url",
        "SECRET_IN_URL",
    )
    _refused(
        lambda: create("postgresql://app@db.example.com/sales?password=s3cret"),
        "data_source.postgres.url",
        "URL_PARAMETER_NOT_ALLOWED",
    )
    _refused(
        lambda: create("postgresql://app@db.example.com/sales?host=attacker.example.com"),
        "data_source.postgres.url",
        "URL_PARAMETER_NOT_ALLOWED",
    )
    _refused(
        lambda: create("postgresql://app@db.example.com/sales"),
        "data_source.postgres.credential",
        "CREDENTIAL_REQUIRED",
    )
    listed = registry.ListDataSources(rpb.ListDataSourcesRequest(parent=parent))
    assert "s3cret" not in str(listed)


# --- project isolation: POSTGRES sources run under the project's own role -------------------


@pytest.fixture(scope="module")
def materialization(materialization_address, connect):
    return materialization_service_pb2_grpc.MaterializationServiceStub(
        connect(materialization_address)
    )


def _postgres_view(registry, project, view_id, query):
    fields = [
        feature_view_pb2.FeatureField(name="user_id", value_type=VT.VALUE_TYPE_INT64),
        feature_view_pb2.FeatureField(name="note", value_type=VT.VALUE_TYPE_STRING),
    ]
    registry.Apply(
        rpb.ApplyRequest(
            parent=f"projects/{project}",
            definitions=[
                rpb.Definition(
                    id=f"{view_id}_source",
                    data_source=data_source_pb2.DataSource(
                        postgres=data_source_pb2.PostgresSource(query=query),
                        event_timestamp_column="ts",
                    ),
                ),
                rpb.Definition(
                    id=view_id,
                    feature_view=FV(
                        entity="user",
                        source=f"{view_id}_source",
                        type=FV.TYPE_BATCH,
                        fields=fields,
                        online_enabled=True,
                        offline_enabled=True,
                    ),
                ),
            ],
        )
    )


def _backfill(materialization, project, view_id):
    window = time_window_pb2.TimeWindow()
    window.start_time.FromDatetime(datetime(2020, 1, 1, tzinfo=UTC))
    window.end_time.FromDatetime(datetime(2030, 1, 1, tzinfo=UTC))
    name = f"projects/{project}/featureViews/{view_id}"
    [job] = materialization.Backfill(mpb.BackfillRequest(feature_view=name, window=window)).jobs
    for update in materialization.WatchJob(mpb.WatchJobRequest(name=job.name), timeout=120):
        job = update.job
    return job


def test_postgres_sources_cannot_read_server_files_the_registry_or_other_projects(
    registry, materialization, serving, source_roles, database_url
):
    project = _project(registry, "iso")
    other = _project(registry, "iso_other")
    registry.CreateEntity(
        rpb.CreateEntityRequest(
            parent=f"projects/{project}",
            entity_id="user",
            entity=entity_pb2.Entity(join_key="user_id", key_type=VT.VALUE_TYPE_INT64),
        )
    )
    source_roles.grant(project, schema=f"{project}_data")
    source_roles.grant(other, schema=f"{other}_data")
    with psycopg.connect(to_libpq(database_url), autocommit=True) as conn:
        for schema, secret in ((f"{project}_data", "mine"), (f"{other}_data", "theirs")):
            conn.execute(f"CREATE TABLE {schema}.users (user_id bigint, note text, ts timestamptz)")
            conn.execute(f"INSERT INTO {schema}.users VALUES (1, '{secret}', now())")
    attempts = {
        "server_file": (
            "SELECT 1::bigint AS user_id, pg_read_file('/etc/passwd') AS note, now() AS ts",
            "permission denied for function pg_read_file",
        ),
        "registry": (
            "SELECT 1::bigint AS user_id, name AS note, now() AS ts FROM registry.resources",
            "permission denied for schema registry",
        ),
        "other_project": (
            f"SELECT user_id, note, ts FROM {other}_data.users",
            f"permission denied for schema {other}_data",
        ),
    }
    for view_id, (query, refusal) in attempts.items():
        _postgres_view(registry, project, view_id, query)
        job = _backfill(materialization, project, view_id)
        assert job.state == job_pb2.Job.STATE_FAILED, view_id
        assert refusal in job.error_message
        assert "root:" not in job.error_message and "Traceback" not in job.error_message
        features = serving.GetOnlineFeatures(
            spb.GetOnlineFeaturesRequest(
                project=project,
                features=[f"{view_id}:note"],
                entity_keys=[value_pb2.Value(int64_value=1)],
            )
        )
        assert list(features.columns[0].statuses) == [spb.FEATURE_STATUS_NOT_FOUND]
    # What the operator granted the project is read as usual.
    _postgres_view(registry, project, "granted", f"SELECT * FROM {project}_data.users")
    job = _backfill(materialization, project, "granted")
    assert job.state == job_pb2.Job.STATE_SUCCEEDED, job.error_message
    features = serving.GetOnlineFeatures(
        spb.GetOnlineFeaturesRequest(
            project=project, features=["granted:note"], entity_keys=[value_pb2.Value(int64_value=1)]
        )
    )
    assert features.columns[0].values[0].string_value == "mine"


# --- project isolation: FILE sources and exports stay inside the project's roots ------------


def _file_view(registry, project, view_id, path):
    fields = [
        feature_view_pb2.FeatureField(name="user_id", value_type=VT.VALUE_TYPE_INT64),
        feature_view_pb2.FeatureField(name="note", value_type=VT.VALUE_TYPE_STRING),
    ]
    return registry.Apply(
        rpb.ApplyRequest(
            parent=f"projects/{project}",
            definitions=[
                rpb.Definition(
                    id=f"{view_id}_source",
                    data_source=data_source_pb2.DataSource(
                        file=data_source_pb2.FileSource(
                            path=path, format=data_source_pb2.FileSource.FORMAT_PARQUET
                        ),
                        event_timestamp_column="ts",
                    ),
                ),
                rpb.Definition(
                    id=view_id,
                    feature_view=FV(
                        entity="user",
                        source=f"{view_id}_source",
                        type=FV.TYPE_BATCH,
                        fields=fields,
                        online_enabled=True,
                        offline_enabled=True,
                    ),
                ),
            ],
        )
    )


def _user_project(registry, prefix):
    project = _project(registry, prefix)
    registry.CreateEntity(
        rpb.CreateEntityRequest(
            parent=f"projects/{project}",
            entity_id="user",
            entity=entity_pb2.Entity(join_key="user_id", key_type=VT.VALUE_TYPE_INT64),
        )
    )
    return project


def test_file_sources_and_exports_cannot_reach_another_projects_offline_store(
    registry, materialization, serving, offline_store_dir, tmp_path
):
    owner, intruder = _user_project(registry, "files_a"), _user_project(registry, "files_b")
    rows = pa.table(
        {
            "user_id": pa.array([1], pa.int64()),
            "note": ["owner's data"],
            "ts": pa.array([datetime(2026, 1, 1, tzinfo=UTC)], pa.timestamp("us", tz="UTC")),
        }
    )
    (tmp_path / "owner").mkdir()
    pq.write_table(rows, tmp_path / "owner" / "users.parquet")
    _file_view(registry, owner, "users", str(tmp_path / "owner" / "users.parquet"))
    assert _backfill(materialization, owner, "users").state == job_pb2.Job.STATE_SUCCEEDED
    owners_store = offline_store_dir / owner
    assert list(owners_store.rglob("*.parquet"))

    # At create: the other project's part of the offline store, and any `..`.
    for path, reason in (
        (str(owners_store), "PATH_OUTSIDE_ROOTS"),
        (f"{tmp_path}/../{offline_store_dir.name}/{owner}", "PATH_TRAVERSAL"),
        ("/etc/passwd", "PATH_OUTSIDE_ROOTS"),
    ):
        _refused(
            partial(_file_view, registry, intruder, "stolen", path),
            "definitions[0].data_source.file.path",
            reason,
        )
    # The owner may read its own offline data back.
    _file_view(registry, owner, "again", str(owners_store))

    # At read time: a directory that was fine when created, then a link to the owner's data.
    inbox = tmp_path / "intruder"
    inbox.mkdir()
    _file_view(registry, intruder, "linked", str(inbox))
    (inbox / "theirs").symlink_to(owners_store)
    job = _backfill(materialization, intruder, "linked")
    assert job.state == job_pb2.Job.STATE_FAILED
    assert "outside the project's file roots" in job.error_message
    assert str(offline_store_dir) not in job.error_message
    features = serving.GetOnlineFeatures(
        spb.GetOnlineFeaturesRequest(
            project=intruder, features=["linked:note"], entity_keys=[value_pb2.Value(int64_value=1)]
        )
    )
    assert list(features.columns[0].statuses) == [spb.FEATURE_STATUS_NOT_FOUND]

    # Exports: no output into the offline store, no entity rows from another project's part.
    registry.CreateModelFeatureSet(
        rpb.CreateModelFeatureSetRequest(
            parent=f"projects/{owner}",
            model_feature_set_id="set",
            model_feature_set=model_feature_set_pb2.ModelFeatureSet(features=["users:note"]),
        )
    )
    labels = tmp_path / "owner" / "labels.parquet"
    pq.write_table(rows.select(["user_id", "ts"]).rename_columns(["user_id", "event_ts"]), labels)
    for request, field, reason in (
        (
            {"entity_parquet_path": str(labels), "output_path": str(owners_store / "x.parquet")},
            "output_path",
            "PATH_OUTSIDE_ROOTS",
        ),
        (
            {"entity_parquet_path": str(labels), "output_path": "/tmp/../etc/x.parquet"},
            "output_path",
            "PATH_TRAVERSAL",
        ),
    ):
        _refused(
            partial(
                materialization.ExportTrainingSet,
                mpb.ExportTrainingSetRequest(
                    model_feature_set=f"projects/{owner}/modelFeatureSets/set", **request
                ),
            ),
            field,
            reason,
        )
    registry.CreateModelFeatureSet(
        rpb.CreateModelFeatureSetRequest(
            parent=f"projects/{intruder}",
            model_feature_set_id="set",
            model_feature_set=model_feature_set_pb2.ModelFeatureSet(features=["linked:note"]),
        )
    )
    _refused(
        partial(
            materialization.ExportTrainingSet,
            mpb.ExportTrainingSetRequest(
                model_feature_set=f"projects/{intruder}/modelFeatureSets/set",
                entity_parquet_path=str(next(owners_store.rglob("*.parquet"))),
                output_path=str(tmp_path / "intruder.parquet"),
            ),
        ),
        "entity_parquet_path",
        "PATH_OUTSIDE_ROOTS",
    )
