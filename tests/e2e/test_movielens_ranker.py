"""The MovieLens ranker end to end: `recstack train` (dnn) on features the platform
materialized, the version deployed to Triton and activated, a scene of four recalls (vector
over the ranker's item embeddings, item-to-item, category affinity, popular) ranked by it,
each recall checked against the features it reads, offline and online features identical
(`recstack fg check`), and activation and rollback under traffic.

A deterministic tenth of the users (every 10th) keeps it fast; `make train` runs the same on
the full data.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
import uuid
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from recstack.common.v1 import value_pb2
from recstack.recommend.v1 import recommend_service_pb2 as cpb
from recstack.recommend.v1 import recommend_service_pb2_grpc
from recstack.registry.v1 import model_pb2, registry_service_pb2_grpc
from recstack.registry.v1 import registry_service_pb2 as rpb
from recstack.serving.v1 import serving_service_pb2 as spb

from infra.local import demo, movielens
from services.recommend.experiments import choose_variant
from shared.values import from_proto, generated_array
from tests.cli import run_cli

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "movielens"
VIEWS = ("movie_attributes", "user_profile", "item_popularity", "user_history", "item_similar")
USER_STEP = 10
State = model_pb2.ModelVersion.State
RECALLS = {"vector": 150, "item_to_item": 200, "category_affinity": 100, "popular": 50}
# A user of the subset, and one no view knows (every 10th user is kept: 1, 11, 21, ...).
KNOWN_USER, UNKNOWN_USER = 11, 12


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """The example with every USER_STEP-th user's ratings, and a quicker training config."""
    base = tmp_path_factory.mktemp("movielens_ranker")
    shutil.copytree(EXAMPLE / "feature_repo", base / "feature_repo")
    shutil.copy(EXAMPLE / "fg.json", base / "fg.json")
    (base / "data").mkdir()
    for name in ("ratings", "movies", "users"):
        path = EXAMPLE / "data" / f"{name}.parquet"
        assert path.is_file(), f"{path} is missing: run `make movielens-data`"
        table = pq.read_table(path)
        if "user_id" in table.column_names:
            ids = table.column("user_id").to_numpy()
            table = table.filter(pa.array((ids - 1) % USER_STEP == 0))
        pq.write_table(table, base / "data" / f"{name}.parquet")
    config = yaml.safe_load((EXAMPLE / "train.yaml").read_text())
    config["dnn"] = {**config["dnn"], "epochs": 2, "batch_size": 512}
    (base / "train.yaml").write_text(yaml.safe_dump(config))
    # Training is deterministic: a second version differs only if its config does.
    config["dnn"]["epochs"] = 1
    (base / "train_again.yaml").write_text(yaml.safe_dump(config))
    return base


@pytest.fixture(scope="module")
def project(
    base, registry_address, materialization_address, recommend_address, cli_environment
) -> str:
    """The whole example repository applied: its views, the ranker, the home-feed scene and
    its experiment (this stack's only `movielens_home`)."""
    project = f"movielens_{uuid.uuid4().hex[:6]}"
    connection = ("--registry", registry_address, "--materialization", materialization_address)
    applied = run_cli(
        "apply",
        str(base / "feature_repo"),
        "--project",
        project,
        *connection[:2],
        "--recommend",
        recommend_address,
    )
    assert applied.code == 0, applied.err
    assert re.search(r"create\s+Scene\s+movielens_home", applied.out), applied.out
    for view in VIEWS:
        backfill(project, view, connection)
    return project


def backfill(project: str, view: str, connection: tuple[str, ...]) -> None:
    result = run_cli(
        "materialize",
        "backfill",
        f"{project}/{view}",
        "--start",
        "1997-09-20",
        "--end",
        "1998-04-23",
        "--wait",
        *connection,
    )
    assert result.code == 0, result.out + result.err


def train(
    base: Path,
    project: str,
    addresses: tuple[str, str],
    repository: Path,
    *flags: str,
    config: str = "train.yaml",
):
    registry, materialization = addresses
    return run_cli(
        "train",
        str(base / config),
        "--project",
        project,
        "--work-dir",
        str(base / f"work_{uuid.uuid4().hex[:6]}"),
        "--model-repository",
        str(repository),
        "--registry",
        registry,
        "--materialization",
        materialization,
        *flags,
    )


@pytest.fixture(scope="module")
def first(base, project, registry_address, materialization_address, trained_model_repository):
    result = train(
        base, project, (registry_address, materialization_address), trained_model_repository
    )
    assert result.code == 0, result.out + result.err
    # The item embeddings the training wrote, published for the vector recall.
    backfill(
        project,
        "item_embeddings",
        ("--registry", registry_address, "--materialization", materialization_address),
    )
    return result


@pytest.fixture(scope="module")
def registry(registry_address, connect):
    with connect(registry_address) as channel:
        yield registry_service_pb2_grpc.RegistryServiceStub(channel)


@pytest.fixture(scope="module")
def recommend(recommend_address, connect):
    with connect(recommend_address) as channel:
        yield recommend_service_pb2_grpc.RecommendServiceStub(channel)


@pytest.fixture(scope="module")
def stubs(
    registry_address, materialization_address, serving_address, recommend_address, client_settings
):
    return demo.Stubs.connect(
        registry_address,
        materialization_address,
        serving_address,
        recommend_address,
        client_settings,
    )


@pytest.fixture(scope="module")
def scene(project, first, stubs) -> str:
    """The example's four recalls and ranker without the filter and rerank that drop or
    reorder candidates, so that each recall can be checked against what it reads."""
    scene = movielens.home_scene(project)
    del scene.filters[1:]
    del scene.reranks[:]
    scene.reranks.add(type="top_n")
    scene.rank.score_formula = ""
    assert [f.type for f in scene.filters] == ["exclude_items"]
    stubs.recommend.CreateScene(cpb.CreateSceneRequest(scene_id=project, scene=scene))
    return project


def metrics_of(output: str) -> dict[str, tuple[float, ...]]:
    rows = re.findall(r"^(probs_\w+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)$", output, re.MULTILINE)
    return {name: tuple(float(v) for v in values) for name, *values in rows}


def test_the_trained_ranker_beats_popularity_and_is_active(first, project, registry):
    found = metrics_of(first.out)
    ctr_auc, _, popularity_ctr_auc, _ = found["probs_ctr"]
    cvr_auc, _, popularity_cvr_auc, _ = found["probs_cvr"]
    assert ctr_auc > popularity_ctr_auc
    assert cvr_auc > popularity_cvr_auc

    model = registry.GetModel(rpb.GetModelRequest(name=f"projects/{project}/models/ranker")).model
    version = registry.GetModelVersion(
        rpb.GetModelVersionRequest(name=f"{model.name}/versions/{model.active_version}")
    ).model_version
    assert model.active_version == 1
    assert version.state == State.STATE_ACTIVE
    assert version.trainer == "dnn"
    assert version.metrics["probs_ctr_auc"] == pytest.approx(ctr_auc, abs=1e-4)
    assert version.metrics["baseline_popularity_probs_ctr_auc"] == pytest.approx(
        popularity_ctr_auc, abs=1e-4
    )
    assert [t.name for t in version.signature.outputs] == ["probs_ctr", "probs_cvr"]
    assert "history__genre" in [t.name for t in version.signature.inputs]


def test_recommendations_are_ranked_by_the_model_with_every_output(scene, stubs, project):
    response = demo.recommend(stubs, scene, 11)

    assert len(response.items) == 10
    scores = [item.score for item in response.items]
    assert scores == sorted(scores, reverse=True)
    for item in response.items:
        assert set(item.model_scores) == {"probs_ctr", "probs_cvr"}
        assert item.score == item.model_scores["probs_ctr"]
        assert 0 < item.model_scores["probs_cvr"] < 1
        assert item.recall_sources
        assert set(item.recall_sources) <= set(RECALLS)
    titles = demo.titles(stubs, project, [item.item_id for item in response.items])
    assert all(titles.values())
    assert demo.active_version(stubs, project, "ranker").version == 1


def test_the_examples_scene_and_experiment_serve_as_the_repository_declares(first, project, stubs):
    """`movielens_home` from `feature_repo/scenes/`: the user's recent movies filtered, at
    most 2 movies of a genre in any 5 positions, and the experiment's variant choosing the
    score (the click alone, or times the conversion)."""
    scene = stubs.recommend.GetScene(cpb.GetSceneRequest(name="scenes/movielens_home")).scene
    experiment = stubs.recommend.GetExperiment(
        cpb.GetExperimentRequest(name="experiments/movielens_home_score")
    ).experiment
    assert scene.project == project and scene.rank.model == "ranker"
    users = list(range(1, 200, USER_STEP))
    history = online(stubs, project, ["user_history:recent_items"], users)
    served: dict[str, int] = {}
    for user, recent in zip(users, history["user_history:recent_items"], strict=True):
        response = demo.recommend(stubs, "movielens_home", user)
        variant = choose_variant(experiment, str(user))
        assert variant is not None
        assert list(response.variants) == [f"movielens_home_score/{variant.name}"]
        served[variant.name] = served.get(variant.name, 0) + 1
        assert len(response.items) == 10 and not response.degraded
        assert not {item.item_id for item in response.items} & {str(i) for i in recent or []}
        for item in response.items:
            ctr, cvr = item.model_scores["probs_ctr"], item.model_scores["probs_cvr"]
            expected = ctr * cvr if variant.name == "conversion" else ctr
            assert item.score == pytest.approx(expected, rel=1e-6)
        genres = online(
            stubs, project, ["movie_attributes:genres"], [int(i.item_id) for i in response.items]
        )["movie_attributes:genres"]
        for start in range(len(genres) - 4):
            window = [genre for movie in genres[start : start + 5] for genre in movie]
            assert max(window.count(genre) for genre in window) <= 2, (user, genres)
    assert set(served) == {"control", "conversion"}


def test_fg_check_finds_offline_and_online_features_identical(
    scene, project, registry_address, materialization_address, recommend_address, base
):
    result = run_cli(
        "fg",
        "check",
        f"{project}/ranker",
        "--scene",
        scene,
        "--rows",
        "1000",
        "--work-dir",
        str(base / "fg_check"),
        "--registry",
        registry_address,
        "--materialization",
        materialization_address,
        "--recommend",
        recommend_address,
    )

    assert result.code == 0, result.out + result.err
    assert re.search(r"1000 rows x 16 tensors, 0 mismatches", result.out), result.out


def test_activation_and_rollback_under_traffic_fail_no_request(
    scene,
    project,
    base,
    registry,
    recommend,
    registry_address,
    materialization_address,
    trained_model_repository,
):
    second = train(
        base,
        project,
        (registry_address, materialization_address),
        trained_model_repository,
        "--no-activate",
        config="train_again.yaml",
    )
    assert second.code == 0, second.out + second.err
    model_name = f"projects/{project}/models/ranker"
    failures: list[Exception] = []
    served: list[float] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                response = recommend.Recommend(
                    cpb.RecommendRequest(scene=scene, user_id="21"), timeout=10
                )
                served.append(response.items[0].model_scores["probs_ctr"])
            except grpc.RpcError as exc:
                failures.append(exc)

    client = threading.Thread(target=loop)
    client.start()
    try:
        time.sleep(0.5)
        registry.ActivateModelVersion(
            rpb.ActivateModelVersionRequest(name=f"{model_name}/versions/2")
        )
        time.sleep(1.0)
        during = len(served)
        registry.RollbackModel(rpb.RollbackModelRequest(name=model_name))
        time.sleep(1.0)
    finally:
        stop.set()
        client.join()

    assert failures == []
    assert len(served) > during > 0
    # The two versions score differently: the traffic saw both, then the first again.
    assert len(set(served)) >= 2
    assert served[-1] == served[0]
    model = registry.GetModel(rpb.GetModelRequest(name=model_name)).model
    assert model.active_version == 1


def test_triton_serves_the_dnn_like_onnxruntime_on_the_same_inputs(
    scene, project, registry, recommend, trained_model_repository
):
    model = registry.GetModel(rpb.GetModelRequest(name=f"projects/{project}/models/ranker")).model
    version = registry.GetModelVersion(
        rpb.GetModelVersionRequest(name=f"{model.name}/versions/{model.active_version}")
    ).model_version
    items = [str(i) for i in range(1, 201)]

    scored = recommend.Score(
        cpb.ScoreRequest(scene=scene, user_id="31", item_ids=items, debug_level=1), timeout=30
    )

    onnx_file = trained_model_repository / version.triton_model_name / "1" / "model.onnx"
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    names = [tensor.name for tensor in version.signature.inputs]
    inputs = {
        name: np.stack([generated_array(g.features[name]) for g in scored.generated_features])
        for name in names
    }
    ctr, cvr = session.run(["probs_ctr", "probs_cvr"], inputs)
    np.testing.assert_allclose(
        [item.model_scores["probs_ctr"] for item in scored.items], ctr[:, 0], rtol=1e-5
    )
    np.testing.assert_allclose(
        [item.model_scores["probs_cvr"] for item in scored.items], cvr[:, 0], rtol=1e-5
    )
    assert inputs["history"].dtype == np.int64 and inputs["history"].shape == (200, 20)


# --- the four recalls -----------------------------------------------------------------------


def online(stubs, project: str, refs: list[str], keys: list[int]) -> dict[str, list]:
    """`refs` of `keys`, decoded, in key order (GetOnlineFeatures takes 1,000 keys a call)."""
    values: dict[str, list] = {ref: [] for ref in refs}
    for start in range(0, len(keys), 1000):
        response = stubs.serving.GetOnlineFeatures(
            spb.GetOnlineFeaturesRequest(
                project=project,
                features=refs,
                entity_keys=[value_pb2.Value(int64_value=k) for k in keys[start : start + 1000]],
            ),
            timeout=30,
        )
        for ref, column in zip(refs, response.columns, strict=True):
            values[ref] += [from_proto(value) for value in column.values]
    return values


@pytest.fixture(scope="module")
def every_candidate(scene, stubs):
    """The known user's whole candidate set (size 500 = the four quotas), ranked, with its
    sources, and the per-stage counts."""
    response = stubs.recommend.Recommend(
        cpb.RecommendRequest(scene=scene, user_id=str(KNOWN_USER), size=500, debug=True),
        timeout=60,
    )
    return {item.item_id: tuple(item.recall_sources) for item in response.items}, dict(
        response.stage_counts
    )


@pytest.fixture(scope="module")
def catalogue(project, stubs, every_candidate) -> dict[str, list]:
    keys = list(range(1, 1683))
    return online(
        stubs,
        project,
        [
            "item_popularity:item_ratings_30d",
            "movie_attributes:genres",
            "item_similar:similar_items",
            "item_similar:similar_scores",
            "item_embeddings:embedding",
        ],
        keys,
    )


@pytest.fixture(scope="module")
def known_user(project, stubs) -> dict[str, object]:
    values = online(
        stubs,
        project,
        ["user_history:recent_items", "user_history:genre_counts"],
        [KNOWN_USER],
    )
    return {ref: column[0] for ref, column in values.items()}


def found_by(sources: dict[str, tuple[str, ...]], recall: str) -> set[str]:
    return {item for item, names in sources.items() if recall in names}


def test_every_recall_fills_its_quota_for_a_known_user(every_candidate):
    sources, counts = every_candidate

    assert {name: counts[name] for name in RECALLS} == RECALLS
    assert all(found_by(sources, name) for name in RECALLS)
    # Recalls overlap, so the merged set is smaller than the quotas' sum.
    assert counts["exclude_items"] == len(sources) < sum(RECALLS.values())
    assert any(len(names) > 1 for names in sources.values())


def test_popular_is_the_months_most_rated(every_candidate, catalogue):
    sources, _ = every_candidate
    counts = catalogue["item_popularity:item_ratings_30d"]
    ranked = sorted(
        (-count, item) for item, count in enumerate(counts, start=1) if count is not None
    )
    # Ties go by id as text, as the item cache ranks them.
    ranked = sorted(ranked, key=lambda pair: (pair[0], str(pair[1])))

    assert found_by(sources, "popular") == {str(item) for _, item in ranked[:50]}


def test_item_to_item_expands_the_users_recent_movies(every_candidate, catalogue, known_user):
    sources, _ = every_candidate
    history = known_user["user_history:recent_items"]
    totals: dict[int, float] = {}
    for item in history:
        similar = catalogue["item_similar:similar_items"][item - 1] or []
        scores = catalogue["item_similar:similar_scores"][item - 1] or []
        for other, score in zip(similar, scores, strict=True):
            totals[other] = totals.get(other, 0.0) + score
    fresh = {item: score for item, score in totals.items() if item not in history}
    found = found_by(sources, "item_to_item")
    # Sums in another order may differ in the last bit: compare scores at the 200th place.
    threshold = sorted(fresh.values(), reverse=True)[199]

    assert len(history) == 50
    assert len(found) == 200
    assert min(fresh[int(item)] for item in found) >= threshold - 1e-9


def test_vector_finds_the_movies_nearest_to_the_mean_of_the_recent_ones(
    every_candidate, catalogue, known_user
):
    sources, _ = every_candidate
    history = known_user["user_history:recent_items"]
    embeddings = catalogue["item_embeddings:embedding"]
    query = np.mean([embeddings[item - 1] for item in history[:20]], axis=0)
    scores = {
        item: float(np.dot(vector, query))
        for item, vector in enumerate(embeddings, start=1)
        if vector is not None and item not in history
    }
    found = found_by(sources, "vector")
    # Hashed ids share embedding rows: compare scores, not ids, at the 150th place.
    threshold = sorted(scores.values(), reverse=True)[149]

    assert len(found) == 150
    assert min(scores[int(item)] for item in found) >= threshold - 1e-5
    assert not found & {str(item) for item in history}


def test_category_affinity_takes_the_popular_movies_of_the_users_genres(
    every_candidate, catalogue, known_user
):
    sources, _ = every_candidate
    counts = known_user["user_history:genre_counts"]
    top = sorted(counts, key=lambda genre: (-counts[genre], genre))[:3]
    found = found_by(sources, "category_affinity")
    genres = catalogue["movie_attributes:genres"]

    assert len(found) == 100
    assert all(set(genres[int(item) - 1]) & set(top) for item in found)
    # The heaviest genre's items fill at least its share of the quota.
    heaviest = sum(top[0] in genres[int(item) - 1] for item in found)
    assert heaviest >= int(100 * counts[top[0]] / sum(counts[genre] for genre in top))


def test_a_user_no_view_knows_gets_the_popular_movies_only(scene, stubs):
    response = stubs.recommend.Recommend(
        cpb.RecommendRequest(scene=scene, user_id=str(UNKNOWN_USER), debug=True), timeout=30
    )

    assert len(response.items) == 10
    assert {item for i in response.items for item in i.recall_sources} == {"popular"}
    assert [response.stage_counts[name] for name in RECALLS] == [0, 0, 0, 50]


def test_item_similar_is_the_cosine_of_co_rating_over_the_whole_history(base, catalogue):
    ratings = pq.read_table(base / "data" / "ratings.parquet", columns=["user_id", "item_id"])
    raters: dict[int, set[int]] = {}
    for user, item in zip(
        *(ratings.column(c).to_pylist() for c in ratings.column_names), strict=True
    ):
        raters.setdefault(item, set()).add(user)
    for item in (1, 50, 100):
        expected = sorted(
            (-len(raters[item] & users) / np.sqrt(len(raters[item]) * len(users)), other)
            for other, users in raters.items()
            if other != item and raters[item] & users
        )[:100]
        similar = catalogue["item_similar:similar_items"][item - 1]
        scores = catalogue["item_similar:similar_scores"][item - 1]

        assert similar == [other for _, other in expected]
        np.testing.assert_allclose(scores, [-score for score, _ in expected], rtol=1e-9)
