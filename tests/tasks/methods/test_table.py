"""The run's options built from the table: each method's section, flat keys lifted, one line for a wrong one."""

import pickle

import pytest

from tasks.core.errors import FeatureAuditError
from tasks.methods import ablation, permutation, shap
from tasks.methods.table import METHODS, AuditOptions, option_fields

#: prefect.yaml's options as deployments wrote them before the methods had sections of their own.
FLAT_DEFAULTS = {"methods": ["weights", "permutation", "ablation", "shap"], "seed": 0, "repeats": 5, "seeds": 5,
                 "cluster_threshold": 0.7, "ablation_budget": None, "max_test_rows": 200000, "shap_rows": 1000}


def test_earlier_flat_options_still_read_and_mean_the_defaults():
    # the methods they list explicitly are the ones they run (a method added since, such as lime, is not)
    assert AuditOptions(**FLAT_DEFAULTS) == AuditOptions(methods=tuple(FLAT_DEFAULTS["methods"]))


def test_a_flat_key_is_lifted_into_its_methods_section():
    flat = AuditOptions(repeats=10, seeds=3, ablation_budget="600s", shap_rows=500)
    nested = AuditOptions(permutation={"repeats": 10}, ablation={"seeds": 3, "ablation_budget": "600s"},
                          shap={"shap_rows": 500})
    assert flat == nested
    assert isinstance(flat.of("permutation"), permutation.Options) and flat.permutation.repeats == 10
    assert flat.of("ablation") == ablation.Options(seeds=3, ablation_budget="600s")
    assert flat.of("shap").shap_rows == 500 and flat.of("weights") == METHODS["weights"].options()


def test_defaults_come_from_each_methods_options():
    defaults = AuditOptions()
    assert defaults.methods == tuple(METHODS)
    assert defaults.permutation.repeats == permutation.REPEATS and defaults.ablation.seeds == ablation.SEEDS
    assert defaults.shap.shap_rows == shap.SHAP_ROWS
    assert {"methods", "seed", "cluster_threshold", "max_test_rows", "repeats", "seeds", "ablation_budget",
            "shap_rows", "lime_samples", "lime_features", "lime_replicates", "effects_features", "effects_grid",
            "effects_rows", "interactions_features", "interactions_rows", "interactions_grid"} == set(option_fields())


def test_the_options_round_trip_through_json_and_pickle():
    options = AuditOptions(methods=("weights", "shap"), seed=3, shap_rows=40)
    assert AuditOptions(**options.model_dump(mode="json")) == options
    assert pickle.loads(pickle.dumps(options)) == options
    assert options.model_dump(mode="json")["shap"] == {"shap_rows": 40}


@pytest.mark.parametrize(("values", "message"), [
    ({"repeats": 0}, "--repeats 0: Input should be greater than or equal to 1"),
    ({"permutation": {"repeats": 0}}, "--repeats 0: "),
    ({"ablation": {"ablation_budget": "soon"}}, "--ablation-budget 'soon'"),
    ({"astrology": 1}, "unknown option 'astrology'"),
    ({"shap": 500}, "'shap' must hold shap's options as an object"),
])
def test_a_wrong_option_is_one_line_naming_it(values, message):
    with pytest.raises(FeatureAuditError, match=message.replace("(", r"\(")) as info:
        AuditOptions(**values)
    assert "\n" not in str(info.value)
