"""Keras layers of the reconstruction networks.

SDC-AE's stacked dilated convolutions and Convex Combination Module, the upsampling
convolution of AESc's decoder, and the batch normalisation both train with.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

# Keras' default BatchNorm momentum (0.99) needs thousands of steps to forget the
# initial moving variance of 1; quick CPU runs train for a few hundred, and
# low-contrast textures give first-layer activations with variance ~1e-3, so with 0.99
# the inference-mode output collapses to a constant. 0.9 tracks the statistics within
# a few dozen steps.
BN_MOMENTUM = 0.9


@keras.saving.register_keras_serializable(package="reconad")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """Keras' BatchNormalization whose training step runs TensorFlow's fused kernel.

    Keras 3 normalises a training batch with separate moment, subtract and multiply ops,
    and their gradients (Tile, Mul) with them; on a CPU that is about a quarter of
    SDC-AE's step at 256 px, most of it in the full-resolution layers of few channels
    (docs/quality.md). TensorFlow's ``FusedBatchNormV3`` does the forward and the
    backward pass in one kernel each (oneDNN on a CPU, cuDNN on a GPU). The outputs, the
    gradients and the moving statistics are Keras' own: the kernel returns the
    Bessel-corrected batch variance, which is rescaled to the biased one Keras averages.
    Everything the kernel does not cover (inference, masks, renorm, synchronised
    statistics, other ranks or axes) goes through Keras unchanged.
    """

    def call(self, inputs: Any, training: bool | None = None, mask: Any = None) -> Any:
        if not self._fusable(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        scale = self.gamma if self.scale else tf.ones((channels,))
        offset = self.beta if self.center else tf.zeros((channels,))
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs,
            tf.cast(scale, tf.float32),
            tf.cast(offset, tf.float32),
            epsilon=self.epsilon,
            is_training=True,
        )
        count = tf.cast(tf.size(inputs) // channels, tf.float32)
        variance = variance * (count - 1.0) / count
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(
            self.moving_variance * self.momentum + variance * (1.0 - self.momentum)
        )
        return tf.cast(outputs, self.compute_dtype)

    def _fusable(self, inputs: Any, training: bool | None, mask: Any) -> bool:
        """Whether this call is a training step the fused kernel computes as Keras does."""
        return bool(
            training
            and self.trainable
            and mask is None
            and not self.renorm
            and not self.synchronized
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and inputs.shape[-1] is not None
        )


@keras.saving.register_keras_serializable(package="reconad")
class SdcBlock(keras.layers.Layer):
    """Stacked dilated convolutions (Bauer v2 sec. 3.3, Table 1).

    Parallel ``kernel_size`` x ``kernel_size`` convolutions, one per dilation rate, each
    with ``filters`` outputs, are concatenated (``filters * len(dilations)`` channels),
    then fused by a 3x3 convolution of the same width. Every convolution is followed by
    batch normalisation and ReLU, as the paper does after every convolution but the last
    of the network. Convolutions carry no bias: the normalisation's offset replaces it.

    Args:
        filters: outputs of each dilated convolution.
        dilations: dilation rates, one branch each.
        kernel_size: side of the dilated kernels.
    """

    def __init__(
        self,
        filters: int,
        dilations: Sequence[int] = (1, 2, 4, 8, 16, 32),
        kernel_size: int = 5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if filters < 1 or kernel_size < 1 or not dilations or min(dilations) < 1:
            raise ValueError(
                "Expected filters >= 1, kernel_size >= 1 and dilations >= 1, Received: "
                f"filters={filters}, kernel_size={kernel_size}, dilations={list(dilations)}"
            )
        self.filters = int(filters)
        self.dilations = tuple(int(rate) for rate in dilations)
        self.kernel_size = int(kernel_size)
        self.branches = [
            keras.layers.Conv2D(
                self.filters,
                self.kernel_size,
                padding="same",
                dilation_rate=rate,
                use_bias=False,
                dtype=self.dtype_policy,
                name=f"dilated_{index}",
            )
            for index, rate in enumerate(self.dilations)
        ]
        self.branch_norm = FusedBatchNormalization(
            momentum=BN_MOMENTUM, dtype=self.dtype_policy, name="branch_norm"
        )
        self.fuse = keras.layers.Conv2D(
            self.stacked_channels,
            3,
            padding="same",
            use_bias=False,
            dtype=self.dtype_policy,
            name="fuse",
        )
        self.fuse_norm = FusedBatchNormalization(
            momentum=BN_MOMENTUM, dtype=self.dtype_policy, name="fuse_norm"
        )

    def _dilated(self, branch: keras.layers.Conv2D, inputs: Any) -> Any:
        """``branch(inputs)`` without the taps that can only read zero padding.

        With dilation d, a tap r steps from the kernel centre reads ``r * d`` pixels away;
        on a map of side H it is inside the map for no output pixel once ``r * d >= H``.
        On small crops (an 8 x 8 bottleneck at 64 px, dilations up to 16 or 32) most
        taps are such, and TensorFlow's dilated convolution still pays for padding of
        ``2 * 2 * d`` pixels around the map. Dropping them gives the same output. Needs
        the map's static size (known when training on fixed crops); otherwise, or when
        every tap can reach the map, the branch runs as it is.
        """
        height, width = inputs.shape[1], inputs.shape[2]
        rate = branch.dilation_rate[0]
        centre = self.kernel_size // 2
        if height is None or width is None:
            return branch(inputs)
        rows = min(centre, (height - 1) // rate)
        cols = min(centre, (width - 1) // rate)
        if rows == centre and cols == centre:
            return branch(inputs)
        kernel = branch.kernel[centre - rows : centre + rows + 1, centre - cols : centre + cols + 1]
        kernel = keras.ops.cast(kernel, inputs.dtype)
        dilation = rate if max(rows, cols) > 0 else 1
        return keras.ops.conv(inputs, kernel, padding="same", dilation_rate=dilation)

    @property
    def stacked_channels(self) -> int:
        """Channels of the concatenated branches and of the block's output."""
        return self.filters * len(self.dilations)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        for branch in self.branches:
            branch.build(input_shape)
        stacked = self.compute_output_shape(input_shape)
        self.branch_norm.build(stacked)
        self.fuse.build(stacked)
        self.fuse_norm.build(stacked)

    def call(self, inputs: Any, training: bool = False) -> Any:
        stacked = keras.ops.concatenate(
            [self._dilated(branch, inputs) for branch in self.branches], axis=-1
        )
        stacked = keras.ops.relu(self.branch_norm(stacked, training=training))
        return keras.ops.relu(self.fuse_norm(self.fuse(stacked), training=training))

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (*tuple(input_shape)[:-1], self.stacked_channels)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "filters": self.filters,
            "dilations": list(self.dilations),
            "kernel_size": self.kernel_size,
        }


@keras.saving.register_keras_serializable(package="reconad")
class ConvexCombination(keras.layers.Layer):
    """Convex Combination Module (Bauer v3, Model II): a learnt gate between skip and decoder.

    Called on ``[decoder, skip]`` (same shape): ``alpha = sigmoid(conv([decoder, skip]))``
    with one gate per pixel and channel, output ``alpha * skip + (1 - alpha) * decoder``,
    so every output value lies between its two inputs. The v3 text is not available;
    this form is our reading of "convex combination" (methods.md §1). The gate is a
    ``kernel_size`` convolution (1x1 by default: a per-pixel decision from the two
    features, cheap next to the 3x3 convolutions around it).

    Args:
        kernel_size: side of the gate convolution.
    """

    def __init__(self, kernel_size: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if kernel_size < 1:
            raise ValueError(f"Expected kernel_size >= 1, Received: kernel_size={kernel_size}")
        self.kernel_size = int(kernel_size)

    def build(self, input_shape: Sequence[tuple[int | None, ...]]) -> None:
        decoder_shape, skip_shape = input_shape
        channels = decoder_shape[-1]
        if channels is None or skip_shape[-1] != channels:
            raise ValueError(
                "Expected decoder and skip features with the same known number of channels, "
                f"Received: decoder={decoder_shape}, skip={skip_shape}"
            )
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.kernel_size, self.kernel_size, 2 * channels, channels),
            initializer="glorot_uniform",
        )
        self.bias = self.add_weight(name="bias", shape=(channels,), initializer="zeros")

    def call(self, inputs: Sequence[Any]) -> Any:
        decoder, skip = inputs
        both = keras.ops.concatenate([decoder, skip], axis=-1)
        alpha = keras.ops.sigmoid(keras.ops.conv(both, self.kernel, padding="same") + self.bias)
        return alpha * skip + (1.0 - alpha) * decoder

    def compute_output_shape(
        self, input_shape: Sequence[tuple[int | None, ...]]
    ) -> tuple[int | None, ...]:
        return tuple(input_shape[0])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "kernel_size": self.kernel_size}


UPSAMPLING = 2
"""Factor of :class:`UpsamplingConv2D`'s nearest-neighbour upsampling."""


def phase_taps(kernel_size: int) -> np.ndarray:
    """``(2, K', kernel_size)`` 0/1 matrices: which kernel taps read which input pixel.

    After nearest x2 upsampling, output pixel ``2 i + a`` (phase ``a``) of a "same"
    convolution reads tap ``t`` from input pixel ``i + (a + t - r) // 2`` (``r`` the
    kernel's radius), so the taps that land on the same input pixel add up. Row ``a``
    maps the ``kernel_size`` taps onto ``K' = 2 * ceil(r / 2) + 1`` input offsets.
    """
    radius = (kernel_size - 1) // 2
    reach = (radius + 1) // 2
    taps = np.zeros((UPSAMPLING, 2 * reach + 1, kernel_size), np.float32)
    for phase in range(UPSAMPLING):
        for tap in range(kernel_size):
            taps[phase, (phase + tap - radius) // UPSAMPLING + reach, tap] = 1.0
    return taps


@keras.saving.register_keras_serializable(package="reconad")
class UpsamplingConv2D(keras.layers.Conv2D):
    """Nearest-neighbour x2 upsampling followed by a "same" convolution, in one layer.

    The same function and weights as ``UpSampling2D(2)`` then ``Conv2D(filters,
    kernel_size, padding="same")`` (the kernel keeps its shape), computed as a sub-pixel
    convolution at the input's resolution: one small convolution with ``4 * filters``
    outputs, one per output phase, whose kernels are sums of the original taps
    (:func:`phase_taps`), rearranged by ``depth_to_space``. On a CPU the upsampled form
    spends most of AESc's training step in the backward pass of its last, full-size
    convolutions with few channels; this form does a quarter of the positions with
    four times the outputs (``benchmarks/training.py``).

    Only stride 1, no dilation, an odd kernel and ``channels_last``: the configuration
    of AESc's decoder.
    """

    def __init__(self, filters: int, kernel_size: int, **kwargs: Any) -> None:
        kwargs.setdefault("padding", "same")
        super().__init__(filters, kernel_size, **kwargs)
        if (
            self.padding != "same"
            or self.kernel_size[0] != self.kernel_size[1]
            or self.kernel_size[0] % 2 == 0
            or self.strides != (1, 1)
            or self.dilation_rate != (1, 1)
            or self.data_format != "channels_last"
        ):
            raise ValueError(
                "Expected an odd square kernel, same padding, stride 1, no dilation and "
                f"channels_last, Received: kernel_size={self.kernel_size}, "
                f"padding={self.padding}, strides={self.strides}, "
                f"dilation_rate={self.dilation_rate}, data_format={self.data_format}"
            )
        self._taps = phase_taps(self.kernel_size[0])

    def call(self, inputs: Any) -> Any:
        taps = keras.ops.convert_to_tensor(self._taps, dtype=self.kernel.dtype)
        # (K', K', C_in, row phase, column phase, filters): depth_to_space's channel order.
        phases = keras.ops.einsum("aik,bjl,klcf->ijcabf", taps, taps, self.kernel)
        reach, channels = phases.shape[0], phases.shape[2]
        kernel = keras.ops.reshape(
            phases, (reach, reach, channels, UPSAMPLING * UPSAMPLING * self.filters)
        )
        outputs = keras.ops.depth_to_space(
            keras.ops.conv(inputs, keras.ops.cast(kernel, inputs.dtype), padding="same"),
            UPSAMPLING,
        )
        if self.use_bias:
            outputs = outputs + keras.ops.cast(self.bias, outputs.dtype)
        return self.activation(outputs)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        batch, height, width = tuple(input_shape)[:3]
        scaled = [None if side is None else UPSAMPLING * side for side in (height, width)]
        return (batch, *scaled, self.filters)
