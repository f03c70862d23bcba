"""Weight-based importance: first-layer weight magnitudes, the ranking the report puts to the test.

Per feature, the summed magnitude of the first-layer weights it feeds: the rows of the first
Dense kernel (through any Concatenate, Flatten, Dropout or Normalization in between), or the
whole Embedding table for an integer input. A scale-aware variant multiplies by the feature's
standard deviation on the test split. Both look only at weights, so both share the caveats below.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from prefect import get_run_logger, task

from tasks.modeling import input_name
from tasks.result import ImportanceResult
from tasks.sources import ModelVersion, load_model, load_split

CAVEATS = (
    "Non-linear activations and hidden-layer interactions change what a first-layer weight means downstream.",
    "A feature on a larger numeric scale gets smaller weights whatever its effect on the prediction.",
    "Dropout and weight decay spread or shrink weights, so magnitudes are unstable across trainings.",
    "An embedded categorical feature owns a whole table of weights, which inflates its sum.",
)
SCALED_NOTE = "Scale-aware: |W| row sum times the feature's standard deviation on the test split (categoricals unscaled)."

# Layers that neither mix columns nor carry the first-layer weights: look through them.
_PASS_THROUGH = {
    "Dropout", "GaussianNoise", "GaussianDropout", "AlphaDropout", "InputLayer", "Identity",
    "Normalization", "BatchNormalization", "LayerNormalization", "Activation", "Flatten", "Reshape",
}


def weight_magnitudes(model, features: tuple[str, ...]) -> np.ndarray:
    """Sum of |first-layer weights| per feature, for single-matrix and named-input models."""
    consumers = _consumer_map(model)
    inputs = list(model.inputs)
    if len(inputs) == 1 and (len(features) > 1 or input_name(inputs[0]) != features[0]):
        return _walk(inputs[0], 0, len(features), consumers)
    by_name = {input_name(t): t for t in inputs}
    return np.array([_walk(by_name[f], 0, 1, consumers)[0] for f in features])


def weight_importance(
    model,
    features: tuple[str, ...],
    X: np.ndarray,
    *,
    categorical: tuple[str, ...] = (),
) -> list[ImportanceResult]:
    """The naive |W| ranking and its scale-aware variant, as two weight-based results."""
    magnitudes = weight_magnitudes(model, features)
    scale = X.std(axis=0).astype(float)
    for j, name in enumerate(features):
        if name in categorical:
            scale[j] = 1.0
    return [
        ImportanceResult.from_samples("weights", "weight-based", features, magnitudes, notes=CAVEATS),
        ImportanceResult.from_samples(
            "weights_scaled", "weight-based", features, magnitudes * scale, notes=(SCALED_NOTE, *CAVEATS)
        ),
    ]


@task(name="weights")
def weights_task(version: ModelVersion) -> list[ImportanceResult]:
    """Rank features by first-layer weight magnitudes, naive and scale-aware."""
    model = load_model(Path(version.model_path))
    test = load_split(Path(version.test_path), version)
    results = weight_importance(model, version.features, test.X, categorical=version.categorical)
    get_run_logger().info("weights: ranked %d features by first-layer |W|", len(version.features))
    return results


def _consumer_map(model) -> dict[int, list[tuple[object, object, int]]]:
    """id(tensor) -> [(layer, node, position of the tensor among the node's inputs)]."""
    consumers: dict[int, list[tuple[object, object, int]]] = {}
    for layer in model.layers:
        for node in getattr(layer, "_inbound_nodes", []):
            for position, tensor in enumerate(node.input_tensors):
                consumers.setdefault(id(tensor), []).append((layer, node, position))
    return consumers


def _walk(tensor, offset: int, width: int, consumers) -> np.ndarray:
    """Follow ``tensor[..., offset:offset+width]`` to the first weighted layer and sum |W| per column."""
    found = consumers.get(id(tensor), [])
    if not found:
        raise ValueError(f"no first-layer weights found for input '{tensor.name}'")
    total = np.zeros(width)
    for layer, node, position in found:
        kind = type(layer).__name__
        if kind in ("Dense", "EinsumDense") and hasattr(layer, "kernel"):
            kernel = np.abs(np.asarray(layer.kernel))
            total += kernel.reshape(kernel.shape[0], -1)[offset : offset + width].sum(axis=1)
        elif kind == "Embedding":
            total += np.abs(np.asarray(layer.embeddings)).sum()
        elif kind == "Concatenate":
            before = sum(int(t.shape[-1]) for t in node.input_tensors[:position])
            total += _walk(node.output_tensors[0], offset + before, width, consumers)
        elif kind in _PASS_THROUGH:
            total += _walk(node.output_tensors[0], offset, width, consumers)
        else:
            raise ValueError(
                f"weight-based importance cannot look through a {kind} layer ('{layer.name}'); "
                "it supports Dense and Embedding first layers behind Concatenate, Flatten, Dropout or Normalization"
            )
    return total
