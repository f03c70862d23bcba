"""A zoo of small Keras models written the way keras.io and Keras' tutorials write them, with known drivers.

Each ``build_<pattern>(seed)`` draws synthetic rows whose target ``y`` is driven strongly by a few raw
columns (``drivers``) and not at all by others (``noise``), builds the model as the named keras.io example
does (at toy size), trains it briefly with seeded initialisers (never a global seed) and returns a
``Pattern``: the compiled model, raw train/test frames and the manifest a training pipeline would write.

Raw columns are what the model takes: strings stay strings, integer codes are int64, numbers float32.
The manifest may use two keys the model adapter reads (issue 12):

- ``inputs``: ``{"<input name>": [columns…]}`` for a block input, its columns in C order;
- ``output``: the output head (name or index) that predicts ``target``, for several outputs.

``model_feed`` is the zoo's own reference for feeding a model from raw columns, independent of
featureaudit; ``write_pattern`` writes a registry version folder (as ``tests.helpers.write_version``).

Keras quirks met here (Keras 3.15, TensorFlow backend):

- ``Model.fit``/``predict`` refuse NumPy string arrays ("Invalid dtype: object", or ``str32``), although
  calling the model on them works: string inputs are fed as ``tf.string`` tensors.
- A legacy ``.h5`` compiled with the string loss ``"mse"`` loads only with ``compile=False``
  ("Could not deserialize 'keras.metrics.mse'").
- A ``FeatureSpace`` inference model saves and loads back in safe mode, predicting the same. Built as
  keras.io builds it (``keras.Model(inputs=feature_space.get_inputs(), …)``), its input structure is a
  ``TrackedDict``, so every call with a plain dict warns "The structure of `inputs` doesn't match the
  expected structure" (harmless: each value still reaches its own input, as the permutation test
  confirms); its integer inputs are int32.
- ``Sequential`` models have no ``output_names`` (functional ones do).
- ``BatchNormalization`` (wide_deep) needs a few hundred steps before its moving statistics, used at
  inference, settle: with fewer the model ranks its drivers right but scores no better than a constant.
- ``Hashing(num_bins=16)`` puts "Porto" and "Coimbra" in one bin; the zoo uses 32 bins, where the five
  cities are apart, so the city's effect is fully learnable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from tests import zoo_layers

N_TRAIN = 800
N_TEST = 400
BATCH_SIZE = 32  # divides N_TRAIN: no partial last batch, so fit traces its step once
LEARNING_RATE = 0.02


@dataclass(frozen=True, eq=False)
class Pattern:
    """One zoo model with its raw data and ground truth (``eq=False``: frames do not compare to a bool)."""

    name: str
    model: keras.Model
    train: pd.DataFrame
    test: pd.DataFrame
    manifest: dict
    drivers: tuple[str, ...]
    noise: tuple[str, ...]
    model_file: str = "model.keras"


# ---------------------------------------------------------------------------------------------- feeding


def model_feed(model: keras.Model, frame: pd.DataFrame, manifest: dict):
    """The model's inputs built from raw columns, exactly in the structure the model takes.

    A single input takes its ``inputs`` block, else every ``features`` column, reshaped in C order to
    the input's shape; several inputs take a dict by input name (in the model's own order), each fed
    its ``inputs`` block or the column of the same name. Values are cast to the input's dtype; string
    inputs get ``tf.string`` tensors (``fit``/``predict`` refuse NumPy string arrays).
    """
    blocks = manifest.get("inputs", {})

    def columns(tensor) -> list[str]:
        if tensor.name in blocks:
            return list(blocks[tensor.name])
        return list(manifest["features"]) if len(model.inputs) == 1 else [tensor.name]

    def values(tensor):
        shape = (len(frame), *tensor.shape[1:])
        if tensor.dtype == "string":
            return tf.constant(frame[columns(tensor)].to_numpy(dtype=str).reshape(shape))
        return frame[columns(tensor)].to_numpy(dtype=tensor.dtype).reshape(shape)

    if len(model.inputs) == 1:
        return values(model.inputs[0])
    return {tensor.name: values(tensor) for tensor in model.inputs}


def predict_target(pattern: Pattern, frame: pd.DataFrame, model: keras.Model | None = None) -> np.ndarray:
    """Predictions of the head that the manifest's ``output`` names (the only head, if one)."""
    model = pattern.model if model is None else model
    out = model.predict(model_feed(model, frame, pattern.manifest), batch_size=4096, verbose=0)
    if isinstance(out, (list, tuple)):
        head = pattern.manifest["output"]
        out = out[model.output_names.index(head) if isinstance(head, str) else head]
    return np.asarray(out)


def write_pattern(root: Path, pattern: Pattern, name: str | None = None, version: str = "v1") -> Path:
    """Write ``<root>/<name>/<version>/`` with the model file, test/train parquet and manifest.json."""
    folder = Path(root) / (name or pattern.name) / version
    folder.mkdir(parents=True, exist_ok=True)
    pattern.model.save(folder / pattern.model_file)
    pattern.test.to_parquet(folder / "test.parquet", index=False)
    pattern.train.to_parquet(folder / "train.parquet", index=False)
    (folder / "manifest.json").write_text(json.dumps(pattern.manifest, indent=2))
    return folder


# ---------------------------------------------------------------------------------------------- helpers


class _Seeds:
    """Seeded initialisers, a fresh seed per layer, all drawn from the build's seed."""

    def __init__(self, seed: int):
        self._rng = np.random.default_rng(seed)

    def next(self) -> int:
        return int(self._rng.integers(2**31 - 1))

    def glorot(self) -> keras.initializers.Initializer:
        return keras.initializers.GlorotUniform(seed=self.next())

    def uniform(self) -> keras.initializers.Initializer:
        return keras.initializers.RandomUniform(-0.05, 0.05, seed=self.next())


def _split(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    return frame.iloc[:N_TRAIN].reset_index(drop=True), frame.iloc[N_TRAIN:].reset_index(drop=True)


def _strings(rng: np.random.Generator, values, n: int, p=None) -> pd.Series:
    return pd.Series(rng.choice(list(values), size=n, p=p), dtype="str")


def _bernoulli(rng: np.random.Generator, logit: np.ndarray) -> np.ndarray:
    return (rng.random(len(logit)) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)


def _fit(model: keras.Model, train: pd.DataFrame, manifest: dict, y, *, epochs: int) -> None:
    feed = model_feed(model, train, manifest)
    model.fit(feed, y, epochs=epochs, batch_size=BATCH_SIZE, shuffle=False, verbose=0)


def _training(epochs: int) -> dict:
    return {"epochs": epochs, "batch_size": BATCH_SIZE}


# Heart-disease-like data (keras.io's Cleveland set at toy size): 'thal' is a string, 'cp'/'fbs' integer codes.
THAL_EFFECT = {"normal": -1.5, "fixed": 0.5, "reversible": 1.5}
THAL_CODES = {"normal": 3, "fixed": 6, "reversible": 7}  # the Cleveland integer codes
CP_EFFECT = np.array([-1.5, -0.5, 0.5, 1.5])


def _heart_frame(seed: int) -> pd.DataFrame:
    """Raw heart-like columns and the latent score ``s`` (dropped before returning frames)."""
    rng = np.random.default_rng(seed)
    n = N_TRAIN + N_TEST
    frame = pd.DataFrame(
        {
            "age": rng.normal(54.0, 9.0, n).astype(np.float32),
            "chol": rng.normal(245.0, 50.0, n).astype(np.float32),
            "cp": rng.integers(0, 4, n).astype(np.int64),
            "fbs": rng.integers(0, 2, n).astype(np.int64),
            "thal": _strings(rng, THAL_EFFECT, n, p=[0.5, 0.2, 0.3]),
        }
    )
    frame["s"] = (
        frame["thal"].map(THAL_EFFECT).to_numpy() + CP_EFFECT[frame["cp"].to_numpy()] + 1.2 * (frame["age"] - 54.0) / 9.0
    )
    frame["u"] = rng.random(n)  # the label noise, drawn here so every pattern on this frame sees the same
    frame["e"] = rng.normal(0.0, 0.3, n)
    return frame


def _heart_binary(seed: int) -> pd.DataFrame:
    frame = _heart_frame(seed)
    frame["y"] = (frame["u"] < 1.0 / (1.0 + np.exp(-2.0 * frame["s"]))).astype(np.int64)
    return frame.drop(columns=["s", "u", "e"])


def encode_numerical_feature(feature, name: str, train: pd.DataFrame):
    """keras.io: a ``Normalization`` layer adapted on the training column."""
    normalizer = keras.layers.Normalization()
    normalizer.adapt(train[[name]].to_numpy(np.float32))
    return normalizer(feature)


def encode_categorical_feature(feature, name: str, train: pd.DataFrame, is_string: bool):
    """keras.io: a ``StringLookup``/``IntegerLookup`` adapted on the training column, one-hot output."""
    lookup_class = keras.layers.StringLookup if is_string else keras.layers.IntegerLookup
    lookup = lookup_class(output_mode="one_hot")
    values = train[[name]].to_numpy(dtype=str if is_string else np.int64)
    lookup.adapt(tf.constant(values) if is_string else values)
    return lookup(feature)


# ---------------------------------------------------------------------------------------------- patterns


def build_string_lookup(seed: int = 0) -> Pattern:
    """keras.io "Structured data classification from scratch": a dict of (1,) inputs, lookups inside the model.

    ``thal`` (string) → ``StringLookup(one_hot)``, ``cp``/``fbs`` (int64 codes) → ``IntegerLookup(one_hot)``,
    ``age``/``chol`` → ``Normalization``; concatenated into Dense → Dropout → sigmoid. Binary.
    logit = 2·(thal effect + cp effect + 1.2·(age − 54)/9); ``chol`` and ``fbs`` have no effect.
    """
    seeds = _Seeds(seed)
    train, test = _split(_heart_binary(seed))
    inputs = {
        "age": keras.Input(shape=(1,), name="age"),
        "chol": keras.Input(shape=(1,), name="chol"),
        "cp": keras.Input(shape=(1,), name="cp", dtype="int64"),
        "fbs": keras.Input(shape=(1,), name="fbs", dtype="int64"),
        "thal": keras.Input(shape=(1,), name="thal", dtype="string"),
    }
    all_features = keras.layers.concatenate(
        [
            encode_numerical_feature(inputs["age"], "age", train),
            encode_numerical_feature(inputs["chol"], "chol", train),
            encode_categorical_feature(inputs["cp"], "cp", train, is_string=False),
            encode_categorical_feature(inputs["fbs"], "fbs", train, is_string=False),
            encode_categorical_feature(inputs["thal"], "thal", train, is_string=True),
        ]
    )
    x = keras.layers.Dense(16, activation="relu", kernel_initializer=seeds.glorot())(all_features)
    x = keras.layers.Dropout(0.2, seed=seeds.next())(x)
    output = keras.layers.Dense(1, activation="sigmoid", kernel_initializer=seeds.glorot())(x)
    model = keras.Model(inputs, output)
    model.compile(keras.optimizers.Adam(LEARNING_RATE), "binary_crossentropy", metrics=["accuracy"])

    epochs = 5
    manifest = {"target": "y", "task": "binary", "categorical": ["cp", "fbs", "thal"], "training": _training(epochs)}
    _fit(model, train, manifest, train["y"].to_numpy(np.float32), epochs=epochs)
    return Pattern("string_lookup", model, train, test, manifest, ("thal", "cp", "age"), ("chol", "fbs"))


def build_integer_codes(seed: int = 0) -> Pattern:
    """The same heart model fed integer codes: ``IntegerLookup`` + ``Embedding`` and ``CategoryEncoding``.

    ``thal`` holds the Cleveland codes 3/6/7 → ``IntegerLookup(int)`` → ``Embedding`` → ``Flatten``;
    ``cp`` (0–3) and ``fbs`` (0–1) → ``CategoryEncoding(one_hot)``; ``age``/``chol`` → ``Normalization``.
    Regression: y = thal effect + cp effect + 1.2·(age − 54)/9 + N(0, 0.3²); ``chol``, ``fbs`` no effect.
    """
    seeds = _Seeds(seed)
    frame = _heart_frame(seed)
    frame["thal"] = frame["thal"].map(THAL_CODES).astype(np.int64)
    frame["y"] = (frame["s"] + frame["e"]).astype(np.float32)
    train, test = _split(frame.drop(columns=["s", "u", "e"]))

    inputs = {
        "age": keras.Input(shape=(1,), name="age"),
        "chol": keras.Input(shape=(1,), name="chol"),
        "cp": keras.Input(shape=(1,), name="cp", dtype="int64"),
        "fbs": keras.Input(shape=(1,), name="fbs", dtype="int64"),
        "thal": keras.Input(shape=(1,), name="thal", dtype="int64"),
    }
    thal_lookup = keras.layers.IntegerLookup(output_mode="int")
    thal_lookup.adapt(train[["thal"]].to_numpy(np.int64))
    thal_embedded = keras.layers.Embedding(
        thal_lookup.vocabulary_size(), 2, embeddings_initializer=seeds.uniform()
    )(thal_lookup(inputs["thal"]))
    all_features = keras.layers.concatenate(
        [
            encode_numerical_feature(inputs["age"], "age", train),
            encode_numerical_feature(inputs["chol"], "chol", train),
            keras.layers.CategoryEncoding(num_tokens=4, output_mode="one_hot")(inputs["cp"]),
            keras.layers.CategoryEncoding(num_tokens=2, output_mode="one_hot")(inputs["fbs"]),
            keras.layers.Flatten()(thal_embedded),
        ]
    )
    x = keras.layers.Dense(16, activation="relu", kernel_initializer=seeds.glorot())(all_features)
    output = keras.layers.Dense(1, kernel_initializer=seeds.glorot())(x)
    model = keras.Model(inputs, output)
    model.compile(keras.optimizers.Adam(LEARNING_RATE), "mse")

    epochs = 6
    manifest = {"target": "y", "task": "regression", "categorical": ["cp", "fbs", "thal"], "training": _training(epochs)}
    _fit(model, train, manifest, train["y"].to_numpy(np.float32), epochs=epochs)
    return Pattern("integer_codes", model, train, test, manifest, ("thal", "cp", "age"), ("chol", "fbs"))


def build_feature_space(seed: int = 0) -> Pattern:
    """keras.io "Structured data classification with FeatureSpace": the returned model is the inference model.

    A ``keras.utils.FeatureSpace`` (``thal`` string_categorical, ``cp``/``fbs`` integer_categorical,
    ``age`` float_discretized, ``chol`` float_normalized, a hashed ``thal × cp`` cross) is adapted on the
    training rows; a training model is fitted on the encoded vectors, and the inference model takes a dict
    of raw values through the FeatureSpace to the same Dense layers. It is compiled too, so it can be
    retrained on raw values. Saved as ``.keras``, it loads back in safe mode (Keras 3.15) predicting the same.
    Binary, the same truth as ``string_lookup``: ``chol`` and ``fbs`` have no effect.
    """
    from keras.utils import FeatureSpace

    seeds = _Seeds(seed)
    train, test = _split(_heart_binary(seed))
    feature_space = FeatureSpace(
        features={
            "cp": FeatureSpace.integer_categorical(num_oov_indices=0),
            "fbs": FeatureSpace.integer_categorical(num_oov_indices=0),
            "thal": FeatureSpace.string_categorical(num_oov_indices=0),
            "age": FeatureSpace.float_discretized(num_bins=6),
            "chol": FeatureSpace.float_normalized(),
        },
        crosses=[FeatureSpace.cross(feature_names=("thal", "cp"), crossing_dim=8)],
        output_mode="concat",
    )
    raw_columns = ["age", "chol", "cp", "fbs", "thal"]
    feature_space.adapt(
        tf.data.Dataset.from_tensor_slices(
            {c: train[c].to_numpy(dtype=str) if c == "thal" else train[c].to_numpy() for c in raw_columns}
        ).batch(256)
    )

    dict_inputs = feature_space.get_inputs()
    encoded_features = feature_space.get_encoded_features()
    x = keras.layers.Dense(16, activation="relu", kernel_initializer=seeds.glorot())(encoded_features)
    x = keras.layers.Dropout(0.2, seed=seeds.next())(x)
    predictions = keras.layers.Dense(1, activation="sigmoid", kernel_initializer=seeds.glorot())(x)
    training_model = keras.Model(inputs=encoded_features, outputs=predictions)
    training_model.compile(keras.optimizers.Adam(LEARNING_RATE), "binary_crossentropy", metrics=["accuracy"])
    inference_model = keras.Model(inputs=dict_inputs, outputs=predictions)
    inference_model.compile(keras.optimizers.Adam(LEARNING_RATE), "binary_crossentropy", metrics=["accuracy"])

    epochs = 5
    manifest = {"target": "y", "task": "binary", "categorical": ["cp", "fbs", "thal"], "training": _training(epochs)}
    preprocessed = feature_space(model_feed(inference_model, train, manifest))
    training_model.fit(
        preprocessed, train["y"].to_numpy(np.float32), epochs=epochs, batch_size=BATCH_SIZE, shuffle=False, verbose=0
    )
    return Pattern("feature_space", inference_model, train, test, manifest, ("thal", "cp", "age"), ("chol", "fbs"))


OCCUPATION_EFFECT = {"Tech-support": 1.0, "Craft-repair": -1.0, "Sales": 0.0, "Exec-managerial": 2.0, "Other-service": -2.0}
EDUCATION_EFFECT = {"HS-grad": -1.5, "Some-college": -0.5, "Bachelors": 0.5, "Masters": 1.5}
RELATIONSHIPS = ("Husband", "Wife", "Own-child", "Unmarried")


def build_wide_deep(seed: int = 0) -> Pattern:
    """keras.io "Wide, deep & cross networks": shape () inputs, ``keras.ops.expand_dims``, wide + deep parts.

    Each string categorical feeds the wide part through ``StringLookup(vocabulary, one_hot)`` on
    ``expand_dims(x, -1)`` and the deep part through ``StringLookup(int)`` → ``Embedding``; the numerics
    enter raw through ``expand_dims``. Wide → BatchNormalization; deep → Dense/BatchNormalization/ReLU/Dropout;
    merged → sigmoid. Binary: logit = 1.5·(occupation + education + 1.2·(age − 44)/15);
    ``relationship`` and ``hours_per_week`` have no effect.
    """
    seeds = _Seeds(seed)
    rng = np.random.default_rng(seed)
    n = N_TRAIN + N_TEST
    frame = pd.DataFrame(
        {
            "age": rng.uniform(18.0, 70.0, n).astype(np.float32),
            "hours_per_week": rng.normal(40.0, 10.0, n).astype(np.float32),
            "occupation": _strings(rng, OCCUPATION_EFFECT, n),
            "education": _strings(rng, EDUCATION_EFFECT, n),
            "relationship": _strings(rng, RELATIONSHIPS, n),
        }
    )
    score = (
        frame["occupation"].map(OCCUPATION_EFFECT).to_numpy()
        + frame["education"].map(EDUCATION_EFFECT).to_numpy()
        + 1.2 * (frame["age"].to_numpy() - 44.0) / 15.0
    )
    frame["y"] = _bernoulli(rng, 1.5 * score)
    train, test = _split(frame)

    vocabularies = {
        "occupation": list(OCCUPATION_EFFECT),
        "education": list(EDUCATION_EFFECT),
        "relationship": list(RELATIONSHIPS),
    }
    numeric = ("age", "hours_per_week")
    inputs = {name: keras.Input(shape=(), name=name, dtype="float32") for name in numeric}
    inputs |= {name: keras.Input(shape=(), name=name, dtype="string") for name in vocabularies}

    def encode_inputs(use_embedding: bool):
        encoded_features = []
        for feature_name in inputs:
            if feature_name in vocabularies:
                vocabulary = vocabularies[feature_name]
                lookup = keras.layers.StringLookup(
                    vocabulary=vocabulary,
                    mask_token=None,
                    num_oov_indices=0,
                    output_mode="int" if use_embedding else "one_hot",
                )
                if use_embedding:
                    embedding = keras.layers.Embedding(
                        input_dim=len(vocabulary),
                        output_dim=int(np.sqrt(len(vocabulary))),
                        embeddings_initializer=seeds.uniform(),
                    )
                    encoded_features.append(embedding(lookup(inputs[feature_name])))
                else:
                    encoded_features.append(lookup(keras.ops.expand_dims(inputs[feature_name], -1)))
            else:
                encoded_features.append(keras.ops.expand_dims(inputs[feature_name], -1))
        return keras.layers.concatenate(encoded_features)

    wide = keras.layers.BatchNormalization()(encode_inputs(use_embedding=False))
    deep = encode_inputs(use_embedding=True)
    for units in (16, 8):
        deep = keras.layers.Dense(units, kernel_initializer=seeds.glorot())(deep)
        deep = keras.layers.BatchNormalization()(deep)
        deep = keras.layers.ReLU()(deep)
        deep = keras.layers.Dropout(0.1, seed=seeds.next())(deep)
    merged = keras.layers.concatenate([wide, deep])
    outputs = keras.layers.Dense(1, activation="sigmoid", kernel_initializer=seeds.glorot())(merged)
    model = keras.Model(inputs=inputs, outputs=outputs)
    model.compile(keras.optimizers.Adam(LEARNING_RATE), "binary_crossentropy", metrics=["accuracy"])

    epochs = 12  # enough steps (300) for BatchNormalization's moving statistics to settle
    manifest = {
        "target": "y",
        "task": "binary",
        "categorical": ["occupation", "education", "relationship"],
        "training": _training(epochs),
    }
    _fit(model, train, manifest, train["y"].to_numpy(np.float32), epochs=epochs)
    return Pattern(
        "wide_deep", model, train, test, manifest, ("occupation", "education", "age"), ("relationship", "hours_per_week")
    )


REGION_EFFECT = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
BLOCK_COLUMNS = ("income", "age", "tenure", "balance")


def build_block_embeddings(seed: int = 0) -> Pattern:
    """A numeric block input beside integer-code inputs through ``Embedding`` (fastai/keras tabular style).

    ``numeric`` (4,) float32 ← [income, age, tenure, balance] (manifest ``inputs``) → ``Normalization``;
    ``region`` (0–4) and ``channel`` (0–2) int32 (1,) → ``Embedding`` → ``Flatten``; → Dense → linear.
    Regression: y = (income − 50)/15 + 0.8·(age − 40)/12 + region effect + N(0, 0.3²);
    ``tenure``, ``balance`` and ``channel`` have no effect.
    """
    seeds = _Seeds(seed)
    rng = np.random.default_rng(seed)
    n = N_TRAIN + N_TEST
    frame = pd.DataFrame(
        {
            "income": rng.normal(50.0, 15.0, n).astype(np.float32),
            "age": rng.normal(40.0, 12.0, n).astype(np.float32),
            "tenure": rng.uniform(0.0, 10.0, n).astype(np.float32),
            "balance": rng.normal(0.0, 1000.0, n).astype(np.float32),
            "region": rng.integers(0, len(REGION_EFFECT), n).astype(np.int64),
            "channel": rng.integers(0, 3, n).astype(np.int64),
        }
    )
    frame["y"] = (
        (frame["income"] - 50.0) / 15.0
        + 0.8 * (frame["age"] - 40.0) / 12.0
        + REGION_EFFECT[frame["region"].to_numpy()]
        + rng.normal(0.0, 0.3, n)
    ).astype(np.float32)
    train, test = _split(frame)

    inputs = {
        "numeric": keras.Input(shape=(len(BLOCK_COLUMNS),), name="numeric"),
        "region": keras.Input(shape=(1,), name="region", dtype="int32"),
        "channel": keras.Input(shape=(1,), name="channel", dtype="int32"),
    }
    normalizer = keras.layers.Normalization(axis=-1)
    normalizer.adapt(train[list(BLOCK_COLUMNS)].to_numpy(np.float32))
    region = keras.layers.Embedding(len(REGION_EFFECT), 2, embeddings_initializer=seeds.uniform())(inputs["region"])
    channel = keras.layers.Embedding(3, 2, embeddings_initializer=seeds.uniform())(inputs["channel"])
    hidden = keras.layers.concatenate(
        [normalizer(inputs["numeric"]), keras.layers.Flatten()(region), keras.layers.Flatten()(channel)]
    )
    hidden = keras.layers.Dense(16, activation="relu", kernel_initializer=seeds.glorot())(hidden)
    model = keras.Model(inputs, keras.layers.Dense(1, kernel_initializer=seeds.glorot())(hidden))
    model.compile(keras.optimizers.Adam(LEARNING_RATE), "mse")

    epochs = 6
    manifest = {
        "target": "y",
        "task": "regression",
        "categorical": ["region", "channel"],
        "inputs": {"numeric": list(BLOCK_COLUMNS)},
        "training": _training(epochs),
    }
    _fit(model, train, manifest, train["y"].to_numpy(np.float32), epochs=epochs)
    return Pattern(
        "block_embeddings", model, train, test, manifest, ("income", "age", "region"), ("tenure", "balance", "channel")
    )


TWO_OUTPUT_FEATURES = ("price", "promo", "season", "footfall", "store_age")


def build_two_outputs(seed: int = 0) -> Pattern:
    """Keras' functional-API guide, "models with multiple inputs and outputs": heads ``aux`` and ``main``.

    A dict of (1,) float inputs → shared Dense trunk → ``Dense(1, name="aux")`` and ``Dense(1, name="main")``
    (outputs in that order), compiled with a loss per head. The target ``y`` belongs to ``main`` (manifest
    ``output: "main"``): y = 2·price − 1.5·promo + N(0, 0.3²). The aux target ``y_aux`` = 2·season +
    1.5·footfall + N(0, 0.3²) is kept in both frames for retraining but is not a feature (``features`` lists
    the five inputs). For ``y``, ``season`` and ``footfall`` are noise as much as ``store_age``: scoring the
    aux head would rank them first.
    """
    seeds = _Seeds(seed)
    rng = np.random.default_rng(seed)
    n = N_TRAIN + N_TEST
    frame = pd.DataFrame({c: rng.normal(size=n).astype(np.float32) for c in TWO_OUTPUT_FEATURES})
    frame["y"] = (2.0 * frame["price"] - 1.5 * frame["promo"] + rng.normal(0.0, 0.3, n)).astype(np.float32)
    frame["y_aux"] = (2.0 * frame["season"] + 1.5 * frame["footfall"] + rng.normal(0.0, 0.3, n)).astype(np.float32)
    train, test = _split(frame)

    inputs = {c: keras.Input(shape=(1,), name=c) for c in TWO_OUTPUT_FEATURES}
    trunk = keras.layers.concatenate(list(inputs.values()))
    trunk = keras.layers.Dense(32, activation="relu", kernel_initializer=seeds.glorot())(trunk)
    aux = keras.layers.Dense(1, name="aux", kernel_initializer=seeds.glorot())(trunk)
    main = keras.layers.Dense(1, name="main", kernel_initializer=seeds.glorot())(trunk)
    model = keras.Model(inputs=inputs, outputs=[aux, main])
    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE),
        loss={"aux": keras.losses.MeanSquaredError(), "main": keras.losses.MeanSquaredError()},
        loss_weights={"aux": 0.5, "main": 1.0},
    )

    epochs = 6
    manifest = {
        "target": "y",
        "task": "regression",
        "features": list(TWO_OUTPUT_FEATURES),
        "output": "main",
        "training": _training(epochs),
    }
    targets = {"aux": train["y_aux"].to_numpy(np.float32), "main": train["y"].to_numpy(np.float32)}
    _fit(model, train, manifest, targets, epochs=epochs)
    return Pattern(
        "two_outputs", model, train, test, manifest, ("price", "promo"), ("season", "footfall", "store_age")
    )


SEQ_STEPS, SEQ_CHANNELS = 6, 2
SEQ_COLUMNS = tuple(f"x_t{t}_f{f}" for t in range(SEQ_STEPS) for f in range(SEQ_CHANNELS))  # C order
SEQ_DRIVERS = ("x_t5_f0", "x_t4_f1", "x_t0_f0")


def build_sequence(seed: int = 0) -> Pattern:
    """keras.io time-series style: one input ``series`` of shape (6, 2) → ``Conv1D`` → Flatten → Dense.

    Fed from the 12 columns x_t{t}_f{f} in C order (t outer, f inner; manifest ``features``).
    Regression: y = 1.5·x_t5_f0 − 1.2·x_t4_f1 + 1.0·x_t0_f0 + N(0, 0.3²); the other 9 columns are noise.
    """
    seeds = _Seeds(seed)
    rng = np.random.default_rng(seed)
    n = N_TRAIN + N_TEST
    frame = pd.DataFrame({c: rng.normal(size=n).astype(np.float32) for c in SEQ_COLUMNS})
    frame["y"] = (
        1.5 * frame["x_t5_f0"] - 1.2 * frame["x_t4_f1"] + 1.0 * frame["x_t0_f0"] + rng.normal(0.0, 0.3, n)
    ).astype(np.float32)
    train, test = _split(frame)

    inputs = keras.Input(shape=(SEQ_STEPS, SEQ_CHANNELS), name="series")
    x = keras.layers.Conv1D(8, kernel_size=3, padding="same", activation="relu", kernel_initializer=seeds.glorot())(
        inputs
    )
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(16, activation="relu", kernel_initializer=seeds.glorot())(x)
    model = keras.Model(inputs, keras.layers.Dense(1, kernel_initializer=seeds.glorot())(x))
    model.compile(keras.optimizers.Adam(LEARNING_RATE), "mse")

    epochs = 6
    manifest = {"target": "y", "task": "regression", "features": list(SEQ_COLUMNS), "training": _training(epochs)}
    _fit(model, train, manifest, train["y"].to_numpy(np.float32), epochs=epochs)
    noise = tuple(c for c in SEQ_COLUMNS if c not in SEQ_DRIVERS)
    return Pattern("sequence", model, train, test, manifest, SEQ_DRIVERS, noise)


PIXELS = tuple(f"p{i}" for i in range(16))  # row-major 4×4
IMAGE_DRIVERS = ("p5", "p6", "p10")


def build_image(seed: int = 0) -> Pattern:
    """keras.io "Simple MNIST convnet" at 4×4: input ``image`` (4, 4, 1) → ``Conv2D`` → Flatten → softmax.

    Fed from pixels p0..p15 in C order (row-major; manifest ``features``). Multiclass (3): the tercile
    of s = p5 + p6 − p10 (cuts 0.3, 0.7); the other 13 pixels are noise.
    """
    seeds = _Seeds(seed)
    rng = np.random.default_rng(seed)
    n = N_TRAIN + N_TEST
    frame = pd.DataFrame({c: rng.uniform(size=n).astype(np.float32) for c in PIXELS})
    score = frame["p5"] + frame["p6"] - frame["p10"]
    frame["y"] = np.digitize(score, [0.3, 0.7]).astype(np.int64)
    train, test = _split(frame)

    model = keras.Sequential(
        [
            keras.Input(shape=(4, 4, 1), name="image"),
            keras.layers.Conv2D(8, kernel_size=(2, 2), activation="relu", kernel_initializer=seeds.glorot()),
            keras.layers.Flatten(),
            keras.layers.Dense(16, activation="relu", kernel_initializer=seeds.glorot()),
            keras.layers.Dense(3, activation="softmax", kernel_initializer=seeds.glorot()),
        ]
    )
    model.compile(keras.optimizers.Adam(LEARNING_RATE), "sparse_categorical_crossentropy", metrics=["accuracy"])

    epochs = 8
    manifest = {"target": "y", "task": "multiclass", "features": list(PIXELS), "training": _training(epochs)}
    _fit(model, train, manifest, train["y"].to_numpy(), epochs=epochs)
    noise = tuple(c for c in PIXELS if c not in IMAGE_DRIVERS)
    return Pattern("image", model, train, test, manifest, IMAGE_DRIVERS, noise)


def _linear_frame(seed: int, columns: tuple[str, ...], weights: dict[str, float]) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = N_TRAIN + N_TEST
    frame = pd.DataFrame({c: rng.normal(size=n).astype(np.float32) for c in columns})
    frame["y"] = (sum(w * frame[c] for c, w in weights.items()) + rng.normal(0.0, 0.3, n)).astype(np.float32)
    return frame


def build_legacy_h5(seed: int = 0) -> Pattern:
    """A plain Sequential Dense MLP saved as legacy ``model.h5``, compiled with the string loss ``"mse"``.

    In Keras 3 the file loads only with ``compile=False``: the compiled loss fails to deserialize
    ("Could not deserialize 'keras.metrics.mse'"). Regression: y = 2·x0 − 1.5·x1 + x2 + N(0, 0.3²).
    """
    seeds = _Seeds(seed)
    columns = ("x0", "x1", "x2", "x3", "x4")
    train, test = _split(_linear_frame(seed, columns, {"x0": 2.0, "x1": -1.5, "x2": 1.0}))
    model = keras.Sequential(
        [
            keras.Input(shape=(len(columns),), name="features"),
            keras.layers.Dense(16, activation="relu", kernel_initializer=seeds.glorot()),
            keras.layers.Dense(1, kernel_initializer=seeds.glorot()),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE), loss="mse")

    epochs = 6
    manifest = {"target": "y", "task": "regression", "features": list(columns), "training": _training(epochs)}
    _fit(model, train, manifest, train["y"].to_numpy(np.float32), epochs=epochs)
    return Pattern("legacy_h5", model, train, test, manifest, ("x0", "x1", "x2"), ("x3", "x4"), model_file="model.h5")


def build_custom_layer(seed: int = 0) -> Pattern:
    """A model with a registered custom layer, ``featureaudit_zoo>ScaledDense`` from ``tests.zoo_layers``.

    Input ``sensors`` (4,) → ``ScaledDense(16, scale=0.5, relu)`` → Dense. It loads only in a process that
    has imported ``tests.zoo_layers``. Regression: y = 2·voltage − 1.5·current + N(0, 0.3²).
    """
    seeds = _Seeds(seed)
    columns = ("voltage", "current", "humidity", "vibration")
    train, test = _split(_linear_frame(seed, columns, {"voltage": 2.0, "current": -1.5}))
    model = keras.Sequential(
        [
            keras.Input(shape=(len(columns),), name="sensors"),
            zoo_layers.ScaledDense(16, scale=0.5, activation="relu", kernel_initializer=seeds.glorot()),
            keras.layers.Dense(1, kernel_initializer=seeds.glorot()),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE), loss="mse")

    epochs = 6
    manifest = {"target": "y", "task": "regression", "features": list(columns), "training": _training(epochs)}
    _fit(model, train, manifest, train["y"].to_numpy(np.float32), epochs=epochs)
    return Pattern("custom_layer", model, train, test, manifest, ("voltage", "current"), ("humidity", "vibration"))


CITY_EFFECT = {"Lisbon": 2.0, "Porto": 1.0, "Braga": 0.0, "Faro": -1.0, "Coimbra": -2.0}
DEVICES = ("ios", "android", "web")
INCOME_BOUNDARIES = [35000.0, 50000.0, 65000.0]
INCOME_EFFECT = np.array([-1.5, -0.5, 0.5, 1.5])
AGE_BOUNDARIES = [30.0, 45.0, 60.0]
AGE_EFFECT = np.array([-1.0, 0.0, 0.5, 1.0])


def build_hashing_discretization(seed: int = 0) -> Pattern:
    """Keras preprocessing-layer guide style: ``Hashing`` for strings, ``Discretization`` for numbers.

    ``city``/``device`` (strings) → ``Hashing(num_bins, one_hot)``; ``income``/``age``/``tenure`` →
    ``Discretization(bin_boundaries, one_hot)``; concatenated → Dense → linear. Regression:
    y = city effect + income-bin effect + age-bin effect + N(0, 0.3²); ``device``, ``tenure`` no effect.
    """
    seeds = _Seeds(seed)
    rng = np.random.default_rng(seed)
    n = N_TRAIN + N_TEST
    frame = pd.DataFrame(
        {
            "city": _strings(rng, CITY_EFFECT, n),
            "device": _strings(rng, DEVICES, n),
            "income": rng.normal(50000.0, 15000.0, n).astype(np.float32),
            "age": rng.uniform(18.0, 75.0, n).astype(np.float32),
            "tenure": rng.uniform(0.0, 10.0, n).astype(np.float32),
        }
    )
    frame["y"] = (
        frame["city"].map(CITY_EFFECT).to_numpy()
        + INCOME_EFFECT[np.digitize(frame["income"], INCOME_BOUNDARIES)]
        + AGE_EFFECT[np.digitize(frame["age"], AGE_BOUNDARIES)]
        + rng.normal(0.0, 0.3, n)
    ).astype(np.float32)
    train, test = _split(frame)

    inputs = {
        "city": keras.Input(shape=(1,), name="city", dtype="string"),
        "device": keras.Input(shape=(1,), name="device", dtype="string"),
        "income": keras.Input(shape=(1,), name="income"),
        "age": keras.Input(shape=(1,), name="age"),
        "tenure": keras.Input(shape=(1,), name="tenure"),
    }
    encoded = [
        keras.layers.Hashing(num_bins=32, output_mode="one_hot")(inputs["city"]),
        keras.layers.Hashing(num_bins=8, output_mode="one_hot")(inputs["device"]),
        keras.layers.Discretization(bin_boundaries=INCOME_BOUNDARIES, output_mode="one_hot")(inputs["income"]),
        keras.layers.Discretization(bin_boundaries=AGE_BOUNDARIES, output_mode="one_hot")(inputs["age"]),
        keras.layers.Discretization(bin_boundaries=[2.5, 5.0, 7.5], output_mode="one_hot")(inputs["tenure"]),
    ]
    hidden = keras.layers.Dense(16, activation="relu", kernel_initializer=seeds.glorot())(
        keras.layers.concatenate(encoded)
    )
    model = keras.Model(inputs, keras.layers.Dense(1, kernel_initializer=seeds.glorot())(hidden))
    model.compile(keras.optimizers.Adam(LEARNING_RATE), "mse")

    epochs = 6
    manifest = {"target": "y", "task": "regression", "categorical": ["city", "device"], "training": _training(epochs)}
    _fit(model, train, manifest, train["y"].to_numpy(np.float32), epochs=epochs)
    return Pattern(
        "hashing_discretization", model, train, test, manifest, ("city", "income", "age"), ("device", "tenure")
    )


PATTERNS: dict[str, Callable[[int], Pattern]] = {
    "string_lookup": build_string_lookup,
    "integer_codes": build_integer_codes,
    "feature_space": build_feature_space,
    "wide_deep": build_wide_deep,
    "block_embeddings": build_block_embeddings,
    "two_outputs": build_two_outputs,
    "sequence": build_sequence,
    "image": build_image,
    "legacy_h5": build_legacy_h5,
    "custom_layer": build_custom_layer,
    "hashing_discretization": build_hashing_discretization,
}
