"""Weight-based importance: first-layer weight magnitudes, the ranking the report puts to the test.

Per feature, the summed magnitude of the first-layer weights it feeds. :func:`input_reaches` follows every
element of every model input (its per-row shape flattened in C order) through the functional graph to the
first weighted layer and sums |W| there:

- a ``Dense`` or ``EinsumDense`` kernel (also inside ``TimeDistributed``): the rows of the columns the element
  became;
- an ``Embedding``: the whole table, for every element whose codes it looks up;
- on the way it looks through layers and operations that move columns without mixing them (``Concatenate``,
  ``Flatten``, ``Reshape``, ``Permute``, ``keras.ops.expand_dims``/``squeeze``/``reshape``/``cast``, slicing,
  arithmetic with constants, dropout and activation layers), nested models, and lookups and encodings:
  ``StringLookup``/``IntegerLookup``/``Hashing``/``Discretization`` with ``output_mode="int"`` turn an element
  into codes (for an ``Embedding`` or a ``CategoryEncoding``); with ``one_hot``/``multi_hot``/``count``/``tf_idf``,
  or through ``CategoryEncoding``, one element becomes a block of columns, whose rows it owns.

A layer whose weights are shared between columns (convolutions, recurrent layers, attention), a feature cross,
or a layer that combines several tensors stops the walk: the features behind it are :class:`Unattributable`,
and the weight method is skipped with that reason, naming them.

A scale-aware variant multiplies each row by the standard deviation of the column as it reaches that layer:
the raw column's standard deviation on the test split times the per-column gain of any Normalization,
BatchNormalization, Rescaling or constant factor on the way. Rows reached as codes or through an encoding or
an Embedding are unscaled: the raw column's scale does not enter them. Both look only at weights, so both
share the caveats below.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from tasks.core.names import listed
from tasks.core.options import MethodOptions
from tasks.core.result import Details, ImportanceResult
from tasks.methods.base import Context, Method, ResultSpec, Section
from tasks.registry.versions import ModelVersion
from tasks.subject.adapter import input_name
from tasks.subject.loaded import load_subject

CAVEATS = (
    "Non-linear activations and hidden-layer interactions change what a first-layer weight means downstream.",
    "A feature on a larger numeric scale gets smaller weights whatever its effect on the prediction.",
    "Dropout and weight decay spread or shrink weights, so magnitudes are unstable across trainings.",
    "An embedded or one-hot encoded categorical feature owns a whole table or block of weights, which inflates "
    "its sum.",
)
SCALED_NOTE = (
    "Scale-aware: |W| row sum times the standard deviation of the column as it reaches the first weighted layer, "
    "i.e. the feature's standard deviation on the test split times any per-column rescaling inside the model "
    "(Normalization, BatchNormalization, Rescaling); categoricals, lookups, encodings and embeddings unscaled."
)

# Layers and operations that neither mix columns nor carry the first-layer weights: the walk looks through them.
_PASS_THROUGH = {
    "Dropout", "GaussianNoise", "GaussianDropout", "AlphaDropout", "SpatialDropout1D", "SpatialDropout2D",
    "SpatialDropout3D", "InputLayer", "Identity", "TFDIdentity", "ActivityRegularization", "LayerNormalization",
    "Activation", "ReLU", "LeakyReLU", "ELU", "Cast",
}
# Layers and operations that keep the C order of the elements and only change the shape around them.
_RESHAPING = {"Flatten", "Reshape", "ExpandDims", "Squeeze"}
# Pass-through layers that rescale each column by a constant at inference: their gain is carried to the weights.
_RESCALING = {"Normalization", "BatchNormalization", "Rescaling"}
_CONCATENATING = {"Concatenate", "TFDConcat"}  # the layer, keras.ops.concatenate, FeatureSpace's concatenation
_ARITHMETIC = {"Add", "Subtract", "Multiply", "Divide", "TrueDivide"}  # with a constant
# Layers that turn each element into a category index (output_mode="int") or a block of indicator columns.
_LOOKUPS = {"StringLookup", "IntegerLookup", "Hashing", "Discretization"}
_ENCODINGS = {"one_hot", "multi_hot", "count", "tf_idf"}
_KERNELS = {"Dense", "EinsumDense"}
# Weighted or mixing layers whose weights belong to no single column: why each stops the walk.
_SHARED = {
    **dict.fromkeys(
        ("Conv1D", "Conv2D", "Conv3D", "SeparableConv1D", "SeparableConv2D", "DepthwiseConv1D", "DepthwiseConv2D",
         "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D"),
        "mixes neighbouring columns: its filters map to no single feature",
    ),
    **dict.fromkeys(
        ("LSTM", "GRU", "SimpleRNN", "RNN", "Bidirectional"),
        "shares its weights across the steps of a sequence and carries each step into the next: its weights map "
        "to no single feature",
    ),
    **dict.fromkeys(
        ("MultiHeadAttention", "GroupedQueryAttention", "Attention", "AdditiveAttention"),
        "mixes positions through attention: its projections map to no single feature",
    ),
    "HashedCrossing": "hashes a combination of features into shared buckets: its columns map to no single feature",
    "Lambda": "runs Python code that weight-based importance cannot look into",
}


class Unattributable(Exception):
    """First-layer weights that cannot be attributed to some features: ``reason`` says why, ``features`` which.

    Raised by :func:`weight_importance` with the features it could not place (``features``), and by
    :func:`input_reaches` with the model inputs it could not follow (``inputs``; ``features`` empty there).
    """

    def __init__(self, reason: str, features: tuple[str, ...] = (), *, inputs: tuple[str, ...] = ()):
        self.reason = reason
        self.features = tuple(features)
        self.inputs = tuple(inputs)
        if self.features:
            message = f"weight-based importance cannot place {listed(self.features)}: {reason}"
        elif self.inputs:
            inputs = "model input" if len(self.inputs) == 1 else "model inputs"
            message = f"weight-based importance cannot follow {inputs} {listed(self.inputs)}: {reason}"
        else:
            message = reason
        super().__init__(message)

    def __reduce__(self):  # pickled whole (Dask, Prefect results), not from the message alone
        return _unattributable, (self.reason, self.features, self.inputs)


def _unattributable(reason: str, features: tuple[str, ...], inputs: tuple[str, ...]) -> Unattributable:
    return Unattributable(reason, features, inputs=inputs)


class Reach(NamedTuple):
    """What the walk found for one model input, one value per element of its per-row shape in C order."""

    naive: np.ndarray  # Σ |W| over the first-layer rows (or Embedding tables) the element feeds
    effective: np.ndarray  # the same, each row times the element's gain from the model's own rescaling
    rescalers: tuple[tuple[str, str], ...]  # (layer class, layer name), in walk order
    encoded: np.ndarray  # the part of ``effective`` reached as codes, an encoding or an Embedding: not scaled


def input_reaches(model) -> dict[str, Reach]:
    """Each model input's :class:`Reach`, by input name (``model.inputs[i].name`` without ``:0``).

    An input the model does not use reaches nothing (zeros). Raises :class:`Unattributable` naming every input
    whose walk stopped at a layer it cannot attribute.
    """
    reaches, problems = _reaches(model)
    if problems:
        raise _unplaced({name: (name,) for name in problems}, problems, what="inputs")
    return reaches


def weight_importance(
    model,
    features: tuple[str, ...],
    sources: list[tuple[str, int]] | tuple[tuple[str, int], ...],
    scale: np.ndarray,
    *,
    categorical: tuple[str, ...] = (),
) -> list[ImportanceResult]:
    """The naive |W| ranking and its scale-aware variant, as two weight-based results.

    ``sources[j] = (input name, flat index)`` is the element of the model input that feature ``j`` feeds;
    ``scale[j]`` is its column's standard deviation (taken as 1 for the ``categorical`` features). Raises
    :class:`Unattributable` naming the features whose first-layer weights cannot be placed, and why.
    """
    reach = _place(model, features, sources)
    scale = np.asarray(scale, dtype=float).copy()
    if scale.shape != (len(features),):
        raise ValueError(f"scale has shape {scale.shape}; expected one standard deviation per feature ({len(features)})")
    scale[[j for j, name in enumerate(features) if name in categorical]] = 1.0
    scaled = (reach.effective - reach.encoded) * scale + reach.encoded
    scaled_notes = (SCALED_NOTE, *_rescaler_notes(reach.rescalers), *CAVEATS)
    return [
        ImportanceResult.from_samples("weights", "weight-based", features, reach.naive, notes=CAVEATS),
        ImportanceResult.from_samples("weights_scaled", "weight-based", features, scaled, notes=scaled_notes),
    ]


def weight_magnitudes(model, features: tuple[str, ...], sources=None) -> np.ndarray:
    """Sum of |first-layer weights| per feature; ``sources`` as for :func:`weight_importance` (default: a model fed
    the plain way, see :func:`feature_sources`)."""
    return _place(model, features, sources or feature_sources(model, features)).naive


def effective_magnitudes(model, features: tuple[str, ...]) -> np.ndarray:
    """Per feature, Σ over its first-layer rows of |W_row| times the column's gain from the model's own rescaling.

    The gain is the product of the per-column factors of the Normalization (1/√variance, or √variance
    when inverted), BatchNormalization (γ/√(moving variance + ε)) and Rescaling (|scale|) layers between
    the input and the first weighted layer, so effective magnitude × the raw column's standard deviation is
    |W| × the standard deviation of what that layer actually receives. An Embedding counts its table sum, an
    encoded block its rows, unscaled.
    """
    return _place(model, features, feature_sources(model, features)).effective


def feature_sources(model, features: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    """Where each feature enters a model fed the plain way: a single input takes every feature in C order,
    otherwise each feature feeds the input of the same name (shape ``()`` or ``(1,)``)."""
    names = [input_name(t) for t in model.inputs]
    if len(names) == 1 and (len(features) > 1 or names[0] != features[0]):
        return tuple((names[0], j) for j in range(len(features)))
    missing = [f for f in features if f not in names]
    if missing:
        raise ValueError(f"feature '{missing[0]}' feeds none of the model's inputs ({', '.join(names)})")
    return tuple((f, 0) for f in features)


def audit_weights(version: ModelVersion) -> list[ImportanceResult]:
    """Weight-based importance of one model version; one skipped result, with the reason, where it cannot place
    every feature. An image version's pixels are summed per patch; a convolution's filters, shared by every
    position, place no pixel: the result is skipped, saying so, with the first-layer filters to show."""
    subject = load_subject(version)
    features, categorical = subject.features, subject.categorical
    scale = subject.test.X.std(axis=0)  # the categorical's are taken as 1: a code's spread means nothing
    patches = subject.patches()
    try:
        results = weight_importance(subject.model, features, subject.adapter.sources(), scale, categorical=categorical)
    except Unattributable as exc:
        reason, details = str(exc), None
        filters = first_filters(subject.model) if patches else None
        if filters is not None:
            reason, details = (f"the first weighted layer, {filters.layer}, is a convolution: its filters are shared "
                               "by every position of the image, so no weight belongs to a pixel or a patch and a "
                               "weight ranking is undefined for this model; its filters are drawn instead"), filters
        skipped = ImportanceResult.not_ok("weights", "weight-based", tuple(patches) or features, status="skipped",
                                          reason=reason)
        return [dataclasses.replace(skipped, details=details)]
    if not patches:
        return results
    return [ImportanceResult.from_samples(r.method, r.kind, tuple(patches),
                                          np.array([r.importances_mean[cols].sum() for cols in patches.values()]),
                                          notes=(PATCH_NOTE, *r.notes)) for r in results]


PATCH_NOTE = "Image: a patch's weight is the sum over its pixels and channels of their first-layer |W| (or |W|·std)."


@dataclass(frozen=True)
class FilterDetails(Details):
    """A convolutional first layer's filters, for the report to draw: ``kernels[k]`` is filter ``k`` averaged over
    its input channels, at most :data:`MAX_FILTERS` of them."""

    layer: str
    shape: tuple[int, ...]  # the kernel's (height, width, input channels, filters)
    kernels: list[list[list[float]]]


MAX_FILTERS = 16


def first_filters(model) -> FilterDetails | None:
    """The first convolution's filters, looking into nested models; None when the model has none."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found = first_filters(layer)
            if found is not None:
                return found
        elif isinstance(layer, keras.layers.Conv2D):
            kernel = np.asarray(layer.kernel)
            kernels = kernel.mean(axis=2).transpose(2, 0, 1)[:MAX_FILTERS]
            return FilterDetails(f"{layer.name} ({type(layer).__name__})", tuple(kernel.shape),
                                 kernels.round(4).tolist())
    return None


def section(result: ImportanceResult) -> dict[str, Any] | None:
    """The weights' own section, for an image model whose first layer is a convolution: its filters."""
    from tasks.core.charts import data_uri, filter_grid

    if not isinstance(result.details, FilterDetails):
        return None
    d = result.details
    return {"layer": d.layer, "shape": d.shape, "shown": len(d.kernels),
            "chart": data_uri(filter_grid(np.asarray(d.kernels)))}


class Options(MethodOptions):
    """First-layer weights take no options."""


def compute(subject, options: Options, context: Context) -> list[ImportanceResult]:
    """Rank features by first-layer weight magnitudes, naive and scale-aware (skipped where they cannot be placed)."""
    results = audit_weights(subject.version)
    if results[0].ok:
        context.logger.info("weights: ranked %d features by first-layer |W|", len(subject.version.features))
    else:
        context.logger.warning("weights: skipped: %s", results[0].error)
    return results


METHOD = Method(
    name="weights", title="First-layer weights", kind="weight-based", units=frozenset({"column", "patch"}),
    results=(ResultSpec("weights", "First-layer weights |W|"),
             ResultSpec("weights_scaled", "Scale-aware weights |W|·std")),
    options=Options, compute=compute, shared=(),  # no option changes a weight
    stored=(FilterDetails,), section=Section("weights.html.j2", section),
)


def _place(model, features: tuple[str, ...], sources) -> Reach:
    """Each feature's share of its input's reach, or :class:`Unattributable` naming the features it cannot place."""
    if len(sources) != len(features):
        raise ValueError(f"{len(sources)} sources for {len(features)} features; give one (input, index) per feature")
    reaches, problems = _reaches(model)
    known = [input_name(t) for t in model.inputs]
    unplaced: dict[str, list[str]] = {}
    rows: list[tuple[Reach, int]] = []
    for feature, (name, index) in zip(features, sources):
        if name not in reaches and name not in problems:
            raise ValueError(f"feature '{feature}' is said to feed input '{name}', but the model's inputs are "
                             f"{', '.join(known)}")
        if name in problems:
            unplaced.setdefault(name, []).append(feature)
            continue
        size = len(reaches[name].naive)
        if not 0 <= index < size:
            raise ValueError(f"feature '{feature}' is said to feed element {index} of input '{name}', which has "
                             f"{size} per row")
        rows.append((reaches[name], index))
    if unplaced:
        raise _unplaced({n: tuple(fs) for n, fs in unplaced.items()}, problems, what="features")
    return Reach(
        np.array([r.naive[i] for r, i in rows], dtype=float),
        np.array([r.effective[i] for r, i in rows], dtype=float),
        _unique(pair for r, _ in rows for pair in r.rescalers),
        np.array([r.encoded[i] for r, i in rows], dtype=float),
    )


def _unplaced(named: dict[str, tuple[str, ...]], problems: dict[str, str], *, what: str) -> Unattributable:
    """One :class:`Unattributable` for the inputs that stopped, naming ``named[input]`` for each."""
    by_reason: dict[str, list[str]] = {}
    for name, names in named.items():
        by_reason.setdefault(problems[name], []).extend(names)
    everyone = tuple(n for names in by_reason.values() for n in names)
    if len(by_reason) == 1:
        reason = next(iter(by_reason))
    else:
        reason = "; ".join(f"{r} (for {listed(tuple(names))})" for r, names in by_reason.items())
    if what == "inputs":
        return Unattributable(reason, inputs=everyone)
    return Unattributable(reason, everyone)


def _rescaler_notes(rescalers: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    """One note naming the model's own rescaling layers the scale-aware weights took into account, if any."""
    if not rescalers:
        return ()
    names = [f"{kind} layer '{name}'" for kind, name in rescalers]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return (f"Scale-aware weights account for the model's own {listed}.",)


# --- the walk ---------------------------------------------------------------------------------------------


class _Stop(Exception):
    """A walk reached something it cannot attribute; the message says what and why."""


@dataclass(frozen=True, eq=False)
class _Graph:
    """One functional graph: its inputs, who consumes each tensor, and which tensors are its outputs."""

    inputs: list
    consumers: dict[int, list[tuple[Any, Any, int]]]  # id(tensor) -> [(operation, node, position among its inputs)]
    outputs: dict[int, int]  # id(tensor) -> index among the graph's outputs


@dataclass(frozen=True, eq=False)
class _Track:
    """Where one input's elements are in a tensor of the walk, one entry per element of the tensor (C order)."""

    src: np.ndarray  # the input element each element carries, -1 for elements of other inputs
    gain: np.ndarray  # the factor each picked up from rescaling on the way (values only)
    form: str = "values"  # "values": the input's numbers; "codes": category indices; "encoded": indicator columns


@dataclass(eq=False)
class _Sums:
    """What one input's walk has added up so far, per input element."""

    naive: np.ndarray
    effective: np.ndarray
    encoded: np.ndarray
    rescalers: list[tuple[str, str]] = field(default_factory=list)


def _reaches(model) -> tuple[dict[str, Reach], dict[str, str]]:
    """Every input's :class:`Reach`, and why the walk stopped for the inputs it could not follow."""
    graphs: dict[int, _Graph] = {}
    top = _graph(model, graphs)
    reaches, problems = {}, {}
    for tensor in model.inputs:
        name = input_name(tensor)
        row = _row_shape(tensor)
        if row is None:
            problems[name] = f"input '{name}' has shape {tuple(tensor.shape)}: its elements cannot be numbered"
            continue
        size = int(np.prod(row))
        sums = _Sums(np.zeros(size), np.zeros(size), np.zeros(size))
        try:
            _walk(tensor, _Track(np.arange(size), np.ones(size)), top, sums, (), graphs)
        except _Stop as stop:
            problems[name] = str(stop)
            continue
        reaches[name] = Reach(sums.naive, sums.effective, _unique(sums.rescalers), sums.encoded)
    return reaches, problems


def _graph(model, graphs: dict[int, _Graph]) -> _Graph:
    """The model's functional graph, found backwards from its outputs (so stray nodes of shared layers stay out)."""
    if id(model) in graphs:
        return graphs[id(model)]
    outputs = list(model.outputs)
    consumers: dict[int, list[tuple[Any, Any, int]]] = {}
    seen: set[int] = set()
    stack = list(outputs)
    while stack:
        history = getattr(stack.pop(), "_keras_history", None)
        if history is None:
            continue
        node = history.operation._inbound_nodes[history.node_index]
        if id(node) in seen:
            continue
        seen.add(id(node))
        for position, tensor in enumerate(node.input_tensors):
            consumers.setdefault(id(tensor), []).append((history.operation, node, position))
            stack.append(tensor)
    graphs[id(model)] = _Graph(list(model.inputs), consumers, {id(t): i for i, t in enumerate(outputs)})
    return graphs[id(model)]


def _walk(tensor, track: _Track, graph: _Graph, sums: _Sums, exits: tuple, graphs: dict[int, _Graph]) -> None:
    """Follow ``track`` from ``tensor`` to every first weighted layer it reaches and add up |W| into ``sums``.

    ``exits`` are the (graph, node) calls of the nested models the walk is inside, innermost last.
    """
    for operation, node, position in graph.consumers.get(id(tensor), []):
        _step(operation, node, position, track, graph, sums, exits, graphs)
    if id(tensor) in graph.outputs:
        if not exits:
            raise _Stop("it reaches the model's output without passing a weighted layer")
        outer, call = exits[-1]
        _walk(call.output_tensors[graph.outputs[id(tensor)]], track, outer, sums, exits[:-1], graphs)


def _step(operation, node, position: int, track: _Track, graph: _Graph, sums: _Sums, exits: tuple,
          graphs: dict[int, _Graph]) -> None:
    """One operation on the walk: add up its weights, step into it (a nested model), or carry the track through."""
    import keras

    kind = _kind(operation)
    if isinstance(operation, keras.Model):
        inner = _graph(operation, graphs)
        entry = inner.inputs[position]
        if _row_shape(entry) != _row_shape(node.input_tensors[position]):
            raise _Stop(f"{_describe(operation)} takes a tensor of another shape than it is given")
        _walk(entry, track, inner, sums, (*exits, (graph, node)), graphs)
    elif kind in _KERNELS and hasattr(operation, "kernel"):
        _add_kernel_rows(operation, node.input_tensors[position], track, sums)
    elif kind == "TimeDistributed" and _kind(operation.layer) in _KERNELS:  # the same Dense at every step
        _add_kernel_rows(operation.layer, node.input_tensors[position], track, sums)
    elif kind == "Embedding":
        table = float(np.abs(np.asarray(operation.embeddings)).sum())
        for index in np.unique(track.src[track.src >= 0]):
            sums.naive[index] += table
            sums.effective[index] += table
            sums.encoded[index] += table
    else:
        _walk(node.output_tensors[0], _carry(operation, node, position, track, sums), graph, sums, exits, graphs)


def _add_kernel_rows(layer, tensor, track: _Track, sums: _Sums) -> None:
    """Add each tracked element's |kernel row| sum (an element of the last axis, column ``n % width``)."""
    kernel = np.abs(np.asarray(layer.kernel, dtype=float))
    row = _row_shape(tensor)
    if row is None or not row or row[-1] != kernel.shape[0] or int(np.prod(row)) != len(track.src):
        raise _Stop(f"{_describe(layer)} has a kernel whose rows do not line up with its input's columns")
    per_row = kernel.reshape(kernel.shape[0], -1).sum(axis=1)[np.arange(len(track.src)) % kernel.shape[0]]
    tracked = track.src >= 0
    index, rows = track.src[tracked], per_row[tracked]
    size = len(sums.naive)
    sums.naive += np.bincount(index, rows, minlength=size)
    if track.form == "values":
        sums.effective += np.bincount(index, rows * track.gain[tracked], minlength=size)
    else:
        sums.effective += np.bincount(index, rows, minlength=size)
        sums.encoded += np.bincount(index, rows, minlength=size)


def _carry(operation, node, position: int, track: _Track, sums: _Sums) -> _Track:
    """The track on the operation's output, for operations that move, rescale or encode columns without mixing
    them; :class:`_Stop` for anything else."""
    kind = type(operation).__name__
    source, out = node.input_tensors[position], node.output_tensors[0]
    if kind in _SHARED:
        raise _Stop(f"{_describe(operation)} {_SHARED[kind]}")
    if len(node.input_tensors) > 1 and kind not in _CONCATENATING:
        raise _Stop(f"{_describe(operation)} combines several tensors: its output columns map to no single feature")
    if kind in _PASS_THROUGH or kind in _RESHAPING:
        return _same_size(operation, track, out)
    if kind in _RESCALING:
        if track.form != "values":  # codes and indicator columns are not rescaled features: left unscaled
            return _same_size(operation, track, out)
        sums.rescalers.append((kind, operation.name))
        return _Track(track.src, track.gain * _gain(operation, source, out), track.form)
    if kind in _CONCATENATING:
        return _concatenated(operation, node, position, track)
    if kind == "GetItem":
        return _sliced(operation, node, track)
    if kind == "Permute" or kind == "Transpose":
        return _permuted(operation, source, out, track)
    if kind in _ARITHMETIC:
        return _with_constant(operation, node, track)
    if kind in _LOOKUPS or kind in ("CategoryEncoding", "TextVectorization"):
        return _encoded(operation, source, out, track)
    if getattr(operation, "weights", None):
        raise _Stop(f"{_describe(operation)} holds weights whose layout weight-based importance does not know; it "
                    "reads Dense, EinsumDense and Embedding first layers (and layers derived from them)")
    raise _Stop(f"weight-based importance cannot look through {_describe(operation)}; it supports Dense, "
                "EinsumDense and Embedding first layers behind reshapes, concatenations, dropout, rescaling, "
                "lookups and encodings")


def _same_size(operation, track: _Track, out) -> _Track:
    if _size(out) != len(track.src):
        raise _Stop(f"{_describe(operation)} changes the number of columns in a way the walk cannot follow")
    return track


def _concatenated(operation, node, position: int, track: _Track) -> _Track:
    """The track's elements inside the concatenation, the other parts untracked."""
    rows = [_row_shape(t) for t in node.input_tensors]
    axis = int(getattr(operation, "axis", -1))
    rank = len(rows[position]) + 1 if rows[position] is not None else 0
    if any(r is None or len(r) + 1 != rank for r in rows) or axis % rank == 0:
        raise _Stop(f"{_describe(operation)} joins tensors the walk cannot line up")
    axis = axis % rank - 1

    def joined(values: np.ndarray, fill) -> np.ndarray:
        parts = [values.reshape(r) if i == position else np.full(r, fill, dtype=values.dtype)
                 for i, r in enumerate(rows)]
        return np.concatenate(parts, axis=axis).ravel()

    return _Track(joined(track.src, -1), joined(track.gain, 1.0), track.form)


def _sliced(operation, node, track: _Track) -> _Track:
    """``x[key]`` applied to the track itself (the key keeps the batch axis whole)."""
    source, out = node.input_tensors[0], node.output_tensors[0]
    key = node.arguments.args[1] if len(node.arguments.args) > 1 else None
    key = tuple(key) if isinstance(key, (list, tuple)) else (key,)
    row, out_row = _row_shape(source), _row_shape(out)
    if row is None or out_row is None or not key or key[0] != slice(None):
        raise _Stop(f"{_describe(operation)} slices in a way the walk cannot follow")
    try:
        src = track.src.reshape((1, *row))[key]
        gain = track.gain.reshape((1, *row))[key]
    except (IndexError, TypeError, ValueError):
        raise _Stop(f"{_describe(operation)} slices in a way the walk cannot follow") from None
    if src.shape != (1, *out_row):
        raise _Stop(f"{_describe(operation)} slices in a way the walk cannot follow")
    return _Track(src.ravel(), gain.ravel(), track.form)


def _permuted(operation, source, out, track: _Track) -> _Track:
    """A ``Permute`` layer or ``keras.ops.transpose`` that keeps the batch axis first."""
    row = _row_shape(source)
    if type(operation).__name__ == "Permute":
        order = [int(d) - 1 for d in operation.dims]
    else:
        axes = getattr(operation, "axes", None)
        order = None if axes is None or int(axes[0]) != 0 else [int(a) - 1 for a in axes[1:]]
    if row is None or order is None or sorted(order) != list(range(len(row))):
        raise _Stop(f"{_describe(operation)} moves the batch axis or is not a permutation the walk can follow")
    return _Track(track.src.reshape(row).transpose(order).ravel(), track.gain.reshape(row).transpose(order).ravel(),
                  track.form)


def _with_constant(operation, node, track: _Track) -> _Track:
    """``x + c``, ``x - c``, ``x * c``, ``x / c`` (and ``c`` first): |c| is a gain for products and quotients by c."""
    args, tensor = node.arguments.args, node.input_tensors[0]
    constants = [a for a in args if a is not tensor]
    if len(args) != 2 or len(constants) != 1 or node.arguments.kwargs:
        raise _Stop(f"{_describe(operation)} combines the column with something the walk cannot read")
    tensor_first = args[0] is tensor
    try:
        constant = np.asarray(constants[0], dtype=float)
    except (TypeError, ValueError):
        raise _Stop(f"{_describe(operation)} combines the column with something the walk cannot read") from None
    row, out_row = _row_shape(node.input_tensors[0]), _row_shape(node.output_tensors[0])
    if row is None or out_row is None:
        raise _Stop(f"{_describe(operation)} has a shape the walk cannot follow")
    try:  # a broadcast constant can widen the tensor: each new element carries the element it copies
        src = np.broadcast_to(track.src.reshape((1, *row)), (1, *out_row)).ravel()
        gain = np.broadcast_to(track.gain.reshape((1, *row)), (1, *out_row)).ravel()
        kind = type(operation).__name__
        if track.form == "values" and (kind == "Multiply" or (kind in ("Divide", "TrueDivide") and tensor_first)):
            factor = np.abs(constant) if kind == "Multiply" else 1.0 / np.abs(constant)
            gain = gain * np.broadcast_to(factor, (1, *out_row)).ravel()
    except ValueError:
        raise _Stop(f"{_describe(operation)} broadcasts in a way the walk cannot follow") from None
    return _Track(src, gain, track.form)


def _encoded(layer, source, out, track: _Track) -> _Track:
    """A lookup or encoding layer: codes (``output_mode="int"``), or one block of indicator columns per element."""
    mode = getattr(layer, "output_mode", "int")
    out_row = _row_shape(out)
    if out_row is None:
        raise _Stop(f"{_describe(layer)} gives an output of unknown width")
    if type(layer).__name__ == "TextVectorization":  # tokens (or a bag of them) of one string element
        if len(np.unique(track.src)) != 1:
            raise _Stop(f"{_describe(layer)} takes several columns at once: its tokens map to no single feature")
        return _Track(np.full(_size(out), track.src[0]), np.ones(_size(out)), "codes" if mode == "int" else "encoded")
    if mode == "int":
        return _Track(_same_size(layer, track, out).src, track.gain, "codes")
    if mode not in _ENCODINGS:
        raise _Stop(f"{_describe(layer)} has output_mode={mode!r}, which the walk does not know")
    depth = out_row[-1] if out_row else 0
    expected = _encoding_width(layer)
    if expected is not None and expected != depth:
        raise _Stop(f"{_describe(layer)} gives {depth} columns for {expected} categories")
    size = _size(out)
    if mode == "one_hot":  # each element -> its own block (a last axis of 1 is replaced by the block)
        if size != len(track.src) * depth:
            raise _Stop(f"{_describe(layer)} encodes in a shape the walk cannot follow")
        return _Track(np.repeat(track.src, depth), np.ones(size), "encoded")
    # multi_hot, count, tf_idf: the elements along the last axis share one block
    groups = size // depth if depth else 0
    if not groups or groups * depth != size or len(track.src) % groups:
        raise _Stop(f"{_describe(layer)} encodes in a shape the walk cannot follow")
    members = track.src.reshape(groups, -1)
    if (members != members[:, :1]).any():
        raise _Stop(f"{_describe(layer)} with output_mode={mode!r} counts several columns into one block: its "
                    "columns map to no single feature")
    return _Track(np.repeat(members[:, 0], depth), np.ones(size), "encoded")


def _encoding_width(layer) -> int | None:
    """How many columns the layer's encoding has by its own state: vocabulary (with OOV and mask indices), bins,
    tokens."""
    kind = type(layer).__name__
    if kind in ("StringLookup", "IntegerLookup", "TextVectorization"):
        if getattr(layer, "pad_to_max_tokens", False) and getattr(layer, "max_tokens", None):
            return int(layer.max_tokens)
        return int(layer.vocabulary_size())
    if kind == "Hashing":
        return int(layer.num_bins)
    if kind == "Discretization":
        boundaries = getattr(layer, "bin_boundaries", None)
        return len(boundaries) + 1 if boundaries is not None else None
    if kind == "CategoryEncoding":
        return int(layer.num_tokens)
    return None


def _gain(layer, source, out) -> np.ndarray:
    """The factor a Normalization, BatchNormalization or Rescaling layer multiplies each element by.

    Computed as Keras does at inference (Normalization divides by max(√variance, ε)).
    """
    from keras import config

    row = _row_shape(source)
    if row is None or _row_shape(out) != row:
        raise _Stop(f"{_describe(layer)} has a shape the walk cannot follow")
    shape = (1, *row)
    kind = type(layer).__name__
    if kind == "Normalization":
        std = np.maximum(np.sqrt(np.asarray(layer.variance, dtype=float)), config.epsilon())
        factor = std if layer.invert else 1.0 / std
    elif kind == "BatchNormalization":
        variance = np.asarray(layer.moving_variance, dtype=float)
        gamma = np.abs(np.asarray(layer.gamma, dtype=float)) if layer.scale else np.ones_like(variance)
        axis = layer.axis % len(shape)
        factor = (gamma / np.sqrt(variance + layer.epsilon)).reshape([-1 if d == axis else 1 for d in range(len(shape))])
    else:  # Rescaling
        factor = np.abs(np.asarray(layer.scale, dtype=float))
    try:
        return np.broadcast_to(factor, shape).ravel()
    except ValueError:
        raise _Stop(f"{_describe(layer)} rescales in a shape the walk cannot follow") from None


def _kind(operation) -> str:
    """The operation's class name; a subclass of Dense, EinsumDense or Embedding goes by its base (same kernel)."""
    from keras import layers

    for base in (layers.Dense, layers.EinsumDense, layers.Embedding):
        if isinstance(operation, base):
            return base.__name__
    return type(operation).__name__


def _row_shape(tensor) -> tuple[int, ...] | None:
    """The per-row shape of a tensor (its shape without the batch axis), None where a dimension is unknown."""
    dims = tuple(tensor.shape)[1:]
    return None if any(d is None for d in dims) else tuple(int(d) for d in dims)


def _size(tensor) -> int:
    row = _row_shape(tensor)
    return -1 if row is None else int(np.prod(row))


def _describe(operation) -> str:
    """"the Conv1D layer 'conv1d'", "the ExpandDims operation 'expand_dims'".

    "the", not "a"/"an": a class name's first letter does not say how it is read (a UnitNormalization, an LSTM,
    a user's own layer), and the walk always names one particular operation.
    """
    import keras

    kind = type(operation).__name__
    what = "layer" if isinstance(operation, keras.layers.Layer) else "operation"
    return f"the {kind} {what} '{operation.name}'"


def _unique(pairs) -> tuple[tuple[str, str], ...]:
    return tuple(dict.fromkeys(pairs))
