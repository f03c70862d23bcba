"""Weight-based importance: first-layer weight magnitudes, the ranking the report puts to the test.

Per feature, the summed magnitude of the first-layer weights it feeds: the rows of the first
Dense kernel (through any Concatenate, Flatten, Dropout, Normalization or Rescaling in between), or
the whole Embedding table for an integer input. A scale-aware variant multiplies each row by the
standard deviation of the column as it reaches that layer: the feature's standard deviation on the
test split times the per-column gain of any Normalization, BatchNormalization or Rescaling layer the
walk passes through. Both look only at weights, so both share the caveats below.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

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
SCALED_NOTE = (
    "Scale-aware: |W| row sum times the standard deviation of the column as it reaches the first weighted layer, "
    "i.e. the feature's standard deviation on the test split times any per-column rescaling inside the model "
    "(Normalization, BatchNormalization, Rescaling); categoricals unscaled."
)

# Layers that neither mix columns nor carry the first-layer weights: look through them.
_PASS_THROUGH = {
    "Dropout", "GaussianNoise", "GaussianDropout", "AlphaDropout", "InputLayer", "Identity",
    "Normalization", "BatchNormalization", "LayerNormalization", "Rescaling", "Activation", "Flatten", "Reshape",
}
# Pass-through layers that rescale each column by a constant at inference: their gain is carried to the weights.
_RESCALING = {"Normalization", "BatchNormalization", "Rescaling"}


class _Reach(NamedTuple):
    """What the walk found for some input columns: naive and gain-weighted |W| sums, rescaling layers passed."""

    naive: np.ndarray
    effective: np.ndarray
    rescalers: tuple[tuple[str, str], ...]  # (layer class, layer name), in walk order


def weight_magnitudes(model, features: tuple[str, ...]) -> np.ndarray:
    """Sum of |first-layer weights| per feature, for single-matrix and named-input models."""
    return _first_layer(model, features).naive


def effective_magnitudes(model, features: tuple[str, ...]) -> np.ndarray:
    """Per feature, Σ over its first-layer rows of |W_row| times the column's gain from the model's own rescaling.

    The gain is the product of the per-column factors of the Normalization (1/√variance, or √variance
    when inverted), BatchNormalization (γ/√(moving variance + ε)) and Rescaling (|scale|) layers between
    the input and the first weighted layer, so effective magnitude × the raw column's standard deviation is
    |W| × the standard deviation of what that layer actually receives. An Embedding counts its table sum.
    """
    return _first_layer(model, features).effective


def weight_importance(
    model,
    features: tuple[str, ...],
    X: np.ndarray,
    *,
    categorical: tuple[str, ...] = (),
) -> list[ImportanceResult]:
    """The naive |W| ranking and its scale-aware variant, as two weight-based results."""
    reach = _first_layer(model, features)
    scale = X.std(axis=0).astype(float)
    for j, name in enumerate(features):
        if name in categorical:
            scale[j] = 1.0
    scaled_notes = (SCALED_NOTE, *_rescaler_notes(reach.rescalers), *CAVEATS)
    return [
        ImportanceResult.from_samples("weights", "weight-based", features, reach.naive, notes=CAVEATS),
        ImportanceResult.from_samples(
            "weights_scaled", "weight-based", features, reach.effective * scale, notes=scaled_notes
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


def _first_layer(model, features: tuple[str, ...]) -> _Reach:
    """Walk every feature to the first weighted layer, for single-matrix and named-input models."""
    consumers = _consumer_map(model)
    inputs = list(model.inputs)
    if len(inputs) == 1 and (len(features) > 1 or input_name(inputs[0]) != features[0]):
        return _walk(inputs[0], 0, len(features), consumers)
    by_name = {input_name(t): t for t in inputs}
    reaches = [_walk(by_name[f], 0, 1, consumers) for f in features]
    return _Reach(
        np.array([r.naive[0] for r in reaches]),
        np.array([r.effective[0] for r in reaches]),
        _unique(pair for r in reaches for pair in r.rescalers),
    )


def _rescaler_notes(rescalers: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    """One note naming the model's own rescaling layers the scale-aware weights took into account, if any."""
    if not rescalers:
        return ()
    names = [f"{kind} layer '{name}'" for kind, name in rescalers]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return (f"Scale-aware weights account for the model's own {listed}.",)


def _consumer_map(model) -> dict[int, list[tuple[object, object, int]]]:
    """id(tensor) -> [(layer, node, position of the tensor among the node's inputs)]."""
    consumers: dict[int, list[tuple[object, object, int]]] = {}
    for layer in model.layers:
        for node in getattr(layer, "_inbound_nodes", []):
            for position, tensor in enumerate(node.input_tensors):
                consumers.setdefault(id(tensor), []).append((layer, node, position))
    return consumers


def _walk(tensor, offset: int, width: int, consumers, gain: np.ndarray | None = None) -> _Reach:
    """Follow ``tensor[..., offset:offset+width]`` to the first weighted layer and sum |W| per column.

    ``gain`` is the per-column factor the tracked columns picked up from rescaling layers on the way
    (ones at the input); the effective sums weight each kernel row by it.
    """
    found = consumers.get(id(tensor), [])
    if not found:
        raise ValueError(f"no first-layer weights found for input '{tensor.name}'")
    gain = np.ones(width) if gain is None else gain
    naive, effective, rescalers = np.zeros(width), np.zeros(width), []
    for layer, node, position in found:
        kind = type(layer).__name__
        if kind in ("Dense", "EinsumDense") and hasattr(layer, "kernel"):
            kernel = np.abs(np.asarray(layer.kernel))
            rows = kernel.reshape(kernel.shape[0], -1)[offset : offset + width].sum(axis=1)
            naive += rows
            effective += rows * gain
        elif kind == "Embedding":
            table = np.abs(np.asarray(layer.embeddings)).sum()
            naive += table
            effective += table
        elif kind == "Concatenate" or kind in _PASS_THROUGH:
            if kind == "Concatenate":
                offset_out = offset + sum(int(t.shape[-1]) for t in node.input_tensors[:position])
                gain_out = gain
            elif kind in _RESCALING:
                offset_out = offset
                gain_out = gain * _column_gain(layer, node.input_tensors[position])[offset : offset + width]
                rescalers.append((kind, layer.name))
            else:
                offset_out, gain_out = offset, gain
            reach = _walk(node.output_tensors[0], offset_out, width, consumers, gain_out)
            naive += reach.naive
            effective += reach.effective
            rescalers.extend(reach.rescalers)
        else:
            raise ValueError(
                f"weight-based importance cannot look through a {kind} layer ('{layer.name}'); it supports Dense "
                "and Embedding first layers behind Concatenate, Flatten, Dropout, Normalization or Rescaling"
            )
    return _Reach(naive, effective, _unique(rescalers))


def _column_gain(layer, tensor) -> np.ndarray:
    """The factor a Normalization, BatchNormalization or Rescaling layer multiplies each last-axis column by.

    Computed as Keras does at inference (Normalization divides by max(√variance, ε)); a factor that
    varies along other axes too is averaged over them.
    """
    from keras import config

    kind = type(layer).__name__
    shape = tuple(1 if d is None else int(d) for d in tensor.shape) or (1,)
    if kind == "Normalization":
        std = np.maximum(np.sqrt(np.asarray(layer.variance, dtype=float)), config.epsilon())
        factor = std if layer.invert else 1.0 / std
    elif kind == "BatchNormalization":
        variance = np.asarray(layer.moving_variance, dtype=float)
        gamma = np.abs(np.asarray(layer.gamma, dtype=float)) if layer.scale else np.ones_like(variance)
        axis = layer.axis % len(shape)
        factor = gamma / np.sqrt(variance + layer.epsilon)
        factor = factor.reshape([-1 if d == axis else 1 for d in range(len(shape))])
    else:  # Rescaling
        factor = np.abs(np.asarray(layer.scale, dtype=float))
    return np.broadcast_to(factor, shape).reshape(-1, shape[-1]).mean(axis=0)


def _unique(pairs) -> tuple[tuple[str, str], ...]:
    return tuple(dict.fromkeys(pairs))
