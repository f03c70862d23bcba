import numpy as np
import pytest

from tasks.core.metrics import METRICS
from tasks.methods.shap import (
    explain,
    global_magnitude,
    global_mc_se,
    highest_loss_rows,
    sampling_shap,
    shap_audit,
    shap_importance,
    unexplained_shares,
)
from tasks.registry.versions import resolve_version
from tasks.subject.loaded import load_subject
from tasks.subject.modeling import Forward
from tests import helpers


@pytest.fixture(scope="module")
def linear(linear_registry):
    version = resolve_version(linear_registry, "linear")
    subject = load_subject(version)
    return version, subject.model, subject.test, subject.train


@pytest.fixture(scope="module")
def softmax_model():
    """An untrained 4-feature, 3-class softmax MLP: nonlinear, with known output structure (rows sum to 1)."""
    import keras

    init = keras.initializers.GlorotUniform(seed=3)
    model = keras.Sequential([
        keras.Input((4,), name="x"),
        keras.layers.Dense(8, activation="tanh", kernel_initializer=init),
        keras.layers.Dense(3, activation="softmax", kernel_initializer=init),
    ])
    X = np.random.default_rng(5).normal(size=(300, 4)).astype(np.float32) * 2
    return model, ("p", "q", "r", "s"), X


def test_linear_model_mean_abs_shap_matches_closed_form(linear):
    version, model, test, train = linear
    draws, (low, high), raw, rows = shap_importance(model, version.features, test.X, train.X, n_rows=400, random_state=0)
    assert raw.explainer == "Shapley sampling (ours)" and "add up exactly" in raw.reason
    # phi_j = w_j (x_j - E[x_j]): its mean magnitude is |w_j| * E|x_j - mean|
    expected = np.abs(helpers.LINEAR_WEIGHTS) * np.abs(test.X[rows] - train.X.mean(axis=0)).mean(axis=0)
    np.testing.assert_allclose(draws.mean(axis=1), expected, rtol=0.1, atol=0.02)
    assert (low <= draws.mean(axis=1)).all() and (draws.mean(axis=1) <= high).all()
    assert draws.mean(axis=1)[3] < 1e-3


def test_sampling_estimator_is_exact_for_a_linear_model(linear):
    version, model, test, train = linear
    background = train.X[:50]
    raw = explain(model, version.features, test.X[:100], background, random_state=0)
    expected = helpers.LINEAR_WEIGHTS * (test.X[:100] - background.mean(axis=0))
    np.testing.assert_allclose(raw.values, expected, atol=1e-4)
    assert raw.max_deviation < 1e-4
    # every order gives w_j (x_j - z_j): the error is the background rows' spread alone, in closed form
    spread = np.abs(helpers.LINEAR_WEIGHTS) * background.std(axis=0, ddof=1) / np.sqrt(len(background))
    np.testing.assert_allclose(raw.mc_se, np.broadcast_to(spread, raw.mc_se.shape), rtol=1e-3, atol=1e-6)
    # and, the background rows given, the orders add no error at all: another seed gives the same values
    again = explain(model, version.features, test.X[:100], background, random_state=1)
    np.testing.assert_allclose(again.values, raw.values, atol=1e-5)


def test_nonlinear_model_is_additive_and_leaves_global_random_state_alone(softmax_model):
    model, features, X = softmax_model
    state = np.random.get_state()
    raw = explain(model, features, X[:60], X[100:160], random_state=0)
    assert np.random.get_state()[1].tolist() == state[1].tolist()
    assert raw.explainer == "Shapley sampling (ours)"
    assert raw.relative_deviation < 1e-4 and raw.mc_se.shape == raw.values.shape


def test_monte_carlo_error_matches_the_spread_over_seeds(softmax_model):
    model, features, X = softmax_model
    forward = Forward(model, features)
    rows, pool = X[:20], X[100:300]
    # background rows and orders both redrawn: each attribution's reported error is its plain standard error
    runs = [sampling_shap(forward, rows, pool[np.random.default_rng(100 + s).choice(len(pool), 40)], random_state=s)
            for s in range(30)]
    spread = np.std([values for values, _, _, _ in runs], axis=0, ddof=1)
    ratio = spread / np.mean([mc_se for _, _, mc_se, _ in runs], axis=0)
    assert 0.75 < np.median(ratio) < 1.33
    assert np.mean((ratio > 0.5) & (ratio < 2)) > 0.95

    # background rows fixed (as in an audit), orders redrawn: the reported error is an upper bound, per value ...
    background = pool[:40]
    runs = [sampling_shap(forward, rows, background, random_state=s) for s in range(30)]
    spread = np.std([values for values, _, _, _ in runs], axis=0, ddof=1)
    reported = np.mean([mc_se for _, _, mc_se, _ in runs], axis=0)
    assert (spread <= 1.3 * reported).all() and np.median(spread / reported) < 0.7
    # ... and for the global importance (multiclass: |phi| summed over classes)
    importance = np.std([global_magnitude(values).mean(axis=0) for values, _, _, _ in runs], axis=0, ddof=1)
    assert (importance <= np.mean([global_mc_se(mc_se) for _, _, mc_se, _ in runs], axis=0)).all()


def test_global_monte_carlo_error_adds_rows_in_quadrature_and_bounds_classes_by_their_sum():
    mc_se = np.array([[[0.1, 0.2], [0.0, 0.3]], [[0.3, 0.0], [0.4, 0.0]]])  # (rows, features, classes)
    np.testing.assert_allclose(global_mc_se(mc_se), [np.sqrt(0.3**2 + 0.3**2) / 2, np.sqrt(0.3**2 + 0.4**2) / 2])
    np.testing.assert_allclose(global_mc_se(mc_se[..., 0]), [np.sqrt(0.1**2 + 0.3**2) / 2, 0.4 / 2])


def test_multiclass_values_per_class_and_summed_magnitude(softmax_model):
    model, features, X = softmax_model
    raw = explain(model, features, X[:50], X[100:150], random_state=1)
    assert raw.values.shape == (50, 4, 3) and raw.base_value.shape == (3,)
    np.testing.assert_allclose(raw.base_value + raw.values.sum(axis=1), Forward(model, features)(X[:50]), atol=1e-5)
    # probabilities sum to one, so each feature's effects over the classes cancel
    np.testing.assert_allclose(raw.values.sum(axis=2), 0, atol=1e-5)
    draws, _, raw2, _ = shap_importance(model, features, X, X, n_rows=50, n_background=40, random_state=1)
    assert draws.shape == (4, 200)
    np.testing.assert_allclose(global_magnitude(raw2.values), np.abs(raw2.values).sum(axis=2))
    np.testing.assert_allclose(draws.mean(axis=1), np.abs(raw2.values).sum(axis=2).mean(axis=0), rtol=0.05)


def test_highest_loss_rows_match_a_brute_force_ranking(embedding_registry):
    version = resolve_version(embedding_registry, "embed")
    subject = load_subject(version)
    model, test = subject.model, subject.test
    predictions = np.asarray(model.predict(
        {"amount": test.X[:, [0]], "region": test.X[:, [1]].astype("int32"), "noise": test.X[:, [2]]}, verbose=0))[:, 0]
    losses = [(float(predictions[i]) - float(test.y[i])) ** 2 for i in range(len(test.y))]
    brute = sorted(range(len(losses)), key=lambda i: -losses[i])[:5]
    worst, loss = highest_loss_rows(test.y, Forward(model, version.features)(test.X), METRICS["mse"], 5)
    assert worst.tolist() == brute
    np.testing.assert_allclose(loss, losses, rtol=1e-4, atol=1e-5 * max(losses))  # batches of 32 against one

    result = shap_audit(version, seed=0, n_rows=100)
    local = result.details.local
    assert [r.row for r in local if r.selection == "highest loss"] == brute
    assert len([r for r in local if r.selection == "random"]) == 3
    for record in local:
        phi = sum(f.phi for f in record.features)
        assert record.base_value + phi == pytest.approx(record.explained_output, abs=1e-5)
        assert record.label == pytest.approx(float(test.y[record.row]))
        magnitudes = [abs(f.phi) for f in record.features]
        assert magnitudes == sorted(magnitudes, reverse=True)


def test_named_embedding_model_is_explained_by_sampling_and_seeded(embedding_registry):
    version = resolve_version(embedding_registry, "embed")
    first = shap_audit(version, seed=0, n_rows=100)
    details = first.details
    assert details.explainer == "Shapley sampling (ours)" and "any input" in details.reason
    assert first.sampling == "bootstrap"
    assert len(details.mc_se) == len(version.features) and all(0 < se < 0.1 * m for se, m in
                                                                   zip(details.mc_se, first.importances_mean))
    assert any(note.startswith("Monte Carlo error of the sampler") for note in first.notes)
    assert details.n_background == 100 and details.background_source == "training"
    assert details.additivity.ok and details.additivity.max_deviation < 1e-4
    mean = dict(zip(version.features, first.importances_mean))
    assert mean["amount"] > mean["noise"] and mean["region"] > mean["noise"]
    again = shap_audit(version, seed=0, n_rows=100)
    np.testing.assert_array_equal(first.importances, again.importances)
    assert again.details.local == details.local and again.details.beeswarm == details.beeswarm
    other = shap_audit(version, seed=1, n_rows=100)
    assert not np.array_equal(first.importances, other.importances)
    assert details.beeswarm.features[0] in ("amount", "region")
    assert len(details.beeswarm.phi[0]) == 100


def test_a_rerun_with_another_seed_lands_inside_the_bootstrap_interval(linear, softmax_model):
    """The interval resamples rows and background groups: another seed's estimate falls inside it about 95% of the time."""
    model, features, X = softmax_model
    pool = X[100:300]
    outside = total = 0
    for seed in range(20):
        draws, (low, high), _, _ = shap_importance(model, features, X[:100], pool, n_rows=100, n_background=40,
                                                   random_state=seed)
        again, _, _, _ = shap_importance(model, features, X[:100], pool, n_rows=100, n_background=40,
                                         random_state=seed + 100)
        estimate = again.mean(axis=1)
        outside += int(((estimate < low) | (estimate > high)).sum())
        total += len(features)
    assert outside <= 0.1 * total, f"{outside} of {total} reruns fell outside the 95% interval"


# --- memory bounded by bytes, work capped for wide models ------------------------------------------------------------


def test_block_evaluations_follow_the_memory_budget():
    from tasks.methods.shap import MAX_EVALUATIONS_PER_CALL, block_evaluations

    mib = 2**20
    assert block_evaluations(20, 256 * mib) == MAX_EVALUATIONS_PER_CALL  # narrow: the pre-budget block
    assert block_evaluations(10_000, 256 * mib) == 256 * mib // (10_000 * 5)  # float32 input and its bool mask
    assert block_evaluations(64, 256 * mib, first_layer=True) == MAX_EVALUATIONS_PER_CALL
    assert block_evaluations(10_000, 1) == 1


def test_shap_plan_reduces_rows_then_background_and_never_below_the_minimums():
    from tasks.methods.shap import MIN_BACKGROUND, MIN_SHAP_ROWS, SHAP_WORK_BUDGET, shap_plan

    narrow = shap_plan(20, 20, rows=1000, background=100, n_extra=8)
    assert not narrow.reduced and narrow.note() is None and narrow.work <= SHAP_WORK_BUDGET
    assert not shap_plan(222, 222, rows=1000, background=100, n_extra=8).reduced
    assert shap_plan(223, 223, rows=1000, background=100, n_extra=8).reduced

    rows_only = shap_plan(500, 500, rows=1000, background=100, n_extra=8)  # fewer rows, every background row
    assert (rows_only.rows, rows_only.background) == (191, 100)
    assert rows_only.work <= SHAP_WORK_BUDGET < (rows_only.rows + 9) * rows_only.evaluations_per_row * 500

    both = shap_plan(1_000, 1_000, rows=1000, background=100, n_extra=8)  # rows down to the minimum, then background
    assert (both.rows, both.background) == (MIN_SHAP_ROWS, 86) and both.work <= SHAP_WORK_BUDGET
    assert both.note().startswith("Work capped: explained 50 of 1,000 rows with 86 of 100 background rows")
    assert "1,000 features make each row cost 2·86·1,001 = 172,172 model evaluations" in both.note()
    assert "Even at the minimums" not in both.note()

    floor = shap_plan(10_000, 10_000, rows=1000, background=100, n_extra=8)
    assert (floor.rows, floor.background) == (MIN_SHAP_ROWS, MIN_BACKGROUND) and floor.work > SHAP_WORK_BUDGET
    assert "Even at the minimums" in floor.note()
    small = shap_plan(10_000, 10_000, rows=30, background=10)  # fewer than the minimums asked: kept as asked
    assert (small.rows, small.background) == (30, 10)


def test_a_tiny_memory_budget_gives_identical_values(softmax_model, monkeypatch):
    """One explained row's chains cut into blocks of a few evaluations: the same values, to float32 rounding."""
    model, features, X = softmax_model
    forward = Forward(model, features)
    default = shap_importance(model, features, X[:40], X[100:300], n_rows=30, n_background=20, random_state=4,
                              extra_rows=np.array([35, 36]), forward=forward)
    monkeypatch.setenv("FEATUREAUDIT_MEMORY_MB", "0.0005")  # 524 bytes: 26 evaluations of 4 features per block
    tiny_forward = Forward(model, features)
    tiny = shap_importance(model, features, X[:40], X[100:300], n_rows=30, n_background=20, random_state=4,
                           extra_rows=np.array([35, 36]), forward=tiny_forward)
    np.testing.assert_allclose(tiny[0], default[0], rtol=1e-6, atol=1e-7 * np.abs(default[0]).max())
    for name in ("values", "mc_se", "groups", "base_value", "outputs"):
        expected = np.asarray(getattr(default[2], name), dtype=float)
        np.testing.assert_allclose(getattr(tiny[2], name), expected, rtol=1e-6,
                                   atol=1e-7 * max(np.nanmax(np.abs(expected)), 1e-12))


def test_wide_model_is_explained_after_its_first_layer_with_the_same_values():
    import keras

    init = keras.initializers.GlorotUniform(seed=2)
    model = keras.Sequential([keras.Input((600,)), keras.layers.Dense(16, activation="tanh", kernel_initializer=init),
                              keras.layers.Dense(3, activation="softmax", kernel_initializer=init)])
    X = np.random.default_rng(6).standard_normal((12, 600), dtype=np.float32)
    forward = Forward(model, tuple(f"x{j}" for j in range(600)))
    assert forward.first_layer is not None
    after = sampling_shap(forward, X[:2], X[2:12], random_state=0)
    whole = sampling_shap(lambda Z: forward(Z), X[:2], X[2:12], random_state=0)  # a plain callable: whole rows
    np.testing.assert_allclose(after[0], whole[0], rtol=0, atol=1e-5 * np.abs(whole[0]).max())
    np.testing.assert_allclose(after[0].sum(axis=1) + after[1], forward(X[:2]), atol=1e-5)  # additive
    blocks = sampling_shap(forward, X[:2], X[2:12], random_state=0, max_batch_rows=777)  # chains across blocks
    for a, b in zip(blocks, after):  # to float32 rounding: another batch size may sum in another order
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * np.abs(b).max())


def test_many_features_explain_fewer_rows_and_say_why(tmp_path):
    """400 features: the work cap explains fewer rows, then fewer background rows, and the notes say so."""
    import keras
    import pandas as pd

    n_features = 400
    init = keras.initializers.GlorotUniform(seed=0)
    model = keras.Sequential([keras.Input((n_features,)),
                              keras.layers.Dense(8, activation="relu", kernel_initializer=init),
                              keras.layers.Dense(1, kernel_initializer=init)])
    model.compile(optimizer="adam", loss="mse")
    columns = [f"x{j}" for j in range(n_features)]
    rng = np.random.default_rng(0)
    frames = []
    for n in (200, 150):
        frame = pd.DataFrame(rng.standard_normal((n, n_features), dtype=np.float32), columns=columns)
        frame["y"] = frame["x0"] + frame["x1"]
        frames.append(frame)
    helpers.write_version(tmp_path, "wide", "v1", model, *frames)
    version = resolve_version(tmp_path, "wide")

    result = shap_audit(version, seed=0, max_work=400_000_000)
    work = result.details.work
    assert work.reduced and (work.rows, work.background) == (50, 21)
    assert (work.rows_asked, work.background_asked, work.extra_rows) == (200, 100, 8)
    assert work.work <= work.max_work == 400_000_000
    assert result.details.n_rows == 50 and result.details.n_background == 21
    [note] = [n for n in result.notes if n.startswith("Work capped")]
    assert note.startswith("Work capped: explained 50 of 200 rows with 21 of 100 background rows")
    assert ("400 features make each row cost 2·21·401 = 16,842 model evaluations (each reading all 400 features)"
            in note)
    assert work.reason == note
    # the interval machinery works with fewer rows and background rows
    assert (result.low <= result.importances_mean).all() and (result.importances_mean <= result.high).all()
    assert np.isfinite(result.details.mc_se).all()


def test_unexplained_shares_separate_additive_features_from_factors_of_a_product():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 4))
    X[:, 3] = rng.integers(0, 3, 400)  # a categorical code: binned by its levels
    additive = X * [3.0, 2.0, 1.0, 0.5]
    shares = unexplained_shares(additive, X)
    assert (shares[:3] < 0.1).all() and shares[3] == pytest.approx(0.0, abs=1e-12)
    product = np.stack([X[:, 0] * X[:, 1] / 2, X[:, 0] * X[:, 1] / 2, X[:, 2], np.zeros(400)], axis=1)
    shares = unexplained_shares(product, X)
    assert (shares[:2] > 0.9).all() and shares[2] < 0.1 and np.isnan(shares[3])
    # multiclass values pool the classes: additive in every class is still additive
    assert (unexplained_shares(np.stack([additive, -additive], axis=2), X)[:3] < 0.1).all()
