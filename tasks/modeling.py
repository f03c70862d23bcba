"""How featureaudit calls a Keras model: one float matrix in feature order, whatever the model's inputs.

A model takes either one input matrix (columns in feature order) or one named input per
feature (input name = column name; integer inputs feed an Embedding). :func:`input_layout`
checks the model against the features once; :class:`Forward` then runs the model through a
single compiled function on large batches, which costs a small fraction of ``model.predict``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.errors import ModelLoadError

DEFAULT_BATCH_ROWS = 65_536


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


class Forward:
    """The model as ``f(X) -> predictions``, compiled once, run in large batches.

    Predictions are probabilities for classifiers (a logit output is squashed when the
    compiled loss says ``from_logits``): shape ``(n,)`` for regression and binary tasks,
    ``(n, n_classes)`` for multiclass.
    """

    def __init__(self, model, features: tuple[str, ...], *, batch_rows: int = DEFAULT_BATCH_ROWS):
        import tensorflow as tf

        self.model = model
        self.layout = input_layout(model, features)
        self.batch_rows = batch_rows
        self.n_features = len(features)
        layout = self.layout

        def call(x):
            out = model(tensor_feed(layout, x), training=False)
            return out[0] if isinstance(out, (list, tuple)) else out

        spec = tf.TensorSpec(shape=(None, self.n_features), dtype=tf.float32)
        self._call = tf.function(call, input_signature=[spec], reduce_retracing=True)

    def __call__(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        outputs = [self._call(X[start : start + self.batch_rows]).numpy() for start in range(0, len(X), self.batch_rows)]
        return as_predictions(np.concatenate(outputs, axis=0) if outputs else np.zeros((0, 1)), self.model)


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
