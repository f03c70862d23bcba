"""The memory budget: one setting, validated, and blocks that follow it in bytes, not rows."""

import tracemalloc

import numpy as np
import pytest

from tasks.core.errors import FeatureAuditError
from tasks.core.metrics import METRICS
from tasks.methods.permutation import permutation_importance
from tasks.methods.shap import sampling_shap
from tasks.subject.modeling import DEFAULT_BATCH_ROWS, Forward, memory_budget, rows_for

MIB = 2**20


def test_the_budget_defaults_to_256_mib_and_follows_the_setting(monkeypatch):
    monkeypatch.delenv("FEATUREAUDIT_MEMORY_MB", raising=False)
    assert memory_budget() == 256 * MIB
    monkeypatch.setenv("FEATUREAUDIT_MEMORY_MB", "")
    assert memory_budget() == 256 * MIB
    monkeypatch.setenv("FEATUREAUDIT_MEMORY_MB", " 1024 ")
    assert memory_budget() == 1024 * MIB
    monkeypatch.setenv("FEATUREAUDIT_MEMORY_MB", "0.5")
    assert memory_budget() == MIB // 2


@pytest.mark.parametrize("value", ["abc", "0", "-64", "nan", "inf", "256MB"])
def test_an_invalid_setting_is_refused_naming_it(monkeypatch, value):
    monkeypatch.setenv("FEATUREAUDIT_MEMORY_MB", value)
    with pytest.raises(FeatureAuditError, match=f"FEATUREAUDIT_MEMORY_MB='{value}' is not a positive number of MiB"):
        memory_budget()


def test_rows_for_divides_the_budget_by_the_row_size():
    assert rows_for(10_000, 256 * MIB) == 6_710
    assert rows_for(10_000, 256 * MIB, bytes_per_value=5) == 5_368
    assert rows_for(20, 256 * MIB, cap=DEFAULT_BATCH_ROWS) == DEFAULT_BATCH_ROWS
    assert rows_for(10_000, 100) == 1 and rows_for(0, 100) == 25


def test_forward_batches_follow_the_budget_and_the_widest_layer(monkeypatch):
    import keras

    monkeypatch.delenv("FEATUREAUDIT_MEMORY_MB", raising=False)
    narrow = keras.Sequential([keras.Input((20,)), keras.layers.Dense(64), keras.layers.Dense(1)])
    assert Forward(narrow, tuple(f"x{j}" for j in range(20))).batch_rows == DEFAULT_BATCH_ROWS  # as before the budget
    hidden = keras.Sequential([keras.Input((20,)), keras.layers.Dense(4096), keras.layers.Dense(1)])
    assert Forward(hidden, tuple(f"x{j}" for j in range(20))).batch_rows == 256 * MIB // (4096 * 4)  # activations
    monkeypatch.setenv("FEATUREAUDIT_MEMORY_MB", "1")
    assert Forward(narrow, tuple(f"x{j}" for j in range(20))).batch_rows == MIB // (64 * 4)
    assert Forward(narrow, tuple(f"x{j}" for j in range(20)), batch_rows=100).batch_rows == 100  # explicit wins


def _numpy_peak(run) -> int:
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def wide_linear():
    """A 1,000-feature linear model fed whole rows (a plain callable), and 100 rows."""
    import keras

    model = keras.Sequential([keras.Input((1_000,)), keras.layers.Dense(1)])
    forward = Forward(model, tuple(f"x{j}" for j in range(1_000)))
    X = np.random.default_rng(0).standard_normal((100, 1_000), dtype=np.float32)
    forward(X[:10])
    return (lambda Z: forward(Z)), X


def test_permutation_memory_follows_the_budget_not_the_width(wide_linear, monkeypatch):
    """1,000 units × 100 rows: one block of every copy would be 400 MB; with a 2 MiB budget numpy stays near 2 MiB."""
    forward, X = wide_linear
    y = X[:, :3].sum(axis=1)
    monkeypatch.setenv("FEATUREAUDIT_MEMORY_MB", "2")
    peak = _numpy_peak(lambda: permutation_importance(forward, X, y, metric=METRICS["mse"], n_repeats=1,
                                                      random_state=0))
    assert peak < 3 * 2 * MIB, f"peak {peak / MIB:.1f} MiB"


def test_shap_memory_follows_the_budget_even_within_one_row(wide_linear, monkeypatch):
    """One row with 20 chains of 1,001 steps is 80 MB of inputs; with a 2 MiB budget it is built in pieces."""
    forward, X = wide_linear
    monkeypatch.setenv("FEATUREAUDIT_MEMORY_MB", "2")
    peak = _numpy_peak(lambda: sampling_shap(forward, X[:1], X[50:60], random_state=0))
    assert peak < 3 * 2 * MIB, f"peak {peak / MIB:.1f} MiB"
