"""How featureaudit calls a Keras model: one float matrix in feature order, whatever the model's inputs.

A model takes either one input matrix (columns in feature order) or one named input per
feature (input name = column name; integer inputs feed an Embedding). :func:`input_layout`
checks the model against the features once; :class:`Forward` then runs the model through a
single compiled function on large batches, which costs a small fraction of ``model.predict``.

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

from tasks.errors import FeatureAuditError, ModelLoadError

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


@dataclass(frozen=True)
class InputLayout:
    """How the columns of the feature matrix map onto the model's inputs."""

    named: bool
    names: tuple[str, ...]  # the model's input names, in model.inputs order
    columns: tuple[int, ...]  # for named inputs: which feature column feeds each input
    dtypes: tuple[str, ...]
    ranks: tuple[int, ...]  # 1 for shape (None,), 2 for (None, 1)


def input_layout(model, features: tuple[str, ...]) -> InputLayout:
    """Check that the model's inputs match the features and say how to feed them."""
    inputs = list(model.inputs)
    names = tuple(input_name(t) for t in inputs)
    if len(inputs) == 1:
        shape = tuple(inputs[0].shape)
        width = shape[-1] if len(shape) == 2 else None
        if len(features) == 1 and names[0] == features[0] and len(shape) in (1, 2):
            width = len(features)
        if width != len(features):
            raise ModelLoadError(
                f"the model takes one input of shape {shape}, but the manifest lists {len(features)} features; "
                "list the model's input columns, in order, under 'features' in manifest.json"
            )
        return InputLayout(False, names, (), (str(inputs[0].dtype),), (len(shape),))
    missing = [n for n in names if n not in features]
    if missing:
        raise ModelLoadError(
            f"the model has an input named '{missing[0]}' but the data has no such feature column; "
            f"model inputs: {', '.join(names)}"
        )
    unused = [f for f in features if f not in names]
    if unused:
        raise ModelLoadError(f"feature column '{unused[0]}' feeds none of the model's inputs ({', '.join(names)})")
    for tensor, name in zip(inputs, names):
        shape = tuple(tensor.shape)
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise ModelLoadError(f"model input '{name}' has shape {shape}; named inputs must take one column each")
    return InputLayout(
        named=True,
        names=names,
        columns=tuple(features.index(n) for n in names),
        dtypes=tuple(str(t.dtype) for t in inputs),
        ranks=tuple(len(t.shape) for t in inputs),
    )


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

    def __init__(self, model, features: tuple[str, ...], *, batch_rows: int | None = None):
        import tensorflow as tf

        self.model = model
        self.layout = input_layout(model, features)
        self.n_features = len(features)
        budget = memory_budget()
        widest = _widest_activation(model)
        self.batch_rows = batch_rows or rows_for(max(self.n_features, widest), budget, cap=DEFAULT_BATCH_ROWS)
        layout = self.layout

        def call(x):
            out = model(tensor_feed(layout, x), training=False)
            return out[0] if isinstance(out, (list, tuple)) else out

        spec = tf.TensorSpec(shape=(None, self.n_features), dtype=tf.float32)
        self._call = tf.function(call, input_signature=[spec], reduce_retracing=True)
        self.first_layer: FirstLayer | None = None
        self._after = None
        if self.n_features >= WIDE_FEATURES and not layout.named:
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
        return as_predictions(np.concatenate(outputs, axis=0) if outputs else np.zeros((0, 1)), self.model)

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


def tensor_feed(layout: InputLayout, x):
    """Inside a compiled function: a float32 feature tensor as the model's inputs."""
    import tensorflow as tf

    if not layout.named:
        return x
    feed = {}
    for name, col, dtype, rank in zip(layout.names, layout.columns, layout.dtypes, layout.ranks):
        column = tf.cast(x[:, col], dtype)
        feed[name] = column if rank == 1 else column[:, None]
    return feed


def model_feed(layout: InputLayout, X: np.ndarray):
    """The feature matrix as the model's inputs: the matrix itself, or one named column per input."""
    if not layout.named:
        return X
    return {
        name: X[:, col].astype(dtype) if rank == 1 else X[:, col : col + 1].astype(dtype)
        for name, col, dtype, rank in zip(layout.names, layout.columns, layout.dtypes, layout.ranks)
    }


def as_predictions(raw: np.ndarray, model) -> np.ndarray:
    """Raw model outputs as predictions: probabilities for classifiers (a logit output squashed when the compiled
    loss says ``from_logits``), ``(n,)`` for one output, float64."""
    out = np.asarray(raw, dtype=np.float64)
    squash = _output_squash(model)
    if squash == "sigmoid":
        out = 1.0 / (1.0 + np.exp(-out))
    elif squash == "softmax":
        out = np.exp(out - out.max(axis=-1, keepdims=True))
        out /= out.sum(axis=-1, keepdims=True)
    return out[:, 0] if out.ndim == 2 and out.shape[1] == 1 else out


def compiled_loss_name(model) -> str | None:
    """The name of the loss the model was compiled with, if any."""
    loss = getattr(model, "loss", None)
    if loss is None:
        return None
    if isinstance(loss, str):
        return loss
    name = getattr(loss, "name", None) or type(loss).__name__
    return str(name)


def _output_squash(model) -> str | None:
    loss = getattr(model, "loss", None)
    if loss is None or isinstance(loss, str) or not getattr(loss, "from_logits", False):
        return None
    name = compiled_loss_name(model).lower()
    return "sigmoid" if "binary" in name else "softmax"


def input_name(tensor) -> str:
    """A model input's name as the data's column would be named (without a ':0' suffix)."""
    name = getattr(tensor, "name", "") or ""
    return name.split(":")[0]


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
