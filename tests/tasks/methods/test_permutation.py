import numpy as np
import pytest

from tasks.core.metrics import METRICS
from tasks.methods.permutation import permutation_importance
from tasks.registry.versions import resolve_version
from tasks.subject.loaded import load_subject
from tasks.subject.modeling import Forward
from tests import helpers


@pytest.fixture(scope="module")
def linear(linear_registry):
    version = resolve_version(linear_registry, "linear")
    subject = load_subject(version)
    return subject.forward(), subject.test


def test_linear_oracle_two_w_squared_var(linear):
    forward, test = linear
    scores = permutation_importance(forward, test.X, test.y, metric=METRICS["mse"], n_repeats=5, random_state=0)
    expected = 2 * helpers.LINEAR_WEIGHTS**2 * test.X.var(axis=0)
    np.testing.assert_allclose(scores.importances.mean(axis=1)[:3], expected[:3], rtol=0.08)
    assert scores.baseline == pytest.approx(0.0, abs=1e-6)


def test_noise_feature_interval_covers_zero(linear):
    from tasks.core.result import ImportanceResult

    forward, test = linear
    scores = permutation_importance(forward, test.X, test.y, metric=METRICS["mse"], n_repeats=5, random_state=0)
    result = ImportanceResult.from_samples("permutation", "behavioural", helpers.LINEAR_FEATURES, scores.importances)
    assert result.low[3] <= 0 <= result.high[3]
    assert result.rank[3] == 4


def test_same_seed_same_numbers_and_chunking_does_not_change_them(linear):
    forward, test = linear
    kwargs = dict(metric=METRICS["mse"], n_repeats=3, random_state=42)
    big = permutation_importance(forward, test.X, test.y, **kwargs)
    again = permutation_importance(forward, test.X, test.y, **kwargs)
    small = permutation_importance(forward, test.X, test.y, rows_per_call=999, **kwargs)
    np.testing.assert_array_equal(big.importances, again.importances)
    np.testing.assert_allclose(big.importances, small.importances, rtol=1e-6, atol=1e-9)
    other = permutation_importance(forward, test.X, test.y, metric=METRICS["mse"], n_repeats=3, random_state=43)
    assert not np.array_equal(big.importances, other.importances)


def test_higher_is_better_metric_keeps_the_sign(linear):
    forward, test = linear
    y = (test.y > 0).astype(np.int64)
    # accuracy of sign(prediction) against sign(y): shuffling a driver lowers it, so importance is positive
    metric = METRICS["accuracy"]
    scores = permutation_importance(lambda X: 1 / (1 + np.exp(-forward(X))), test.X, y, metric=metric, random_state=0)
    assert (scores.importances.mean(axis=1)[:2] > 0.05).all()


def test_embedding_model_permutes_the_raw_integer_column(embedding_registry):
    version = resolve_version(embedding_registry, "embed")
    subject = load_subject(version)
    forward, test = subject.forward(), subject.test
    units = {"amount": [0], "region": [1], "noise": [2], "amount+region": [0, 1]}
    scores = permutation_importance(forward, test.X, test.y, metric=METRICS["mse"], units=units, random_state=0)
    mean = dict(zip(scores.units, scores.importances.mean(axis=1)))
    # region's effect has variance 1.25 and amount's 2.25: both matter, noise does not, the pair most of all
    assert mean["region"] > 1.0 and mean["amount"] > 2.0
    assert abs(mean["noise"]) < 0.2
    assert mean["amount+region"] > max(mean["amount"], mean["region"])


# --- packing, seeds, progress ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("rows_per_call", [777, 2000, 5000, 24_000])
def test_packing_and_chunking_do_not_change_the_numbers(linear, rows_per_call):
    """Blocks smaller than a repeat, one repeat, several units per call: the same means, every metric."""
    forward, test = linear
    kwargs = dict(metric=METRICS["mse"], extra_metrics=(METRICS["mae"],), n_repeats=3, random_state=7)
    reference = permutation_importance(forward, test.X, test.y, **kwargs)
    scores = permutation_importance(forward, test.X, test.y, rows_per_call=rows_per_call, **kwargs)
    assert scores.metrics == ("mse", "mae")
    for name in scores.metrics:
        np.testing.assert_allclose(scores.by_metric[name], reference.by_metric[name], rtol=1e-6, atol=1e-9)


def test_extra_metrics_score_the_same_permuted_copies(linear):
    forward, test = linear
    both = permutation_importance(forward, test.X, test.y, metric=METRICS["mse"], extra_metrics=(METRICS["mae"],),
                                  n_repeats=2, random_state=3)
    alone = permutation_importance(forward, test.X, test.y, metric=METRICS["mae"], n_repeats=2, random_state=3)
    np.testing.assert_allclose(both.by_metric["mae"], alone.importances, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(both.importances, both.by_metric["mse"])


def test_adding_groups_or_clusters_leaves_feature_seeds_alone(linear):
    forward, test = linear
    features = {f: [j] for j, f in enumerate(helpers.LINEAR_FEATURES)}
    kwargs = dict(metric=METRICS["mse"], n_repeats=3, random_state=11)
    plain = permutation_importance(forward, test.X, test.y, units=features, **kwargs)
    more_units = {**features, "group:ab": [0, 1], "cluster:c+d": [2, 3]}
    more = permutation_importance(forward, test.X, test.y, units=more_units, **kwargs)
    np.testing.assert_allclose(more.importances[:4], plain.importances, rtol=1e-6, atol=1e-9)
    assert more.units[4:] == ("group:ab", "cluster:c+d")


def test_serial_and_threaded_runs_give_identical_numbers(linear):
    from concurrent.futures import ThreadPoolExecutor

    forward, test = linear
    run = lambda seed: permutation_importance(forward, test.X, test.y, metric=METRICS["mse"], n_repeats=2,  # noqa: E731
                                              random_state=seed).importances
    serial = [run(seed) for seed in (0, 1, 0)]
    with ThreadPoolExecutor(3) as pool:
        threaded = list(pool.map(run, (0, 1, 0)))
    for a, b in zip(serial, threaded):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("rows_per_call", [1500, 100_000])
def test_progress_is_reported_once_per_unit_in_order(linear, rows_per_call):
    forward, test = linear
    calls = []
    permutation_importance(forward, test.X, test.y, metric=METRICS["mse"], n_repeats=2, random_state=0,
                           rows_per_call=rows_per_call, progress=lambda *args: calls.append(args))
    assert calls == [(str(j), j + 1, 4) for j in range(4)]


def test_memory_stays_bounded_by_the_block_not_the_split():
    """200,000 rows × 50 features (40 MB): numpy-side peak stays far below one copy of the split.

    (TensorFlow's activations are bounded separately, by Forward.batch_rows.)
    """
    import tracemalloc

    import keras

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200_000, 50)).astype(np.float32)
    y = X[:, :3].sum(axis=1)
    model = keras.Sequential([keras.Input((50,)), keras.layers.Dense(1)])
    forward = Forward(model, tuple(f"x{j}" for j in range(50)))
    forward(X[:10])
    tracemalloc.start()
    try:
        permutation_importance(forward, X, y, metric=METRICS["mse"], n_repeats=2, random_state=0,
                               units={"x0": [0], "x1": [1], "x2+x3": [2, 3]}, rows_per_call=16_384)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < X.nbytes / 2, f"peak {peak / 2**20:.1f} MiB"


def test_bad_options_are_refused(linear):
    forward, test = linear
    with pytest.raises(ValueError, match="n_repeats must be at least 1"):
        permutation_importance(forward, test.X, test.y, metric=METRICS["mse"], n_repeats=0)
    with pytest.raises(ValueError, match="rows_per_call must be at least 1"):
        permutation_importance(forward, test.X, test.y, metric=METRICS["mse"], rows_per_call=0)


# --- the model-version level: clusters, groups, classification ------------------------------------------------------

CORRELATED_WEIGHTS = np.array([1.0, 1.0, 0.5, 0.0])


def correlated_frame(n_rows: int, seed: int) -> "pd.DataFrame":
    """a and b correlated (ρ ≈ 0.95), c and noise independent; y = a + b + 0.5·c exactly."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    a = rng.normal(size=n_rows)
    X = np.column_stack([a, 0.95 * a + np.sqrt(1 - 0.95**2) * rng.normal(size=n_rows),
                         rng.normal(size=n_rows), rng.normal(size=n_rows)]).astype(np.float32)
    frame = pd.DataFrame(X, columns=list(helpers.LINEAR_FEATURES))
    frame["y"] = (X @ CORRELATED_WEIGHTS).astype(np.float32)
    return frame


@pytest.fixture(scope="module")
def correlated_version(tmp_path_factory):
    root = tmp_path_factory.mktemp("correlated-registry")
    helpers.write_version(root, "corr", "v1", helpers.linear_model(CORRELATED_WEIGHTS), correlated_frame(3000, seed=5),
                          groups={"bc": ["b", "c"]})
    return resolve_version(root, "corr")


def test_correlated_pair_is_found_and_its_grouped_importance_beats_each_member(correlated_version):
    from tasks.methods.permutation import audit_permutation

    calls = []
    [result] = audit_permutation(correlated_version, n_repeats=5, seed=0, progress=lambda *a: calls.append(a))
    test = load_subject(correlated_version).test
    assert result.method == "permutation" and result.metric == "mse"
    assert result.features == helpers.LINEAR_FEATURES
    [cluster] = result.details.clusters
    assert cluster.name == "a+b" and cluster.members == ["a", "b"] and cluster.min_abs_rho > 0.9
    # oracle: permuting the pair jointly costs 2·var(a + b); each member alone only 2·var(its term)
    expected = 2 * np.var(test.X[:, 0] + test.X[:, 1])
    assert cluster.importance == pytest.approx(expected, rel=0.08)
    assert cluster.low > max(result.high[0], result.high[1])
    assert [g.feature for g in result.details.groups] == ["group:bc"]
    assert [c[0] for c in calls] == [*helpers.LINEAR_FEATURES, "group:bc", "cluster:a+b"]


def test_cluster_equal_to_a_manifest_group_is_permuted_once(correlated_version):
    from dataclasses import replace

    from tasks.methods.permutation import audit_permutation

    manifest = replace(correlated_version.manifest, groups={"pair": ("b", "a")})
    calls = []
    [result] = audit_permutation(replace(correlated_version, manifest=manifest), n_repeats=2,
                                 progress=lambda *a: calls.append(a[0]))
    assert calls[4:] == ["group:pair"]
    [group] = result.details.groups
    [cluster] = result.details.clusters
    assert cluster.importance == group.importance


def test_features_keep_their_numbers_when_clusters_are_reported(correlated_version):
    from tasks.methods.permutation import audit_permutation

    clustered = audit_permutation(correlated_version, n_repeats=3, seed=4)[0]
    unclustered = audit_permutation(correlated_version, n_repeats=3, seed=4, cluster_threshold=1.0)[0]
    assert clustered.details.clusters and not unclustered.details.clusters
    np.testing.assert_allclose(clustered.importances, unclustered.importances, rtol=1e-6, atol=1e-9)


@pytest.fixture(scope="module")
def binary_version(tmp_path_factory):
    """A logistic model P(y=1) = σ(3a - 2b + c) (b on a ×2 scale), its weights set by hand, labels drawn from it."""
    import keras

    root = tmp_path_factory.mktemp("binary-registry")
    frame = helpers.linear_frame(3000, seed=6)
    logits = frame[list(helpers.LINEAR_FEATURES)].to_numpy() @ helpers.LINEAR_WEIGHTS
    frame["y"] = (np.random.default_rng(7).random(len(frame)) < 1 / (1 + np.exp(-logits))).astype(np.int64)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    model.layers[0].set_weights([helpers.LINEAR_WEIGHTS.astype(np.float32)[:, None], np.zeros(1, np.float32)])
    model.compile(optimizer="adam", loss="binary_crossentropy")
    helpers.write_version(root, "binary", "v1", model, frame, task="binary")
    return resolve_version(root, "binary")


def test_classifier_also_gets_accuracy_importance(binary_version):
    from tasks.methods.permutation import audit_permutation

    loss, accuracy = audit_permutation(binary_version, n_repeats=5, seed=0)
    assert (loss.method, loss.metric, accuracy.method, accuracy.metric) == (
        "permutation", "log_loss", "permutation_accuracy", "accuracy")
    assert loss.kind == accuracy.kind == "behavioural"
    for result in (loss, accuracy):
        assert (result.importances_mean[:3] > 0).all()  # accuracy drops, loss rises: both positive
        assert result.low[3] <= 1e-12 and -1e-12 <= result.high[3]  # noise: its interval covers 0, up to rounding
        assert result.rank[1] == 1 and result.rank[3] == 4  # b: weight -2 on a ×2 scale
    assert 0.5 < accuracy.details.baseline < 1.0


def test_manifest_metric_accuracy_gives_one_result(binary_version):
    from dataclasses import replace

    from tasks.methods.permutation import audit_permutation

    version = replace(binary_version, manifest=replace(binary_version.manifest, metric="accuracy"))
    [result] = audit_permutation(version, n_repeats=2)
    assert (result.method, result.metric) == ("permutation", "accuracy")


def test_named_input_model_with_embedding_runs_end_to_end(embedding_registry):
    from tasks.methods.permutation import audit_permutation

    [result] = audit_permutation(resolve_version(embedding_registry, "embed"), n_repeats=3)
    assert result.features == ("amount", "region", "noise")
    assert result.rank[2] == 3 and result.low[0] > 0 and result.low[1] > 0


def test_repeats_double_until_the_top_k_is_verified(linear_registry, tmp_path):
    """The linear model resolves its top 2 at once; a model whose top two tie past the top-k boundary never does."""
    from tasks.methods.permutation import AdaptiveRepeats, audit_permutation

    [clear] = audit_permutation(resolve_version(linear_registry, "linear"), n_repeats=5, seed=0)
    assert clear.details.adaptive == AdaptiveRepeats(repeats_tried=[5], top_k=2, top_k_verified=True)
    assert clear.details.to_json()["adaptive"] == {"repeats_tried": [5], "top_k": 2, "top_k_verified": True}
    assert clear.n_samples == 5 and "Top 2 verified at 95% after 5 repeats." in clear.notes
    # the 2nd and 3rd features tie exactly (w²·var equal on the split) across the top-2 boundary
    frame = helpers.linear_frame(2000, seed=3, scales=(1, 1, 1, 1))
    b, c = frame["b"].to_numpy(np.float64), frame["c"].to_numpy(np.float64)
    weights = np.array([3.0, 1.0, np.sqrt(b.var() / c.var()), 0.0])
    frame["y"] = (frame[list(helpers.LINEAR_FEATURES)].to_numpy(np.float64) @ weights).astype(np.float32)
    helpers.write_version(tmp_path, "tied", "v1", helpers.linear_model(weights), frame)
    [tied] = audit_permutation(resolve_version(tmp_path, "tied"), n_repeats=5, max_repeats=20, seed=0)
    assert tied.details.adaptive.repeats_tried == [5, 10, 20] and not tied.details.adaptive.top_k_verified
    assert tied.n_samples == 20
    # the first five repeats of the longer run are the shorter run's
    [short] = audit_permutation(resolve_version(tmp_path, "tied"), n_repeats=5, max_repeats=5, seed=0)
    np.testing.assert_allclose(tied.importances[:, :5], short.importances, rtol=1e-9)


# --- memory bounded by bytes: blocks from the budget, wide models after their first layer ---------------------------


def test_block_rows_follow_the_memory_budget():
    from tasks.methods.permutation import DEFAULT_ROWS_PER_CALL, block_rows

    mib = 2**20
    assert block_rows(50, 256 * mib) == DEFAULT_ROWS_PER_CALL  # narrow: the pre-budget block, numbers unchanged
    assert block_rows(256, 256 * mib) == DEFAULT_ROWS_PER_CALL
    assert block_rows(10_000, 256 * mib) == 256 * mib // 40_000 == 6_710  # wide: the budget, flat in bytes
    assert block_rows(20_000, 256 * mib) == 3_355
    assert block_rows(10_000, 1) == 1  # at least one row


def test_a_tiny_memory_budget_gives_identical_numbers(linear, monkeypatch):
    """Blocks of a few rows, forward batches of a few rows, repeats split over blocks: the same numbers, to float32
    rounding (a CPU's matrix kernels may sum a batch of 131 rows in another order than one of 2,000)."""
    forward, test = linear
    kwargs = dict(metric=METRICS["mse"], extra_metrics=(METRICS["mae"],), n_repeats=3, random_state=5)
    default = permutation_importance(forward, test.X, test.y, **kwargs)
    monkeypatch.setenv("FEATUREAUDIT_MEMORY_MB", "0.002")  # 2 KiB: 131 rows of 4 float32 features
    tiny_forward = Forward(forward.model, helpers.LINEAR_FEATURES)
    assert tiny_forward.batch_rows == 131
    tiny = permutation_importance(tiny_forward, test.X, test.y, **kwargs)
    for name in default.metrics:
        np.testing.assert_allclose(tiny.by_metric[name], default.by_metric[name], rtol=1e-6,
                                   atol=1e-9 * np.abs(default.by_metric[name]).max())
    assert tiny.baselines == pytest.approx(default.baselines, rel=1e-6, abs=1e-6)  # an exact model: rounding-sized


@pytest.fixture(scope="module")
def wide_mlp():
    """An untrained MLP 600-16-1 (ReLU) on random rows: wide enough to be evaluated after its first layer."""
    import keras

    init = keras.initializers.GlorotUniform(seed=1)
    model = keras.Sequential([keras.Input((600,)), keras.layers.Dense(16, activation="relu", kernel_initializer=init),
                              keras.layers.Dense(1, kernel_initializer=init)])
    X = np.random.default_rng(2).standard_normal((80, 600), dtype=np.float32)
    return Forward(model, tuple(f"x{j}" for j in range(600))), X


def test_wide_model_is_permuted_after_its_first_layer_with_the_same_numbers(wide_mlp, linear):
    forward, X = wide_mlp
    assert forward.first_layer is not None and forward.first_layer.width == 16 and forward.evaluation_width == 16
    assert linear[0].first_layer is None  # narrow models are fed whole rows, as before
    y = forward(X) + np.random.default_rng(3).normal(size=len(X)) * 0.1
    kwargs = dict(metric=METRICS["mse"], n_repeats=2, random_state=0)
    after = permutation_importance(forward, X, y, **kwargs)
    whole = permutation_importance(lambda Z: forward(Z), X, y, **kwargs)  # a plain callable: whole rows
    scale = np.abs(whole.importances).max()
    np.testing.assert_allclose(after.importances, whole.importances, rtol=0, atol=1e-5 * scale)
    small_blocks = permutation_importance(forward, X, y, rows_per_call=50, **kwargs)
    np.testing.assert_array_equal(small_blocks.importances, after.importances)
