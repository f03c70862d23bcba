"""A custom Keras layer registered the way users register theirs, for tests of ``--import``.

Importing this module registers ``featureaudit_test>ScaledDense``; a model using it loads only after that.
"""

from __future__ import annotations

import keras

PACKAGE = "featureaudit_test"
REGISTERED_NAME = f"{PACKAGE}>ScaledDense"


@keras.saving.register_keras_serializable(package=PACKAGE)
class ScaledDense(keras.layers.Dense):
    """A Dense layer whose output is multiplied by a fixed ``scale``."""

    def __init__(self, units: int, *, scale: float = 1.0, **kwargs):
        super().__init__(units, **kwargs)
        self.scale = scale

    def call(self, inputs):
        return super().call(inputs) * self.scale

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


def scaled_linear_model(weights, scale: float = 2.0):
    """y = scale · (w/scale)·x through a :class:`ScaledDense`: the linear model of tests.helpers, with a custom layer."""
    import numpy as np

    weights = np.asarray(weights, np.float32)
    model = keras.Sequential([keras.Input((len(weights),), name="x"), ScaledDense(1, scale=scale)])
    model.layers[0].set_weights([weights[:, None] / scale, np.zeros(1, np.float32)])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    return model


def forget(monkeypatch) -> None:
    """Undo this module's import for one test (``monkeypatch`` puts it back): only importing it registers the class."""
    import sys

    monkeypatch.delitem(keras.saving.get_custom_objects(), REGISTERED_NAME)
    monkeypatch.delitem(sys.modules, __name__)
