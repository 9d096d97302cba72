"""Patch AE (Cui et al., "Patch-wise auto-encoder for visual anomaly detection").

A pretrained backbone gives two mid-level feature maps; both are brought to one grid of
stride p (the coarser upsampled, :func:`~reconad.models.backbones.patch_features`),
concatenated and compressed by two 1x1 conv + ReLU layers into the representation R
(B, H/p, W/p, c3). The decoder (1x1 conv, ReLU, 1x1 conv to p * p * C values,
depth-to-space) rebuilds each p x p image patch from its own vector of R only. Training
inputs carry CutPaste defects and the target is the *same* corrupted image: the model
learns to reconstruct whatever it is given, defects included (paper, sec. 2.1).

Scoring ignores the decoder: the vectors of R over all training images form a memory bank;
a test vector's score is the distance to its nearest bank vector, "as PatchCore" (sec.
2.6): the map is upsampled and smoothed, the image score is the largest patch score with
PatchCore's re-weighting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from reconad.config import FitConfig, Fraction, InputConfig, Positive, Section
from reconad.corrupt.cutpaste import CutPasteConfig, cutpaste, cutpaste_with_mask
from reconad.data.layout import CategoryData
from reconad.memory_bank import (
    MEMORY_BANK_FILE,
    BankConfig,
    KnnScoreConfig,
    MemoryBankDetector,
    build_bank,
    load_bank,
    save_bank,
)
from reconad.models.backbones import BackboneConfig, freeze_batch_norm, patch_features
from reconad.models.base import Detector, LossFn, TrainedMethod, batched_predict

COMPRESSION_INITS = ("orthogonal", "glorot")


class NetworkConfig(BackboneConfig):
    freeze_backbone: bool
    compressed_channels: Positive
    compression_init: Literal[COMPRESSION_INITS]
    """orthogonal: the untrained code is an orthogonal projection of the features, shifted
    to be positive on the training images (:func:`shift_code_positive`), so it keeps their
    distances; glorot: Keras' default."""
    decoder_channels: Positive


class LossConfig(Section):
    alpha: Fraction
    """Weight of the patch-standardised term of the hybrid loss (eq. 3)."""


class Config(Section):
    """The ``patch_ae`` block."""

    input: InputConfig
    network: NetworkConfig
    train: FitConfig
    corruption: CutPasteConfig
    loss: LossConfig
    bank: BankConfig
    score: KnnScoreConfig


COMPRESS = "compress"
"""Name of the first 1 x 1 conv of the compression (features to c ReLU units)."""
REPRESENTATION = "representation"
"""Name of the layer whose output is R; :func:`encoder` cuts the model there."""
DECODER = "decoder"
"""Name of the sub-model that maps R to the image."""
MAP_NAME = "knn"
SHIFT_IMAGES = 64
"""Training images whose features set the orthogonal code's shift (:func:`shift_sample`)."""
SHIFT_MARGIN = 0.1
"""Room below the training features' lowest code, as a fraction of each coordinate's range,
for test features that reach lower (on bottle the ReLU still cut 0.001-0.002 % of the test
codes' coordinates, docs/quality.md)."""

_STD_EPS = 1e-6  # added to the patch variance before the square root (as in MAE)
_NORM_EPS = 1e-12  # keeps the gradient of ||x||_2 finite at x = 0


@keras.saving.register_keras_serializable(package="reconad")
class DepthToSpace(keras.layers.Layer):
    """(B, h, w, p * p * C) to (B, h * p, w * p, C): vector (i, j) fills the p x p patch (i, j).

    Channel ``(dy * p + dx) * C + c`` goes to pixel ``(i * p + dy, j * p + dx)``, channel c
    (the layout of ``tf.nn.depth_to_space``).

    Args:
        block_size: patch side p.
    """

    def __init__(self, block_size: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if block_size < 1:
            raise ValueError(f"Expected block_size >= 1. Received: block_size={block_size}")
        self.block_size = block_size

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if input_shape[-1] is None or input_shape[-1] % (self.block_size**2):
            raise ValueError(
                f"Expected channels divisible by block_size**2 = {self.block_size**2}. "
                f"Received: input_shape={input_shape}"
            )

    def call(self, inputs, training=False):
        p = self.block_size
        channels = inputs.shape[-1] // (p * p)
        shape = ops.shape(inputs)
        batch, rows, cols = shape[0], shape[1], shape[2]
        blocks = ops.reshape(inputs, (batch, rows, cols, p, p, channels))
        blocks = ops.transpose(blocks, (0, 1, 3, 2, 4, 5))
        return ops.reshape(blocks, (batch, rows * p, cols * p, channels))

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        p = self.block_size

        def scaled(side: int | None) -> int | None:
            return None if side is None else side * p

        return (
            input_shape[0],
            scaled(input_shape[1]),
            scaled(input_shape[2]),
            input_shape[3] // (p * p),
        )

    def get_config(self) -> dict:
        return {**super().get_config(), "block_size": self.block_size}


@keras.saving.register_keras_serializable(package="reconad")
class PointwiseIdentity(keras.initializers.Initializer):
    """1x1 conv kernel ``(1, 1, n, n)`` that passes its input through: the first
    compression layer's output is non-negative, so the second starts as the identity and
    keeps the distances the first one kept."""

    def __call__(self, shape: tuple[int, ...], dtype: str | None = None) -> tf.Tensor:
        *window, inputs, outputs = shape
        if any(side != 1 for side in window) or inputs != outputs:
            raise ValueError(f"Expected a square 1x1 kernel. Received: shape={shape}")
        return ops.reshape(ops.eye(inputs, dtype=dtype), shape)


def compression_initializers(
    init: str,
) -> tuple[keras.initializers.Initializer | str, keras.initializers.Initializer | str]:
    """Kernel initialisers of the two compression layers for ``network.compression_init``."""
    if init == "orthogonal":
        return keras.initializers.Orthogonal(), PointwiseIdentity()
    return "glorot_uniform", "glorot_uniform"


def shift_code_positive(model: keras.Model, images: np.ndarray, batch_size: int) -> None:
    """Set the first compression layer's bias so that its ReLU passes every coordinate of
    the training features ``images`` give (:func:`positive_shift`).

    With an orthonormal kernel Q the code is then ``Q^T x + b``: the distances of an
    orthogonal projection, in as many directions as channels, which is PatchCore's bank.
    A zero bias would let the ReLU cut off the negative half of each direction (a random
    projection's coordinates take both signs), and an earlier ``[Q, -Q]`` kernel that kept
    both halves in two channels each still shrank every difference across zero
    (docs/quality.md). Only the bias depends on the images; a resumed run loads its
    checkpoint over it.
    """
    compress = model.get_layer(COMPRESS)
    features = batched_predict(
        keras.Model(model.input, compress.input), shift_sample(images), batch_size
    )
    kernel = ops.convert_to_numpy(compress.kernel)[0, 0].astype(np.float64)
    codes = features.reshape(-1, features.shape[-1]).astype(np.float64) @ kernel
    compress.bias.assign(positive_shift(codes).astype(np.float32))


def shift_sample(images: np.ndarray) -> np.ndarray:
    """At most ``SHIFT_IMAGES`` of ``images``, evenly spaced: the shift's cost does not grow
    with the dataset."""
    count = min(SHIFT_IMAGES, len(images))
    return images[np.linspace(0, len(images) - 1, count).astype(int)]


def positive_shift(codes: np.ndarray) -> np.ndarray:
    """The bias that lifts every row of ``codes`` ``(M, c)`` above zero, with a margin of
    ``SHIFT_MARGIN`` of each coordinate's range for codes that reach lower."""
    low, high = codes.min(axis=0), codes.max(axis=0)
    return SHIFT_MARGIN * (high - low) - low


def build_patch_ae(config: NetworkConfig, channels: int) -> keras.Model:
    """The Patch AE network: images ``(B, H, W, channels)`` in [0, 1] to their reconstruction.

    H and W must be multiples of the backbone's coarsest stride. The layer named
    ``representation`` outputs R ``(B, H/p, W/p, compressed_channels)``, p =
    ``config.stride``; the sub-model named ``decoder`` maps R back.
    """
    backbone = config.build(channels, "patch_ae")
    backbone.trainable = not config.freeze_backbone  # recursive: must come before the next line
    freeze_batch_norm(backbone)
    features = patch_features(backbone, config.stride, config.aggregate)
    inputs = keras.Input((None, None, channels), name="image")
    first, second = compression_initializers(config.compression_init)
    compressed = keras.layers.Conv2D(
        config.compressed_channels, 1, activation="relu", name=COMPRESS, kernel_initializer=first
    )(features(inputs))
    representation = keras.layers.Conv2D(
        config.compressed_channels,
        1,
        activation="relu",
        name=REPRESENTATION,
        kernel_initializer=second,
    )(compressed)
    decoder = build_decoder(
        config.compressed_channels, config.decoder_channels, channels, config.stride
    )
    return keras.Model(inputs, decoder(representation), name="patch_ae")


def build_decoder(
    compressed_channels: int, hidden_channels: int, channels: int, patch: int
) -> keras.Model:
    """R ``(B, h, w, c3)`` to the image ``(B, patch * h, patch * w, channels)``, patch by patch.

    Only 1x1 convolutions: each output patch depends on its own vector of R alone.
    """
    codes = keras.Input((None, None, compressed_channels), name="representation_in")
    hidden = keras.layers.Conv2D(hidden_channels, 1, activation="relu", name="decode_hidden")(codes)
    pixels = keras.layers.Conv2D(patch * patch * channels, 1, name="decode_pixels")(hidden)
    image = DepthToSpace(patch, dtype="float32", name="depth_to_space")(pixels)
    return keras.Model(codes, image, name=DECODER)


def encoder(model: keras.Model) -> keras.Model:
    """The part of a Patch AE ``model`` that outputs R ``(B, H/8, W/8, c3)``."""
    return keras.Model(model.input, model.get_layer(REPRESENTATION).output, name="encoder")


def hybrid_patch_loss(y_true: tf.Tensor, y_pred: tf.Tensor, patch: int, alpha: float) -> tf.Tensor:
    """Paper eq. 3, per image.

    ``alpha * sum_p ||norm(pred_p) - norm(true_p)||_2 + (1 - alpha) * sum_p ||pred_p - true_p||_2``
    over the non-overlapping ``patch`` x ``patch`` patches, where norm() standardises a patch
    (all its pixels and channels) by its own mean and standard deviation, as MAE does.

    Args:
        y_true: target images ``(B, H, W, C)``.
        y_pred: reconstructions ``(B, H, W, C)``.
        patch: patch side (the stride of R).
        alpha: weight of the standardised term, in [0, 1].

    Returns:
        ``(B,)`` losses.
    """
    true_patches = tf.nn.space_to_depth(tf.cast(y_true, tf.float32), patch)
    pred_patches = tf.nn.space_to_depth(tf.cast(y_pred, tf.float32), patch)
    raw = _patch_norms(pred_patches - true_patches)
    standardised = _patch_norms(_standardise(pred_patches) - _standardise(true_patches))
    return alpha * standardised + (1.0 - alpha) * raw


def _standardise(patches: tf.Tensor) -> tf.Tensor:
    mean, variance = tf.nn.moments(patches, axes=[-1], keepdims=True)
    return (patches - mean) / tf.sqrt(variance + _STD_EPS)


def _patch_norms(differences: tf.Tensor) -> tf.Tensor:
    """Sum over patches of the L2 norm of each patch's difference vector: (B,)."""
    norms = tf.sqrt(tf.reduce_sum(tf.square(differences), axis=-1) + _NORM_EPS)
    return tf.reduce_sum(norms, axis=(1, 2))


class PatchAe(TrainedMethod):
    """Patch AE family (methods.md section 3)."""

    family = "patch_ae"
    Config = Config

    def build(self) -> keras.Model:
        return build_patch_ae(self.config.network, self.channels)

    def make_pairs(self, clean: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """``(x, x)`` with x = CutPaste(clean): the target is the corrupted input itself."""
        corrupted = cutpaste(clean, seed, self.config.corruption)
        return corrupted, corrupted

    def synthetic_defects(self, clean: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """CutPaste defects and the pixels they pasted."""
        return cutpaste_with_mask(clean, seed, self.config.corruption)

    def initialise(self, model: keras.Model, data: CategoryData) -> None:
        """The orthogonal code's shift, from the training images' features."""
        if self.config.network.compression_init == "orthogonal":
            shift_code_positive(model, data.train, self.params.score.batch_size)

    def loss(self) -> LossFn:
        alpha = self.config.loss.alpha
        patch = self.config.network.stride

        def patch_ae_loss(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
            return hybrid_patch_loss(y_true, y_pred, patch, alpha)

        return patch_ae_loss

    def check_image_size(self, size: int) -> None:
        super().check_image_size(size)
        self.config.network.check_image_size(size, self.family)

    def after_training(self, model: keras.Model | None, data: CategoryData, out_dir: Path) -> None:
        """Store R of every training image as the memory bank ``out_dir/memory_bank.npy``."""
        features = batched_predict(encoder(model), data.train, self.params.score.batch_size)
        bank = self.config.bank.thinned(build_bank(features), self.params.seed)
        save_bank(Path(out_dir) / MEMORY_BANK_FILE, bank)

    def load_detector(self, model: keras.Model | None, model_dir: Path) -> Detector:
        return MemoryBankDetector(
            encoder(model),
            load_bank(Path(model_dir) / MEMORY_BANK_FILE),
            MAP_NAME,
            self.config.score,
            self.image_size,
            self.params.score.batch_size,
        )
