"""The model adapter: the only code that knows how a Keras model is fed from the raw columns of a split.

Features are the raw columns of the split: numbers, integer codes and strings. The methods never
see those raw values; they work on one float32 matrix in feature order, the *coded* matrix, in which
a number is itself and a string (or an integer too large for float32) is its index in the column's
vocabulary (:class:`Column`). Shuffling, holding constant or switching a coded column is therefore the
same as doing it to the raw column. :meth:`Adapter.tensor_feed` (inside compiled functions) and
:meth:`Adapter.feed` (NumPy) decode the matrix and build exactly the structure the model takes:

- a model with one input gets a tensor; one built from a dict of inputs gets a dict by input name; one
  built from a list gets a list in ``model.inputs`` order (never a dict, which Keras matches by sorted
  key and can silently swap);
- an input of shape ``()`` or ``(1,)`` takes the column of the same name; a wider input takes the block
  of columns the manifest's ``inputs`` maps to it (``{"numeric": ["a", "b", "c"]}``), reshaped in C order
  to the input's shape; a model with a single input takes every feature, in C order, whatever its shape.

Which output is audited is the manifest's ``output`` (a name or an index); a model with several outputs
and no ``output`` is refused. Each column's dtype is checked against its input's dtype here, once: a
string column for a float input, a float column for a string lookup, a fractional value for an integer
input each get one line naming column and input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from tasks.core.errors import DataError, ModelLoadError

ColumnKind = Literal["number", "integer", "string"]
Structure = Literal["single", "dict", "list"]
#: Integers at least this large in magnitude are not exact in float32; such a column is coded by vocabulary.
FLOAT32_EXACT = 2**24


@dataclass(frozen=True)
class Column:
    """One raw feature column: its kind, whether it is categorical, and the vocabulary its codes index."""

    name: str
    kind: ColumnKind
    categorical: bool  # held at its mode when ablated, unscaled by the weights, left out of correlation clusters
    vocabulary: tuple | None = None  # code -> raw value; None when the coded value is the raw value

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Raw values from a column of the coded matrix."""
        if self.vocabulary is None:
            return codes
        return np.asarray(self.vocabulary)[np.asarray(codes).astype(np.int64)]


@dataclass(frozen=True)
class InputFeed:
    """One model input and the feature columns that feed it, in C order over ``shape``."""

    name: str
    columns: tuple[int, ...]
    shape: tuple[int, ...]  # the input's per-row shape as the model declares it: () or (1,) for one column
    dtype: str  # Keras dtype name: float32, int64, string, …

    @property
    def is_block(self) -> bool:
        return len(self.columns) > 1


@dataclass(frozen=True)
class Adapter:
    """How the coded feature matrix becomes the model's inputs, and which of its outputs is audited. Picklable."""

    features: tuple[str, ...]
    columns: tuple[Column, ...]
    inputs: tuple[InputFeed, ...]
    structure: Structure
    output: str | int | None = None  # how :meth:`pick` finds the audited output: a dict key or a list index
    n_outputs: int = 1
    output_name: str | None = None  # the audited output's name, when the model has several

    @property
    def categorical(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.categorical)

    @property
    def numeric(self) -> tuple[int, ...]:
        """The indices of the columns that are neither strings nor categorical codes."""
        return tuple(j for j, c in enumerate(self.columns) if not c.categorical)

    @property
    def coded(self) -> bool:
        """Whether any column is coded by a vocabulary (so the coded matrix is not the raw one)."""
        return any(c.vocabulary is not None for c in self.columns)

    @property
    def plain(self) -> bool:
        """One float input fed the whole matrix as it is: the model may be evaluated after its first layer."""
        return (self.structure == "single" and not self.coded and self.inputs[0].dtype.startswith("float")
                and len(self.inputs[0].shape) == 1)

    def blocks(self) -> dict[str, list[int]]:
        """The block inputs (more than one column) among several inputs, each an importance unit: 'input:<name>'."""
        if len(self.inputs) == 1:
            return {}
        return {f"input:{i.name}": list(i.columns) for i in self.inputs if i.is_block}

    def sources(self) -> list[tuple[str, int]]:
        """Per feature, the model input it feeds and its position in that input, flattened in C order."""
        where: dict[int, tuple[str, int]] = {}
        for feed in self.inputs:
            for position, column in enumerate(feed.columns):
                where[column] = (feed.name, position)
        return [where[j] for j in range(len(self.features))]

    def encode(self, frame: pd.DataFrame) -> np.ndarray:
        """The coded float32 matrix of a split's raw columns (already checked by :func:`build_adapter`)."""
        X = np.empty((len(frame), len(self.columns)), dtype=np.float32)
        for j, column in enumerate(self.columns):
            values = frame[column.name]
            if column.vocabulary is None:
                X[:, j] = values.to_numpy(dtype=np.float32)
            else:
                index = {v: i for i, v in enumerate(column.vocabulary)}
                X[:, j] = np.fromiter((index[v] for v in values.tolist()), dtype=np.float32, count=len(values))
        return X

    def feed(self, X: np.ndarray) -> Any:
        """The model's inputs from rows of the coded matrix, for ``fit`` and ``predict``: NumPy arrays, and
        ``tf.string`` tensors for string inputs."""
        arrays = []
        for feed in self.inputs:
            if any(self.columns[j].vocabulary is not None for j in feed.columns):
                block = np.stack([self.columns[j].decode(X[:, j]) for j in feed.columns], axis=1)
            else:
                block = X[:, list(feed.columns)]
            block = block.astype(_numpy_dtype(feed.dtype)).reshape((len(X), *feed.shape))
            if feed.dtype == "string":  # Keras' fit and predict refuse NumPy arrays of strings
                import tensorflow as tf

                block = tf.constant(block.astype(str))
            arrays.append(block)
        return self._structure(arrays)

    def tensor_feed(self, x) -> Any:
        """Inside a compiled function: the model's inputs from a float32 tensor of the coded matrix."""
        import tensorflow as tf

        tensors = []
        for feed in self.inputs:
            if any(self.columns[j].vocabulary is not None for j in feed.columns):
                parts = [self._decode_tensor(x[:, j], self.columns[j], feed.dtype) for j in feed.columns]
                block = tf.stack(parts, axis=1)
            elif self.structure == "single" and len(feed.shape) == 1:
                block = tf.cast(x, feed.dtype)  # the whole matrix, in order: no gather
            else:
                block = tf.cast(tf.gather(x, list(feed.columns), axis=1), feed.dtype)
            tensors.append(tf.reshape(block, (-1, *feed.shape)))
        return self._structure(tensors)

    def pick(self, out: Any) -> Any:
        """The audited output from what the model returned (a tensor, a list or a dict of them)."""
        if isinstance(out, dict):
            return out[self.output]
        if isinstance(out, (list, tuple)):
            return out[self.output if isinstance(self.output, int) else 0]
        return out

    def _structure(self, values: list) -> Any:
        if self.structure == "single":
            return values[0]
        if self.structure == "dict":
            return {feed.name: value for feed, value in zip(self.inputs, values)}
        return list(values)

    @staticmethod
    def _decode_tensor(codes, column: Column, dtype: str):
        import tensorflow as tf

        vocabulary = tf.constant(np.asarray(column.vocabulary))
        raw = tf.gather(vocabulary, tf.cast(codes, tf.int32))
        return raw if dtype == "string" else tf.cast(raw, dtype)


def build_adapter(model, features: tuple[str, ...], frames: dict[str, pd.DataFrame], *,
                  inputs: dict[str, list[str]] | None = None, output: str | int | None = None,
                  categorical: tuple[str, ...] = ()) -> Adapter:
    """Check the model against the raw columns and say how to feed it.

    ``frames`` maps a file name (used in messages) to each split the run uses (test, and train when
    there is one): vocabularies cover them all, so a code means the same value everywhere.
    """
    feeds, structure = _input_feeds(model, features, inputs or {})
    kinds = {j: _column_kind(frames, name) for j, name in enumerate(features)}
    for feed in feeds:
        for j in feed.columns:
            _check_dtype(features[j], kinds[j], feed, frames)
    columns = []
    for j, name in enumerate(features):
        feeds_of = [f for f in feeds if j in f.columns]
        takes_codes = any(not f.dtype.startswith("float") for f in feeds_of)
        kind = kinds[j]
        vocabulary = None
        if kind == "string" or (kind == "integer" and _max_abs(frames, name) >= FLOAT32_EXACT):
            values = pd.unique(pd.concat([frame[name] for frame in frames.values()], ignore_index=True))
            vocabulary = tuple(sorted(v.item() if isinstance(v, np.generic) else v for v in values))
        columns.append(Column(name, kind, categorical=kind == "string" or takes_codes or name in categorical,
                              vocabulary=vocabulary))
    n_outputs, key, name = _check_output(model, output)
    return Adapter(tuple(features), tuple(columns), tuple(feeds), structure, key, n_outputs, name)


def image_adapter(model, features: tuple[str, ...], shape: tuple[int, int, int], *,
                  output: str | int | None = None) -> Adapter:
    """How an image model is fed: its one input takes the flattened image (the pixel columns, C order) reshaped
    to ``shape``. A model with several inputs, or one whose input is not ``shape``, is refused in one line."""
    declared = _declared(model, "input")
    if isinstance(declared, (dict, list, tuple)):
        tensors = list(declared.values()) if isinstance(declared, dict) else list(declared)
        if len(tensors) != 1:
            raise ModelLoadError(f"the model takes {len(tensors)} inputs; an image model takes one, the images")
        declared = tensors[0]
    taken = tuple(declared.shape)[1:]
    if taken != tuple(shape):
        raise ModelLoadError(f"the model takes inputs of shape {taken}, but the split holds images of shape "
                             f"{tuple(shape)} (height, width, channels)")
    feed = InputFeed(input_name(declared), tuple(range(len(features))), tuple(shape), _dtype_name(declared.dtype))
    if not feed.dtype.startswith("float"):
        raise ModelLoadError(f"the model's input '{feed.name}' takes {feed.dtype}; an image model takes float pixels")
    columns = tuple(Column(name, "number", categorical=False) for name in features)
    n_outputs, key, name = _check_output(model, output)
    return Adapter(tuple(features), columns, (feed,), "single", key, n_outputs, name)


def _input_feeds(model, features: tuple[str, ...], mapping: dict[str, list[str]]) -> tuple[tuple[InputFeed, ...], Structure]:
    """Each model input with the feature columns that feed it, and the structure the model takes."""
    declared = _declared(model, "input")
    structure: Structure = "dict" if isinstance(declared, dict) else "list" if isinstance(declared, (list, tuple)) else "single"
    tensors = list(declared.values()) if isinstance(declared, dict) else list(declared) if structure == "list" else [declared]
    names = [input_name(t) for t in tensors]
    if structure == "dict":
        names = list(declared.keys())
    unknown = [name for name in mapping if name not in names]
    if unknown:
        raise ModelLoadError(f"manifest.json maps columns to input '{unknown[0]}', but the model has no such input; "
                             f"model inputs: {', '.join(names)}")
    for name, cols in mapping.items():
        missing = [c for c in cols if c not in features]
        if missing:
            raise ModelLoadError(f"manifest.json maps column '{missing[0]}' to input '{name}', but it is not a feature")
    feeds = []
    column = {c: j for j, c in enumerate(features)}
    for name, tensor in zip(names, tensors):
        shape = tuple(tensor.shape)[1:]
        if any(d is None for d in shape):
            raise ModelLoadError(f"model input '{name}' has shape {tuple(tensor.shape)} with a variable dimension; "
                                 "featureaudit feeds inputs of fixed shape from the split's columns")
        size = math.prod(shape)
        if name in mapping:
            cols = tuple(column[c] for c in mapping[name])
        elif len(tensors) == 1 and not (len(features) == 1 and size == 1):
            cols = tuple(range(len(features)))  # a single input takes every feature, in C order
        elif name in features:
            cols = (column[name],)
        else:
            wide = (f"; it takes {size} values per row, so map its columns in manifest.json: "
                    f"\"inputs\": {{\"{name}\": [\"col_a\", \"col_b\", …]}}") if size > 1 else ""
            raise ModelLoadError(f"the model has an input named '{name}' but the data has no such feature column"
                                 f"{wide}; model inputs: {', '.join(names)}")
        if len(cols) != size:
            what, where = ((f"manifest.json maps {len(cols)} columns to it", f"under 'inputs' → '{name}'")
                           if name in mapping else (f"the data has {len(features)} feature columns", "under 'features'"))
            raise ModelLoadError(f"model input '{name}' takes {size} values per row (shape {shape}), but {what}; "
                                 f"list {where} in manifest.json exactly the columns that feed it, in C order")
        feeds.append(InputFeed(name, cols, shape, _dtype_name(tensor.dtype)))
    fed = {j for feed in feeds for j in feed.columns}
    unused = [f for j, f in enumerate(features) if j not in fed]
    if unused:
        raise ModelLoadError(f"feature column '{unused[0]}' feeds none of the model's inputs ({', '.join(names)}); "
                             "drop it from 'features', or map it under 'inputs' in manifest.json")
    twice = [features[j] for j in sorted(fed) if sum(j in feed.columns for feed in feeds) > 1]
    if twice:
        raise ModelLoadError(f"column '{twice[0]}' is mapped to more than one model input; map each column once")
    return tuple(feeds), structure


def _check_output(model, output: str | int | None) -> tuple[int, str | int | None, str | None]:
    """How many outputs the model has, the audited one as :meth:`Adapter.pick` reads it, and its name."""
    declared = _declared(model, "output")
    if isinstance(declared, dict):
        names = list(declared.keys())
    elif isinstance(declared, (list, tuple)):
        names = [_tensor_owner(t) for t in declared]
    else:
        names = [_tensor_owner(declared)]
    if len(names) == 1:
        if output not in (None, 0, names[0]):
            raise ModelLoadError(f"manifest.json asks for output {output!r}, but the model has one output ('{names[0]}')")
        return 1, None, None
    if output is None:
        raise ModelLoadError(f"the model has {len(names)} outputs ({', '.join(names)}); say which one the target "
                             f"belongs to with \"output\": \"<name>\" (or its index) in manifest.json")
    if isinstance(output, bool) or not isinstance(output, (int, str)):
        raise ModelLoadError(f"manifest.json 'output' must be an output name or index, not {output!r}")
    if isinstance(output, int):
        if not 0 <= output < len(names):
            raise ModelLoadError(f"manifest.json asks for output {output}, but the model has outputs 0..{len(names) - 1} "
                                 f"({', '.join(names)})")
        return len(names), (names[output] if isinstance(declared, dict) else output), names[output]
    if output not in names:
        raise ModelLoadError(f"manifest.json asks for output '{output}', but the model's outputs are {', '.join(names)}")
    return len(names), (output if isinstance(declared, dict) else names.index(output)), output


def _declared(model, which: str) -> Any:
    """The model's inputs or outputs in the structure it was built with (a Sequential has one of each)."""
    import keras

    if isinstance(model, keras.Sequential):
        return getattr(model, f"{which}s")[0]
    return getattr(model, which)


def _column_kind(frames: dict[str, pd.DataFrame], name: str) -> ColumnKind:
    """What a column holds in every split: numbers, integers or strings (the same in each, else refused)."""
    kinds: dict[str, ColumnKind] = {}
    for source, frame in frames.items():
        series = frame[name]
        if pd.api.types.is_bool_dtype(series) or pd.api.types.is_integer_dtype(series):
            kinds[source] = "integer"
        elif pd.api.types.is_float_dtype(series):
            kinds[source] = "number"
        elif pd.api.types.is_string_dtype(series) or series.dtype == object:
            if series.isna().any():
                raise DataError(f"{source} column '{name}' has {int(series.isna().sum())} missing values; "
                                "fill them (e.g. with the lookup's out-of-vocabulary token) or drop the rows")
            if not all(isinstance(v, str) for v in series.tolist()):
                raise DataError(f"{source} column '{name}' mixes strings with other values; store one type per column")
            kinds[source] = "string"
        else:
            raise DataError(f"{source} column '{name}' has dtype {series.dtype}; featureaudit reads numbers, "
                            "integer codes and strings")
    strings = [source for source, kind in kinds.items() if kind == "string"]
    if strings and len(strings) < len(kinds):
        other = next(source for source, kind in kinds.items() if kind != "string")
        raise DataError(f"{strings[0]} column '{name}' holds strings, but {other} holds numbers there; "
                        "export every split the same way")
    values = set(kinds.values())
    return "string" if strings else "number" if "number" in values else "integer"


def _check_dtype(name: str, kind: ColumnKind, feed: InputFeed, frames: dict[str, pd.DataFrame]) -> None:
    """One line naming column and input when the column cannot feed the input as the model declares it."""
    source = next(iter(frames))  # the test split's name: the file a reader checks first
    what = {"string": "strings", "integer": "integers", "number": "floating-point numbers"}[kind]
    if feed.dtype == "string" and kind != "string":
        raise DataError(f"{source} column '{name}' holds {what}, but model input '{feed.name}' takes strings "
                        "(a StringLookup); export the raw string values, not codes")
    if feed.dtype != "string" and kind == "string":
        raise DataError(f"{source} column '{name}' holds strings, but model input '{feed.name}' takes {feed.dtype}; "
                        "encode the column, or put a StringLookup inside the model")
    if feed.dtype.startswith(("int", "uint", "bool")) and kind == "number":
        values = np.concatenate([frame[name].to_numpy(dtype=np.float64) for frame in frames.values()])
        if not np.all(values == np.round(values)):
            raise DataError(f"{source} column '{name}' holds fractional numbers, but model input '{feed.name}' takes "
                            f"{feed.dtype} codes")


def _max_abs(frames: dict[str, pd.DataFrame], name: str) -> float:
    return max(float(np.abs(frame[name].to_numpy(dtype=np.float64)).max(initial=0.0)) for frame in frames.values())


def _dtype_name(dtype: Any) -> str:
    name = getattr(dtype, "name", None) or str(dtype)
    return "string" if name in ("string", "str", "object") else name


def _numpy_dtype(dtype: str):
    return object if dtype == "string" else np.dtype(dtype)


def _tensor_owner(tensor) -> str:
    """The name of the layer that produced a symbolic tensor (how Keras names an output)."""
    history = getattr(tensor, "_keras_history", None)
    return history.operation.name if history is not None else input_name(tensor)


def input_name(tensor) -> str:
    """A model input's name as the data's column would be named (without a ':0' suffix)."""
    name = getattr(tensor, "name", "") or ""
    return name.split(":")[0]


def numeric_adapter(model, features: tuple[str, ...] | list[str], *, inputs: dict[str, list[str]] | None = None,
                    output: str | int | None = None) -> Adapter:
    """The adapter for numeric data without looking at it: every column coded as itself (integer inputs take codes).

    For callers that hold a float matrix already (tests, benchmarks); a run builds its adapter from the
    splits with :func:`build_adapter`.
    """
    features = tuple(features)
    feeds, structure = _input_feeds(model, features, inputs or {})
    columns = tuple(
        Column(name, "number", categorical=any(j in f.columns and not f.dtype.startswith("float") for f in feeds))
        for j, name in enumerate(features))
    n_outputs, key, name = _check_output(model, output)
    return Adapter(features, columns, feeds, structure, key, n_outputs, name)


def head_loss(model, adapter: Adapter) -> Any:
    """The compiled loss of the audited output (a model compiled with one loss per output has a dict or list)."""
    loss = getattr(model, "loss", None)
    if isinstance(loss, dict):
        return loss.get(adapter.output_name) if adapter.n_outputs > 1 else next(iter(loss.values()), None)
    if isinstance(loss, (list, tuple)):
        index = adapter.output if isinstance(adapter.output, int) else 0
        return loss[index] if index < len(loss) else None
    return loss


def head_model(model, adapter: Adapter):
    """The model with only the audited output (the model itself when it has one): what retraining fits."""
    if adapter.n_outputs == 1:
        return model
    import keras

    head = keras.Model(model.input, adapter.pick(model.output), name=f"{model.name}_{adapter.output}")
    loss = head_loss(model, adapter)
    if getattr(model, "optimizer", None) is not None and loss is not None:
        head.compile(optimizer=model.optimizer.__class__.from_config(model.optimizer.get_config()), loss=loss)
    return head
