"""Layers shared by the reconstruction networks: the fused batch normalisation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

from reconad.models.layers import BN_MOMENTUM, FusedBatchNormalization
from reconad.models.sdc_ae import NetworkConfig, build_sdc_ae


def _pair(shape: tuple[int, ...], **kwargs: Any) -> tuple[keras.layers.Layer, keras.layers.Layer]:
    """Keras' layer and the fused one, built alike, with the same non-trivial weights."""
    rng = np.random.default_rng(0)
    keras_norm = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, **kwargs)
    fused = FusedBatchNormalization(momentum=BN_MOMENTUM, **kwargs)
    for layer in (keras_norm, fused):
        layer.build(shape)
    # Positive, as a moving variance must be; gamma, beta and the mean too, which is harmless.
    weights = [np.abs(rng.normal(1.0, 0.3, w.shape)).astype(np.float32) for w in keras_norm.weights]
    for layer in (keras_norm, fused):
        layer.set_weights(weights)
    return keras_norm, fused


def _training_step(layer: keras.layers.Layer, inputs: tf.Tensor) -> tuple[Any, ...]:
    """Outputs and the gradients of a weighted loss, in training mode, in a graph."""
    ramp = tf.reshape(tf.range(tf.size(inputs), dtype=tf.float32), inputs.shape) / 1000.0

    @tf.function
    def step(images: tf.Tensor) -> tuple[Any, ...]:
        with tf.GradientTape() as tape:
            tape.watch(images)
            outputs = layer(images, training=True)
            loss = tf.reduce_sum(outputs * tf.sin(ramp))
        return outputs, tape.gradient(loss, [images, *layer.trainable_weights])

    return step(inputs)


@pytest.mark.parametrize(
    ("shape", "options"),
    [
        ((4, 6, 10, 3), {}),
        ((2, 9, 5, 16), {}),
        ((3, 8, 8, 4), {"scale": False}),
        ((3, 8, 8, 4), {"center": False, "epsilon": 1e-5}),
    ],
)
def test_fused_batch_norm_trains_as_keras_does(
    shape: tuple[int, ...], options: dict[str, Any]
) -> None:
    inputs = tf.constant(np.random.default_rng(1).normal(2.0, 3.0, shape), tf.float32)
    keras_norm, fused = _pair(shape, **options)
    expected_outputs, expected_gradients = _training_step(keras_norm, inputs)
    outputs, gradients = _training_step(fused, inputs)
    np.testing.assert_allclose(outputs, expected_outputs, rtol=1e-4, atol=1e-5)
    for gradient, expected in zip(gradients, expected_gradients, strict=True):
        np.testing.assert_allclose(gradient, expected, rtol=1e-4, atol=1e-4)
    for moving, expected in zip(
        fused.non_trainable_weights, keras_norm.non_trainable_weights, strict=True
    ):
        np.testing.assert_allclose(moving.numpy(), expected.numpy(), rtol=1e-5)


def test_fused_batch_norm_runs_the_fused_kernel_when_training() -> None:
    _, fused = _pair((2, 4, 4, 3))
    graph = (
        tf.function(lambda x: fused(x, training=True))
        .get_concrete_function(tf.TensorSpec((2, 4, 4, 3), tf.float32))
        .graph
    )
    assert "FusedBatchNormV3" in {op.type for op in graph.get_operations()}


@pytest.mark.parametrize(
    ("training", "options"),
    [(False, {}), (True, {"renorm": True}), (True, {"axis": 1})],
)
def test_fused_batch_norm_leaves_other_cases_to_keras(
    training: bool, options: dict[str, Any]
) -> None:
    inputs = tf.constant(np.random.default_rng(2).normal(size=(2, 3, 5, 3)), tf.float32)
    keras_norm, fused = _pair(inputs.shape, **options)
    np.testing.assert_allclose(
        fused(inputs, training=training), keras_norm(inputs, training=training), rtol=1e-6
    )
    for moving, expected in zip(
        fused.non_trainable_weights, keras_norm.non_trainable_weights, strict=True
    ):
        np.testing.assert_allclose(moving.numpy(), expected.numpy(), rtol=1e-6)


def test_fused_batch_norm_saves_and_loads_as_itself(tmp_path: Path) -> None:
    model = build_sdc_ae(
        NetworkConfig(
            architecture="model1",
            width=0.0625,
            encoder_filters=[64, 128],
            sdc_filters=64,
            dilations=[1, 2],
            sdc_blocks=1,
            sdc_kernel=3,
        ),
        channels=1,
    )
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    norms = [layer for layer in loaded.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(isinstance(layer, FusedBatchNormalization) for layer in norms)
    images = np.random.default_rng(3).random((1, 16, 16, 1)).astype(np.float32)
    np.testing.assert_allclose(loaded(images), model(images), rtol=1e-6)
