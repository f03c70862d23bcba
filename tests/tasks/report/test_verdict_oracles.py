"""The judgement on models whose truth is known by construction (tests/oracles.py); the full calibration,
with retrain-ablation and several seeds per kind, is benchmarks/bench_verdict.py."""

import pytest

from tests import oracles

FAST = ("weights", "permutation", "shap")


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    return tmp_path_factory.mktemp("oracles")


@pytest.mark.parametrize("kind", oracles.FAITHFUL)
def test_weights_right_by_construction_agree_without_warnings(registry, kind):
    case = oracles.build(registry, kind, seed=11)
    _, comparison = oracles.audit(registry, case, methods=FAST)
    assert comparison.findings == ()
    assert comparison.verdict == "agree", comparison.reason


@pytest.mark.parametrize("kind", [k for k in oracles.KINDS if k not in oracles.FAITHFUL])
def test_weights_built_to_mislead_are_named_and_never_agree(registry, kind):
    case = oracles.build(registry, kind, seed=11)
    _, comparison = oracles.audit(registry, case, methods=FAST)
    assert oracles.named(case, comparison), [f.message for f in comparison.findings]
    assert comparison.verdict == "disagree"
    assert {f.feature for f in comparison.findings} == set(case.planted)  # nothing else is accused
