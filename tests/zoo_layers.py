"""Custom Keras objects for the zoo's ``custom_layer`` pattern, registered as an operator's module would be.

A model that uses them loads only in a process that has imported this module first: Keras finds
``featureaudit_zoo>ScaledDense`` in its registry of serializable objects, never by importing code
named in the model file.
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="featureaudit_zoo")
class ScaledDense(keras.layers.Layer):
    """``activation(scale · (x W + b))``: a Dense layer with a fixed output scale, written by subclassing."""

    def __init__(self, units: int, scale: float = 1.0, activation=None, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.scale = scale
        self.activation = keras.activations.get(activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        self.kernel = self.add_weight(
            shape=(input_shape[-1], self.units), initializer=self.kernel_initializer, name="kernel"
        )
        self.bias = self.add_weight(shape=(self.units,), initializer="zeros", name="bias")

    def call(self, inputs):
        return self.activation(self.scale * (keras.ops.matmul(inputs, self.kernel) + self.bias))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "scale": self.scale,
            "activation": keras.activations.serialize(self.activation),
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        }
