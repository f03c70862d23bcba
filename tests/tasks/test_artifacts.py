import numpy as np

from tasks.artifacts import artifact_key, escape_markdown, ranking_rows, verdict_markdown
from tasks.compare import compare
from tasks.result import ImportanceResult


def test_artifact_keys_are_lowercase_dashes_and_digits():
    assert artifact_key("Credit_Model v2", "verdict") == "featureaudit-credit-model-v2-verdict"


def test_markdown_shows_feature_names_as_literal_text():
    features = ("[click](http://x)", "b", "c", "d")
    weights = ImportanceResult.from_samples("weights", "weight-based", features, np.array([0.01, 3.0, 2.0, 1.0]))
    perm = ImportanceResult.from_samples("permutation", "behavioural", features,
                                         np.array([[9.0] * 5, [3.0] * 5, [2.0] * 5, [1.0] * 5]) + 0.01 * np.arange(5))
    text = verdict_markdown("m", "v1", compare([weights, perm]), "/reports/m/v1/r")
    assert "[click](http://x)" not in text and escape_markdown("[click](http://x)") in text
    assert "Verdict on the weight-based ranking" in text
    assert ranking_rows([weights, perm])[0] == {"feature": "[click](http://x)", "weights": 4, "permutation": 1}
