"""Reading YAML feature repositories: aliases, durations, paths and errors that say where."""

from __future__ import annotations

from pathlib import Path

import pytest
from recstack.common.v1 import value_pb2
from recstack.registry.v1 import data_source_pb2, feature_view_pb2

from cli import definitions
from cli.errors import DefinitionError, UsageError
from cli.friendly import FieldError, format_duration, parse_duration

VT = value_pb2.ValueType
FV = feature_view_pb2.FeatureView
ENTITY = "kind: Entity\nid: user\njoin_key: user_id\nkey_type: INT64\n"


def repo(root: Path, files: dict[str, str], project: str | None = "shop") -> Path:
    if project:
        (root / "recstack.yaml").write_text(f"project: {project}\n")
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def view(fields: str, **extra: str) -> str:
    lines = ["kind: FeatureView", "id: v", "entity: user", "type: BATCH", "source: s"]
    lines += [f"{key}: {value}" for key, value in extra.items()]
    return "\n".join([*lines, "fields:", fields]) + "\n"


def only(root: Path, text: str):
    """The one resource message a single-document repository declares."""
    loaded = definitions.load(repo(root, {"defs.yaml": text}))
    (definition,) = loaded.definitions
    return getattr(definition, definition.WhichOneof("resource"))


def load_error(root: Path, files: dict[str, str]) -> str:
    with pytest.raises(DefinitionError) as caught:
        definitions.load(repo(root, files))
    return str(caught.value)


def test_every_kind_loads_from_multi_document_files_in_file_order(tmp_path):
    loaded = definitions.load(
        repo(
            tmp_path,
            {
                "a.yaml": ENTITY + "---\n" + ENTITY.replace("user", "item") + "---\n",
                "sub/b.yml": (
                    "kind: DataSource\nid: s\npush: {schema: [{name: user_id, value_type: INT64}]}"
                    "\n---\nkind: EmbeddingModel\nid: m\nmodel_type: TEXT_EMBEDDING\n"
                    "provider: OPENAI_COMPATIBLE\nmodel_name: text-embedding-v4\n"
                ),
                "c.yaml": view("  - {name: user_id, value_type: INT64}")
                + "---\nkind: ModelFeatureSet\nid: f\nfeatures: ['v:*']\nlabel: clicked\n",
                "notes.txt": "kind: Entity\n",
            },
        )
    )
    assert loaded.project == "shop"
    assert [d.WhichOneof("resource") for d in loaded.definitions] == [
        "entity",
        "entity",
        "feature_view",
        "model_feature_set",
        "data_source",
        "embedding_model",
    ]
    assert [d.id for d in loaded.definitions] == ["user", "item", "v", "f", "s", "m"]
    assert str(loaded.origins[1]) == f"{tmp_path / 'a.yaml'} document 2 (Entity item)"


@pytest.mark.parametrize(
    ("spelling", "value_type"),
    [
        ("INT64", VT.VALUE_TYPE_INT64),
        ("FLOAT", VT.VALUE_TYPE_FLOAT),
        ("DOUBLE", VT.VALUE_TYPE_DOUBLE),
        ("STRING", VT.VALUE_TYPE_STRING),
        ("BOOL", VT.VALUE_TYPE_BOOL),
        ("BYTES", VT.VALUE_TYPE_BYTES),
        ("ARRAY<FLOAT>", VT.VALUE_TYPE_FLOAT_LIST),
        ("ARRAY<DOUBLE>", VT.VALUE_TYPE_DOUBLE_LIST),
        ("ARRAY<INT64>", VT.VALUE_TYPE_INT64_LIST),
        ("ARRAY<STRING>", VT.VALUE_TYPE_STRING_LIST),
        ("MAP<STRING,STRING>", VT.VALUE_TYPE_STRING_STRING_MAP),
        ("'MAP<STRING, DOUBLE>'", VT.VALUE_TYPE_STRING_DOUBLE_MAP),
        ("array<float>", VT.VALUE_TYPE_FLOAT_LIST),
        ("double", VT.VALUE_TYPE_DOUBLE),
        ("FLOAT_LIST", VT.VALUE_TYPE_FLOAT_LIST),
        ("VALUE_TYPE_STRING", VT.VALUE_TYPE_STRING),
    ],
)
def test_value_type_aliases(tmp_path, spelling, value_type):
    loaded = only(tmp_path, view(f"  - name: x\n    value_type: {spelling}"))
    assert loaded.fields[0].value_type == value_type


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [("BATCH", FV.TYPE_BATCH), ("REAL_TIME", FV.TYPE_REAL_TIME), ("real-time", FV.TYPE_REAL_TIME)],
)
def test_view_type_short_names(tmp_path, spelling, expected):
    text = view("  - {name: user_id, value_type: INT64}").replace("BATCH", spelling)
    assert only(tmp_path, text).type == expected


def test_short_enum_names_in_nested_messages(tmp_path):
    loaded = only(
        tmp_path,
        view(
            "  - name: emb\n    value_type: ARRAY<FLOAT>\n    production:\n"
            "      transform: LLM_EMBEDDING\n      input_field: text\n"
            "      multimodal_type: TEXT\n      embedding_model: m",
            transformation=(
                "{aggregations: {aggregations: "
                "[{function: COUNT, column: x, window: 7d, output: n}]}}"
            ),
        ),
    )
    production = loaded.fields[0].production
    assert production.transform == feature_view_pb2.FeatureProduction.TRANSFORM_LLM_EMBEDDING
    assert production.multimodal_type == feature_view_pb2.FeatureProduction.MULTIMODAL_TYPE_TEXT
    aggregation = loaded.transformation.aggregations.aggregations[0]
    assert aggregation.function == feature_view_pb2.Aggregation.FUNCTION_COUNT
    assert aggregation.window.seconds == 7 * 86400


def test_embedding_model_and_file_source_enums(tmp_path):
    model = only(
        tmp_path,
        "kind: EmbeddingModel\nid: m\nmodel_type: TEXT_EMBEDDING\nprovider: TRITON\n"
        "model_name: minilm\ndimension: 384\n",
    )
    assert (model.model_type, model.provider, model.dimension) == (1, 1, 384)
    source = only(
        tmp_path / "",
        "kind: DataSource\nid: s\nfile: {path: /d/x.csv, format: csv}\n"
        "event_timestamp_column: ts\n",
    )
    assert source.file.format == data_source_pb2.FileSource.FORMAT_CSV


@pytest.mark.parametrize(
    ("text", "proto"),
    [
        ("7d", "604800s"),
        ("24h", "86400s"),
        ("30m", "1800s"),
        ("45s", "45s"),
        ("1h30m", "5400s"),
        ("1d12h", "129600s"),
        ("0", "0s"),
        ("1.5s", "1.5s"),
        ("3600s", "3600s"),
        ("-1d", "-86400s"),
    ],
)
def test_durations(text, proto):
    assert parse_duration(text) == proto


@pytest.mark.parametrize("text", ["7", "7w", "d", "1d 2h", "", 3600, None, "2h1d"])
def test_bad_durations(text):
    with pytest.raises(FieldError, match=r"is not a duration; write e\.g\. 7d"):
        parse_duration(text, "ttl")


@pytest.mark.parametrize(
    ("proto", "text"),
    [("604800s", "7d"), ("90000s", "25h"), ("1800s", "30m"), ("61s", "61s"), ("0s", "0s")],
)
def test_durations_for_display(proto, text):
    assert format_duration(proto) == text
    assert format_duration("1.500s") == "1.500s"


def test_ttl_duration_in_a_view(tmp_path):
    loaded = only(tmp_path, view("  - {name: user_id, value_type: INT64}", ttl="36h"))
    assert loaded.ttl.seconds == 36 * 3600


def test_relative_file_path_resolves_against_the_yaml_file(tmp_path):
    text = "kind: DataSource\nid: s\nfile: {path: %s, format: PARQUET}\nevent_timestamp_column: t\n"
    loaded = definitions.load(
        repo(
            tmp_path,
            {
                "nested/rel.yaml": text.replace("id: s", "id: rel") % "../data/x.parquet",
                "glob.yaml": text.replace("id: s", "id: glob") % "'data/*.parquet'",
                "abs.yaml": text.replace("id: s", "id: abs") % "/srv/x.parquet",
                "url.yaml": text.replace("id: s", "id: url") % "s3://bucket/x/",
            },
        )
    )
    paths = {d.id: d.data_source.file.path for d in loaded.definitions}
    assert paths == {
        "rel": str(tmp_path.resolve() / "data" / "x.parquet"),
        "glob": str(tmp_path.resolve() / "data" / "*.parquet"),
        "abs": "/srv/x.parquet",
        "url": "s3://bucket/x/",
    }


def test_camel_case_keys_are_proto_json_too(tmp_path):
    loaded = only(tmp_path, "kind: Entity\nid: u\njoinKey: user_id\nkeyType: STRING\n")
    assert (loaded.join_key, loaded.key_type) == ("user_id", VT.VALUE_TYPE_STRING)


def test_project_flag_overrides_config_and_a_single_file_works(tmp_path):
    root = repo(tmp_path, {"e.yaml": ENTITY})
    assert definitions.load(root, "other").project == "other"
    assert definitions.load(root / "e.yaml").project == "shop"


def test_missing_project_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no project: pass --project"):
        definitions.load(repo(tmp_path, {"e.yaml": ENTITY}, project=None))


def test_hidden_directories_and_the_config_file_are_not_definitions(tmp_path):
    loaded = definitions.load(repo(tmp_path, {"e.yaml": ENTITY, ".venv/x.yaml": "kind: Nope\n"}))
    assert [d.id for d in loaded.definitions] == ["user"]


def test_locate_maps_definition_indexes_to_origins(tmp_path):
    loaded = definitions.load(repo(tmp_path, {"e.yaml": ENTITY}))
    assert loaded.locate("definitions[0].id") == f"{tmp_path / 'e.yaml'} document 1 (Entity user)"
    assert loaded.locate("definitions[5].id") is None
    assert loaded.locate("feature_view.fields") is None


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        (
            view("  - {name: user_id, vaue_type: INT64}"),
            "document 1 (FeatureView v): fields[0].vaue_type:",
            "unknown field of FeatureField; did you mean 'value_type'?",
        ),
        (
            ENTITY + "ttl: 7d\n",
            "document 1 (Entity user): ttl:",
            "unknown field of Entity",
        ),
        (
            view("  - {name: x, value_type: INT32}"),
            "document 1 (FeatureView v): fields[0].value_type:",
            "'INT32' is not one of INT64, FLOAT, DOUBLE",
        ),
        (
            view("  - {name: x, value_type: INT64}", ttl="1 week"),
            "document 1 (FeatureView v): ttl:",
            "'1 week' is not a duration",
        ),
        (
            view("  name: x"),
            "document 1 (FeatureView v): fields:",
            "expected a list",
        ),
        (
            "kind: EmbeddingModel\nid: m\ndimension: big\n",
            "document 1 (EmbeddingModel m):",
            "invalid literal for int() with base 10: 'big'",
        ),
        (
            "kind: EmbeddingModel\nid: m\ndimension: 1.5\n",
            "document 1 (EmbeddingModel m): dimension:",
            "expected a whole number, got 1.5",
        ),
        (
            view("  - {name: 5, value_type: INT64}"),
            "document 1 (FeatureView v): fields[0].name:",
            "expected a string (quote values such as 123 or yes), got 5",
        ),
        (
            view("  - {name: x, value_type: INT64}", online_enabled="1"),
            "document 1 (FeatureView v): online_enabled:",
            "expected true or false, got 1",
        ),
        (
            view("  - {name: x, value_type: INT64}", tags="{team: 7}"),
            "document 1 (FeatureView v):",
            "tags",
        ),
        (
            "kind: DataSource\nid: s\nfile: {path: a}\npush: {schema: []}\n",
            "document 1 (DataSource s):",
            "oneof",
        ),
        (ENTITY + "etag: abc\n", "document 1 (Entity user): etag:", "is output only"),
        ("kind: Entiti\nid: x\n", "document 1:", "did you mean 'Entity'?"),
        ("id: x\n", "document 1:", "`kind` is required: one of Entity, DataSource"),
        ("kind: Entity\njoin_key: x\n", "document 1:", "`id` is required"),
        ("kind: Entity\nid: 7\n", "document 1:", "`id` is required and must be a string"),
        ("- just\n- a list\n", "document 1:", "a definition must be a mapping"),
        ("kind: Entity\nid: Item\n", "document 1 (Entity Item): id:", "'Item' is not a valid id"),
    ],
)
def test_errors_name_file_document_and_field(tmp_path, text, where, message):
    error = load_error(tmp_path, {"defs.yaml": ENTITY.replace("user", "ok") + "---\n" + text})
    located = where.replace("document 1", "document 2")
    assert error.startswith(f"{tmp_path / 'defs.yaml'} {located}"), error
    assert message in error


def test_yaml_syntax_error_names_the_file_and_line(tmp_path):
    error = load_error(tmp_path, {"bad.yaml": "kind: Entity\nid: [unclosed\n"})
    assert error.startswith(f"{tmp_path / 'bad.yaml'}: is not valid YAML")
    assert "line 2" in error


def test_the_same_resource_twice_names_both_places(tmp_path):
    error = load_error(tmp_path, {"a.yaml": ENTITY, "b.yaml": ENTITY})
    assert error == (
        f"{tmp_path / 'b.yaml'} document 1 (Entity user): Entity 'user' is already defined "
        f"in {tmp_path / 'a.yaml'} document 1 (Entity user)"
    )


def test_an_empty_repository_is_an_error_not_a_prune_of_everything(tmp_path):
    error = load_error(tmp_path, {"empty.yaml": "---\n"})
    assert "holds no definitions" in error


def test_config_file_must_hold_only_the_project(tmp_path):
    (tmp_path / "recstack.yaml").write_text("project: shop\nregion: eu\n")
    with pytest.raises(DefinitionError, match="must be one mapping with the key `project`"):
        definitions.load(tmp_path)


def test_missing_directory_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        definitions.load(tmp_path / "nope")


def test_project_ids_follow_the_registry_rule(tmp_path):
    root = repo(tmp_path, {"e.yaml": ENTITY})
    with pytest.raises(UsageError, match="--project 'Bad-Name' is not a valid project id"):
        definitions.load(root, "Bad-Name")
    (root / "recstack.yaml").write_text("project: 7shop\n")
    with pytest.raises(
        DefinitionError, match=r"recstack\.yaml: project: '7shop' is not a valid id"
    ):
        definitions.load(root)


def test_scenes_and_experiments_are_read_beside_the_registry_definitions(tmp_path):
    (tmp_path / "recstack.yaml").write_text("project: shop\n")
    (tmp_path / "defs.yaml").write_text(
        "kind: Entity\nid: user\njoin_key: user_id\nkey_type: INT64\n---\n"
        "kind: Experiment\nid: ab\nscene: home\nvariants: [{name: a, bucket_end: 50, "
        "overrides: {rank: {model: other}}}]\n---\n"
        "kind: Scene\nid: home\nuser_entity: user\nitem_entity: item\n"
        "recalls: [{type: popularity, quota: 9, params: {feature_view: v, feature: f}}]\n"
    )

    repo = definitions.load(tmp_path)

    assert [d.WhichOneof("resource") for d in repo.definitions] == ["entity"]
    assert [item.origin.kind for item in repo.served] == ["Scene", "Experiment"]  # scenes first
    scene = repo.served[0].spec
    assert scene.recalls[0].params["feature_view"] == "v"
    assert repo.served[1].spec.variants[0].overrides["rank"]["model"] == "other"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("kind: Scene\nid: home\netag: x\n", "etag: is output only"),
        ("kind: Scene\nid: home\nrecals: []\n", "did you mean 'recalls'"),
        ("kind: Scene\nid: Home\n", "`id` is required"),
    ],
)
def test_bad_scene_documents_name_the_file_and_field(tmp_path, document, message):
    (tmp_path / "recstack.yaml").write_text("project: shop\n")
    (tmp_path / "scenes.yaml").write_text(document)

    with pytest.raises(DefinitionError, match=message):
        definitions.load(tmp_path)
