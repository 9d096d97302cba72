"""Keras layers of SDC-AE: stacked dilated convolutions and the Convex Combination Module."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

# Keras' default BatchNorm momentum (0.99) needs thousands of steps to forget the
# initial moving variance of 1; quick CPU runs train for a few hundred, and
# low-contrast textures give first-layer activations with variance ~1e-3, so with 0.99
# the inference-mode output collapses to a constant. 0.9 tracks the statistics within
# a few dozen steps.
BN_MOMENTUM = 0.9


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
        self.branch_norm = keras.layers.BatchNormalization(
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
        self.fuse_norm = keras.layers.BatchNormalization(
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
