"""How featureaudit calls a Keras model: one coded float matrix in feature order, whatever the model's inputs.

:class:`tasks.subject.adapter.Adapter` says how the coded matrix becomes the model's inputs and which output
is audited; :class:`Forward` runs the model through a single compiled function on large batches,
which costs a small fraction of ``model.predict``, and returns predictions of the audited output.

Memory is bounded by bytes, not rows. :func:`memory_budget` (``FEATUREAUDIT_MEMORY_MB``, default
256 MiB, read here and nowhere else) caps every block of model input a method builds and every
forward batch; :func:`rows_for` turns it into a row count for a given width, so a block holds
fewer rows as the features grow and memory stays flat. TensorFlow copies a batch it is given and
keeps its activations, so a method's peak is about three budgets above TensorFlow's own ~0.8 GB
(measured: 1.6 GB at 10,000 features, whole rows). The row caps of narrow models are those used
before the budget existed (65,536 rows per forward batch, 262,144 per permutation block), so their
calls, and numbers, are unchanged.

A wide model (at least :data:`WIDE_FEATURES` features) whose feature matrix feeds one plain Dense
layer alone is also offered :attr:`Forward.first_layer`: methods that change a few columns of known
rows (permutation, Shapley chains) update that layer's pre-activations instead of building whole
rows, so one evaluation reads the layer's width instead of every feature.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from tasks.core.errors import FeatureAuditError
from tasks.subject.adapter import Adapter, head_loss, numeric_adapter

MEMORY_SETTING = "FEATUREAUDIT_MEMORY_MB"
DEFAULT_MEMORY_MB = 256  # MiB: one block of model input (permutation copies, Shapley chains, a forward batch)
DEFAULT_BATCH_ROWS = 65_536  # the most rows of one forward call, whatever the budget (the pre-budget value)
WIDE_FEATURES = 512  # from this many features, a model whose input feeds one Dense layer is evaluated after it
FLOAT32_BYTES = 4


def memory_budget() -> int:
    """The memory budget in bytes for one block of model input: ``FEATUREAUDIT_MEMORY_MB`` MiB, default 256.

    The only place the setting is read; a value that is not a positive number is refused.
    """
    raw = os.environ.get(MEMORY_SETTING, "").strip()
    if not raw:
        return DEFAULT_MEMORY_MB * 2**20
    try:
        mib = float(raw)
    except ValueError:
        mib = math.nan
    if not (math.isfinite(mib) and mib > 0):
        raise FeatureAuditError(
            f"{MEMORY_SETTING}={raw!r} is not a positive number of MiB; set it to the memory one block of model "
            f"input may take (e.g. {DEFAULT_MEMORY_MB}, the default), or unset it"
        )
    return max(1, int(mib * 2**20))


def rows_for(n_values: int, budget_bytes: int, *, cap: int | None = None, bytes_per_value: int = FLOAT32_BYTES) -> int:
    """How many rows of ``n_values`` values (``bytes_per_value`` bytes each) fit in ``budget_bytes``: at least 1,
    at most ``cap``."""
    rows = max(1, budget_bytes // (max(1, n_values) * bytes_per_value))
    return rows if cap is None else max(1, min(rows, cap))


@dataclass(frozen=True, eq=False)
class FirstLayer:
    """A wide model's first Dense layer, which the feature matrix feeds alone: ``X @ kernel + bias``."""

    kernel: np.ndarray  # (n_features, width) float32
    bias: np.ndarray  # (width,) float32

    @property
    def width(self) -> int:
        return self.kernel.shape[1]

    def pre_activations(self, X: np.ndarray) -> np.ndarray:
        """The layer's pre-activations for rows of the feature matrix, float32."""
        return np.asarray(X, dtype=np.float32) @ self.kernel + self.bias


class Forward:
    """The model as ``f(X) -> predictions``, compiled once, run in large batches.

    Predictions are probabilities for classifiers (a logit output is squashed when the
    compiled loss says ``from_logits``): shape ``(n,)`` for regression and binary tasks,
    ``(n, n_classes)`` for multiclass.

    A batch holds ``batch_rows`` rows: by default as many as the memory budget allows for the
    widest of the input and the model's layers, at most 65,536. For a wide model whose input
    feeds one Dense layer alone, :attr:`first_layer` is that layer and :meth:`after_first_layer`
    runs the rest of the model on its pre-activations (``None`` otherwise).
    """

    def __init__(self, model, adapter: Adapter | tuple[str, ...] | list[str], *, batch_rows: int | None = None):
        import tensorflow as tf

        self.model = model
        self.adapter = adapter if isinstance(adapter, Adapter) else numeric_adapter(model, adapter)
        self.squash = output_squash(head_loss(model, self.adapter))
        self.n_features = len(self.adapter.features)
        budget = memory_budget()
        widest = _widest_activation(model)
        self.batch_rows = batch_rows or rows_for(max(self.n_features, widest), budget, cap=DEFAULT_BATCH_ROWS)
        adapter = self.adapter

        def call(x):
            return adapter.pick(model(adapter.tensor_feed(x), training=False))

        spec = tf.TensorSpec(shape=(None, self.n_features), dtype=tf.float32)
        self._call = tf.function(call, input_signature=[spec], reduce_retracing=True)
        self.first_layer: FirstLayer | None = None
        self._after = None
        if self.n_features >= WIDE_FEATURES and adapter.plain and adapter.n_outputs == 1:
            split = _first_dense_split(model)
            if split is not None and split[0].width < self.n_features:
                first, rest = split
                spec = tf.TensorSpec(shape=(None, first.width), dtype=tf.float32)
                self._after = tf.function(rest, input_signature=[spec], reduce_retracing=True)
                self._after_rows = batch_rows or rows_for(max(first.width, widest), budget, cap=DEFAULT_BATCH_ROWS)
                if self._agrees(first):
                    self.first_layer = first
                else:
                    self._after = None

    @property
    def evaluation_width(self) -> int:
        """How many values one model evaluation reads: the first layer's width when methods evaluate after it."""
        return self.first_layer.width if self.first_layer is not None else self.n_features

    def __call__(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        return self._batched(self._call, X, self.batch_rows)

    def after_first_layer(self, Z: np.ndarray) -> np.ndarray:
        """Predictions from the first layer's pre-activations ``Z`` (rows × :attr:`first_layer` width)."""
        if self._after is None:
            raise ValueError("this model is not evaluated after its first layer (Forward.first_layer is None)")
        return self._batched(self._after, np.asarray(Z, dtype=np.float32), self._after_rows)

    def _batched(self, call, X: np.ndarray, rows: int) -> np.ndarray:
        outputs = [call(X[start : start + rows]).numpy() for start in range(0, len(X), rows)]
        return as_predictions(np.concatenate(outputs, axis=0) if outputs else np.zeros((0, 1)), self.squash)

    def _agrees(self, first: FirstLayer) -> bool:
        """Whether the model evaluated after its first layer matches the model itself on a few probe rows."""
        probe = np.random.default_rng(0).normal(size=(4, self.n_features)).astype(np.float32)
        whole = self._batched(self._call, probe, len(probe))
        after = self._batched(self._after, first.pre_activations(probe), len(probe))
        return bool(np.allclose(after, whole, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(whole).max()))))


def _first_dense_split(model):
    """``(FirstLayer, rest)`` when the model's single input feeds one plain float32 Dense layer alone; ``rest``
    maps that layer's pre-activations to the model's output inside a compiled function. ``None`` otherwise."""
    import keras

    if isinstance(model, keras.Sequential):
        layers = list(model.layers)
        dense, later = (layers[0], layers[1:]) if layers else (None, [])

        def after(z):
            h = dense.activation(z)
            for layer in later:
                h = layer(h, training=False)
            return h

    else:
        try:
            consumers = model.inputs[0]._keras_history.operation._outbound_nodes
            dense = consumers[0].operation if len(model.inputs) == 1 and len(consumers) == 1 else None
            if dense is None or len(dense._inbound_nodes) != 1:
                return None
            rest = keras.Model(dense.output, model.outputs)
        except (AttributeError, IndexError, ValueError):
            return None

        def after(z):
            return rest(dense.activation(z), training=False)

    if (type(dense) is not keras.layers.Dense or getattr(dense, "lora_enabled", False)
            or getattr(dense, "quantization_mode", None) or dense.compute_dtype != "float32"):
        return None

    def call(z):
        out = after(z)
        return out[0] if isinstance(out, (list, tuple)) else out

    kernel = np.asarray(dense.kernel, dtype=np.float32)
    bias = np.asarray(dense.bias, dtype=np.float32) if dense.bias is not None else np.zeros(kernel.shape[1], np.float32)
    return FirstLayer(kernel, bias), call


def _widest_activation(model) -> int:
    """The most values one row takes in any layer's output (0 where no layer says)."""
    widest = 0
    for layer in getattr(model, "layers", []):
        try:
            shape = tuple(layer.output.shape)[1:]
        except (AttributeError, ValueError, TypeError):
            continue
        if shape and all(isinstance(d, int) for d in shape):
            widest = max(widest, math.prod(shape))
    return widest


def as_predictions(raw: np.ndarray, squash: str | None = None) -> np.ndarray:
    """Raw model outputs as predictions: probabilities for classifiers (a logit output squashed as
    :func:`output_squash` says: "sigmoid", "softmax" or None), ``(n,)`` for one output, float64."""
    out = np.asarray(raw, dtype=np.float64)
    if squash == "sigmoid":
        out = 1.0 / (1.0 + np.exp(-out))
    elif squash == "softmax":
        out = np.exp(out - out.max(axis=-1, keepdims=True))
        out /= out.sum(axis=-1, keepdims=True)
    return out[:, 0] if out.ndim == 2 and out.shape[1] == 1 else out


def compiled_loss_name(loss) -> str | None:
    """The name of a compiled loss (a string or a loss object; see :func:`tasks.subject.adapter.head_loss`), if any."""
    if loss is None:
        return None
    if isinstance(loss, str):
        return loss
    name = getattr(loss, "name", None) or type(loss).__name__
    return str(name)


def output_squash(loss) -> str | None:
    """How a head compiled with ``loss`` turns its output into probabilities: "sigmoid" or "softmax" when the loss
    says ``from_logits``; None when the output already is what the task predicts."""
    if loss is None or isinstance(loss, str) or not getattr(loss, "from_logits", False):
        return None
    name = compiled_loss_name(loss).lower()
    return "sigmoid" if "binary" in name else "softmax"


def first_layer_view(forward, X: np.ndarray):
    """How blocks built from the rows ``X`` reach the model: ``(function on a block, X as a block holds it, kernel)``.

    Whole rows through ``forward`` (kernel None), or, for a wide model whose input feeds one Dense
    layer, that layer's pre-activations through ``forward.after_first_layer`` — a changed column then
    costs one row of the kernel instead of a whole row of inputs.
    """
    first = forward.first_layer if isinstance(forward, Forward) else None
    if first is None:
        return forward, X, None
    return forward.after_first_layer, first.pre_activations(X), first.kernel
