"""Which pixels carried one prediction of an image model: Grad-CAM (Selvaraju et al. 2017) and integrated gradients
(Sundararajan et al. 2017), for the images a reviewer must check.

- **The layer.** Grad-CAM reads the last convolutional feature map: :func:`find_target` walks the model's top-level
  layers from the output back to the first one whose output is a spatial map, ``(None, h, w, channels)``: a
  convolution, or a nested base model (``keras.applications`` with ``include_top=False``, or any sub-model) whose
  output is one, in which case the map is that model's output and the report names the model and its last
  convolution.
- **The logit, not the probability.** A softmax or sigmoid saturates: its gradient vanishes exactly where the
  model is most sure. :func:`logit_head` finds the last layer's input and its kernel and bias, and computes the
  logit from them, inside the same tape; the saved model is never edited (no ``activation = None``). Where the
  head is an ``Activation`` layer, its input is the logit; where no activation follows the last layer, its output
  is. A binary model's single logit is negated to explain class 0.
- **Integrated gradients** of the same logit from a baseline (the training mean image) along the straight path,
  ``m`` steps by the trapezoid rule, every step of one image in one batched call. Completeness says the
  attributions sum to ``f(x) − f(baseline)``; the gap is stated per image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tasks.core.errors import ModelLoadError
from tasks.core.options import MethodOptions
from tasks.core.result import Details, ImportanceResult
from tasks.methods.base import Context, Method, ResultSpec, Section
from tasks.methods.shap import highest_loss_rows

IG_STEPS = 64


@dataclass(frozen=True)
class Target:
    """Where Grad-CAM reads its map: a top-level layer of the model, and what it is in words."""

    layer: object
    name: str
    description: str  # "conv2d_1 (Conv2D)", or "the output of nested model 'base' (its last convolution: conv_2)"


def _spatial(layer) -> bool:
    try:
        shape = tuple(layer.output.shape)
    except (AttributeError, ValueError):
        return False
    return len(shape) == 4


def _is_conv(layer) -> bool:
    import keras

    return isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D))


def _last_conv_inside(model) -> str | None:
    import keras

    for layer in reversed(model.layers):
        if _is_conv(layer):
            return layer.name
        if isinstance(layer, keras.Model):
            inner = _last_conv_inside(layer)
            if inner is not None:
                return inner
    return None


def find_target(model) -> Target:
    """The last top-level layer with a spatial output that is, or holds, a convolution; refused in one line when
    there is none (a model without convolutions has no feature map for Grad-CAM)."""
    import keras

    for layer in reversed(model.layers):
        if not _spatial(layer):
            continue
        if _is_conv(layer):
            return Target(layer, layer.name, f"{layer.name} ({type(layer).__name__})")
        if isinstance(layer, keras.Model):
            inner = _last_conv_inside(layer)
            if inner is not None:
                return Target(layer, layer.name, f"the output of nested model '{layer.name}' (its last "
                                                 f"convolution: {inner})")
    raise ModelLoadError("the model has no convolutional layer with a spatial output; Grad-CAM needs one")


def logit_head(model) -> tuple[object, Callable, str]:
    """The tensor the logit is computed from, the function that computes it, and what was differentiated."""
    import keras

    last = model.layers[-1]
    activation = getattr(getattr(last, "activation", None), "__name__", None)
    if isinstance(last, keras.layers.Dense) and activation in ("softmax", "sigmoid"):
        kernel, bias = last.kernel, last.bias

        def dense(h):
            out = keras.ops.matmul(h, kernel)
            return out + bias if bias is not None else out

        return last.input, dense, f"the logit: {last.name}'s kernel and bias, before its {activation}"
    if isinstance(last, keras.layers.Activation) and activation in ("softmax", "sigmoid"):
        return last.input, lambda h: h, f"the logit: the input of {last.name}, before its {activation}"
    return model.outputs[0], lambda h: h, "the model's output (no softmax or sigmoid follows its last layer)"


class Explainer:
    """Grad-CAM and integrated gradients for one model, built once: the map-and-logit model, and its head."""

    def __init__(self, model) -> None:
        import keras

        self.target = find_target(model)
        pre, self.head, self.logit = logit_head(model)
        self._model = _connected(model, self.target.layer, pre)

    def _score(self, h, classes: np.ndarray):
        """The explained class's logit per image: a binary model's one logit, negated for class 0."""
        import tensorflow as tf

        logits = self.head(h)
        if logits.shape[-1] == 1:
            sign = tf.constant(np.where(classes == 1, 1.0, -1.0), dtype=logits.dtype)
            return logits[:, 0] * sign
        return tf.gather(logits, tf.constant(classes, dtype=tf.int32), axis=1, batch_dims=1)

    def gradcam(self, images: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """``(n, H, W)`` Grad-CAM maps (ReLU of the gradient-weighted channels), upsampled to the image, one
        batched forward and backward pass."""
        import tensorflow as tf

        x = tf.constant(images, dtype=tf.float32)
        with tf.GradientTape() as tape:
            fmap, h = self._model(x, training=False)
            score = self._score(h, classes)
        grads = tape.gradient(score, fmap)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * fmap, axis=-1))
        return tf.image.resize(cam[..., None], images.shape[1:3], method="bilinear")[..., 0].numpy()

    def logits(self, images: np.ndarray, classes: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        _, h = self._model(tf.constant(images, dtype=tf.float32), training=False)
        return self._score(h, classes).numpy()

    def integrated_gradients(self, image: np.ndarray, cls: int, baseline: np.ndarray,
                             steps: int = IG_STEPS) -> tuple[np.ndarray, float]:
        """``(H, W, C)`` attributions of one image and the completeness gap, ``|Σ a − (f(x) − f(b))|`` over
        ``|f(x) − f(b)|`` (0 when the two logits are equal): all ``steps + 1`` points in one batched call."""
        import tensorflow as tf

        alphas = np.linspace(0.0, 1.0, steps + 1, dtype=np.float32)[:, None, None, None]
        path = tf.constant(baseline[None] + alphas * (image - baseline)[None], dtype=tf.float32)
        classes = np.full(steps + 1, cls)
        with tf.GradientTape() as tape:
            tape.watch(path)
            _, h = self._model(path, training=False)
            score = self._score(h, classes)
        grads = tape.gradient(score, path).numpy()
        average = (grads[:-1] + grads[1:]).mean(axis=0) / 2  # the trapezoid rule
        attributions = (image - baseline) * average
        ends = score.numpy()
        change = float(ends[-1] - ends[0])
        gap = abs(float(attributions.sum()) - change)
        return attributions, gap / abs(change) if change != 0 else 0.0


def _connected(model, layer, pre):
    """The model from the inputs to ``layer``'s map and ``pre``. A nested model's ``output`` is its own graph's;
    the map the outer model computes is the output of the layer's call there (a later node): the first that
    connects to the outer inputs is it."""
    import keras

    for node in reversed(getattr(layer, "_inbound_nodes", [])):
        try:
            return keras.Model(model.inputs, [node.outputs[0], pre])
        except ValueError:  # that call is not in the outer graph
            continue
    raise ValueError(f"layer {layer.name}'s output is not connected to the model's inputs")


def cell_shares(heat: np.ndarray, patches: dict[str, list[int]]) -> dict[str, float]:
    """The share of a map's positive mass in each patch (``heat``: ``(H, W)`` or ``(H, W, C)``, the patches'
    members index the flattened ``(H, W, C)`` image); all zero when the map has no positive mass."""
    positive = np.clip(np.asarray(heat, dtype=float), 0, None)
    total = positive.sum()
    if total == 0:
        return {name: 0.0 for name in patches}
    flat = positive.ravel()
    if positive.ndim == 2:  # one value per pixel: every channel of a pixel shares it
        channels = sum(len(c) for c in patches.values()) // flat.size  # the patches hold every value once
        flat = np.repeat(flat, channels) / channels
    return {name: float(flat[columns].sum() / total) for name, columns in patches.items()}


# --- the method: the images a reviewer must check -------------------------------------------------------------

WORST = 4  # the highest-loss test images explained
PER_CLASS = 1  # and a seeded sample of each class's images (at most MAX_CLASSES classes)
MAX_CLASSES = 10
MAP_SIDE = 64  # maps and images kept for the overlays: at most this many pixels a side (every n-th pixel)
NOTES = (
    "Grad-CAM: the last convolutional map's channels weighted by the mean gradient of the explained class's logit, "
    "kept where positive and upsampled to the image; coarse, at the map's resolution.",
    "Integrated gradients: the same logit's gradients averaged along the straight path from the training mean image; "
    "they sum to the logit's change up to the completeness gap stated per image.",
    "The importance of a patch here is its mean share of the Grad-CAM map's positive mass over the explained images: "
    "a picture of these images, not a global ranking.",
)


@dataclass(frozen=True)
class ExplainedImage:
    """One explained test image: why it was picked, what the model said, and where its maps put their mass."""

    selection: str  # "highest loss" or "class <name>"
    row: int
    label: int
    predicted: int
    explained: int  # the class whose logit was differentiated: the predicted one
    class_name: str
    probability: float  # the model's probability of the explained class
    loss: float
    gradcam_shares: dict[str, float]  # patch -> share of the Grad-CAM map's positive mass
    ig_shares: dict[str, float]  # patch -> share of |integrated gradients| (summed over channels)
    completeness_gap: float  # |Σ attributions − (f(x) − f(baseline))| / |f(x) − f(baseline)|
    image: list[list[float]]  # grey, at most MAP_SIDE a side
    gradcam: list[list[float]]
    ig: list[list[float]]


@dataclass(frozen=True)
class GradcamDetails(Details):
    """How the maps were made, and the explained images."""

    layer: str
    logit: str
    steps: int
    baseline: str
    images: tuple[ExplainedImage, ...]


def _small(values: np.ndarray) -> list[list[float]]:
    step = max(1, -(-max(values.shape[:2]) // MAP_SIDE))
    return np.asarray(values, dtype=float)[::step, ::step].round(4).tolist()


def class_name(code: int, names: tuple[str, ...]) -> str:
    return names[code] if 0 <= code < len(names) else str(code)


def chosen_images(y: np.ndarray, probabilities: np.ndarray, metric, seed: int,
                  names: tuple[str, ...] = ()) -> tuple[list[tuple[str, int]], np.ndarray]:
    """The highest-loss images, then a seeded sample of each class's (no image twice), as (selection, row); and
    every image's loss."""
    worst, losses = highest_loss_rows(y, probabilities, metric, WORST)
    picked = [("highest loss", int(r)) for r in worst]
    rng = np.random.default_rng(seed)
    for cls in np.unique(y)[:MAX_CLASSES]:
        taken = {row for _, row in picked}
        pool = [int(r) for r in np.flatnonzero(y == cls) if int(r) not in taken]
        if pool:
            for r in sorted(rng.choice(pool, size=min(PER_CLASS, len(pool)), replace=False)):
                picked.append((f"a {class_name(int(cls), names)} image", int(r)))
    return picked, losses


def _probability(row: np.ndarray, cls: int) -> float:
    """The model's probability of class ``cls`` from one row of its output (a binary model's is of class 1)."""
    if np.ndim(row) == 0:
        return float(row if cls == 1 else 1 - row)
    return float(row[cls])


def audit_gradcam(subject, *, seed: int = 0, steps: int = IG_STEPS):
    """Grad-CAM and integrated gradients for the images a reviewer must check; the patches' mean Grad-CAM share
    as the result's importances (shown, not judged)."""
    version, test = subject.version, subject.test
    patches = subject.patches()
    try:
        explainer = Explainer(subject.model)
    except ModelLoadError as exc:
        return ImportanceResult.not_ok("gradcam", "behavioural", tuple(patches), status="skipped",
                                       reason=str(exc))
    shape = version.image_shape
    probabilities = subject.forward()(test.X)
    predicted = (probabilities > 0.5).astype(int) if probabilities.ndim == 1 else probabilities.argmax(axis=1)
    names = version.manifest.class_names
    picked, losses = chosen_images(test.y, probabilities, subject.metric, seed, names)
    rows = np.array([r for _, r in picked])
    images = test.X[rows].reshape(len(rows), *shape)
    maps = explainer.gradcam(images, predicted[rows])
    source = subject.train if subject.train is not None else test
    baseline = source.X.mean(axis=0).reshape(shape)
    explained = []
    for k, (selection, row) in enumerate(picked):
        cls = int(predicted[row])
        attributions, gap = explainer.integrated_gradients(images[k], cls, baseline, steps)
        explained.append(ExplainedImage(
            selection=selection, row=row, label=int(test.y[row]), predicted=cls, explained=cls,
            class_name=class_name(cls, names), probability=_probability(probabilities[row], cls),
            loss=float(losses[row]), gradcam_shares=cell_shares(maps[k], patches),
            ig_shares=cell_shares(np.abs(attributions), patches), completeness_gap=gap,
            image=_small(images[k].mean(axis=2)), gradcam=_small(maps[k]), ig=_small(np.abs(attributions).sum(axis=2))))
    shares = np.array([[e.gradcam_shares[name] for e in explained] for name in patches])
    details = GradcamDetails(layer=explainer.target.description, logit=explainer.logit, steps=steps,
                             baseline="training mean image" if subject.train is not None else "test mean image",
                             images=tuple(explained))
    return ImportanceResult.from_samples("gradcam", "behavioural", tuple(patches), shares, notes=NOTES,
                                         details=details)


def section(result: ImportanceResult) -> dict[str, Any] | None:
    """The Grad-CAM section: per explained image, the image, its Grad-CAM and its integrated gradients."""
    from tasks.core.charts import data_uri, saliency_panels

    if not isinstance(result.details, GradcamDetails):
        return None
    d = result.details
    shown = []
    for e in d.images:
        title = (f"row {e.row} · {e.selection} · label {e.label}, explained: {e.class_name} "
                 f"(p = {e.probability:.2f})")
        top = max(e.gradcam_shares, key=e.gradcam_shares.get)
        shown.append({"title": title, "chart": data_uri(saliency_panels(np.asarray(e.image), np.asarray(e.gradcam),
                                                                        np.asarray(e.ig))),
                      "top": top, "share": e.gradcam_shares[top], "gap": e.completeness_gap, "loss": e.loss})
    return {"layer": d.layer, "logit": d.logit, "steps": d.steps, "baseline": d.baseline, "images": shown,
            "worst_gap": max((e.completeness_gap for e in d.images), default=0.0)}


class Options(MethodOptions):
    """Grad-CAM has no options of its own: the images are the highest-loss ones and a seeded sample per class."""


def compute(subject, options: Options, context: Context) -> list[ImportanceResult]:
    """Grad-CAM and integrated gradients for the images a reviewer must check."""
    return [audit_gradcam(subject, seed=context.seed)]


METHOD = Method(
    name="gradcam", title="Grad-CAM and integrated gradients", kind="behavioural", units=frozenset({"patch"}),
    results=(ResultSpec("gradcam", "Grad-CAM (mean share per patch over the explained images)", judged=False),),
    options=Options, compute=compute, stored=(GradcamDetails, ExplainedImage),
    section=Section("gradcam.html.j2", section),
)
