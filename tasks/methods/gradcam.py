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

import numpy as np

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

    from tasks.core.errors import ModelLoadError

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
        channels = max(1, max(max(c) for c in patches.values()) + 1) // flat.size
        flat = np.repeat(flat, channels) / channels
    return {name: float(flat[columns].sum() / total) for name, columns in patches.items()}
