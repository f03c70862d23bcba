"""Grad-CAM's cost against the model's own: images explained per second by :meth:`Explainer.gradcam` (one batched
forward and backward pass through the map-and-logit model) beside images predicted per second by one batched
forward pass, on the same images, side by side in one run. A backward pass costs about two forwards, so the limit
is about 3 forward-equivalents per image.

The model: a keras.io-style small CNN (Conv2D 32 → MaxPooling → Conv2D 64 → MaxPooling → Conv2D 64 → global average
pooling → Dense softmax over 10 classes) on 32×32×3 images, untrained (the cost does not depend on the weights);
batches of 64 images, the median of 7 timed calls after one warm-up (``--full``: 128×128 images, 21 calls).

Last line: ``gradcam: A images/s, forward: B images/s, ratio = B/A forward-equivalents (limit 3)``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.methods.gradcam import Explainer  # noqa: E402


def model(side: int):
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((side, side, 3)),
        keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, activation="relu"), keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10, activation="softmax"),
    ])


def median_seconds(call, calls: int) -> float:
    call()  # warm-up: tracing, allocation
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="128×128 images and 21 calls instead of 32×32 and 7")
    full = parser.parse_args().full
    side, calls, batch = (128, 21, 64) if full else (32, 7, 64)
    import tensorflow as tf

    net = model(side)
    images = np.random.default_rng(0).random((batch, side, side, 3)).astype("float32")
    classes = np.arange(batch) % 10
    explainer = Explainer(net)
    x = tf.constant(images)
    forward = median_seconds(lambda: net(x, training=False).numpy(), calls)
    gradcam = median_seconds(lambda: explainer.gradcam(images, classes), calls)
    print(f"{side}×{side}×3 images, batches of {batch}, median of {calls} calls: forward {forward * 1e3:.1f} ms, "
          f"Grad-CAM {gradcam * 1e3:.1f} ms")
    print(f"gradcam: {batch / gradcam:.0f} images/s, forward: {batch / forward:.0f} images/s, "
          f"ratio = {gradcam / forward:.2f} forward-equivalents (limit 3)")


if __name__ == "__main__":
    main()
