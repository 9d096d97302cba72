"""Patch AE (Cui et al., "Patch-wise auto-encoder for visual anomaly detection").

A pretrained backbone gives stride-8 and stride-16 feature maps; the coarse one is
upsampled onto the fine grid, both are concatenated and compressed by two 1x1 conv + ReLU
layers into the representation R (B, H/8, W/8, c3). The decoder (1x1 conv, ReLU, 1x1 conv
to 8 * 8 * C values, depth-to-space) rebuilds each 8 x 8 image patch from its own vector of
R only. Training inputs carry CutPaste defects and the target is the *same* corrupted image:
the model learns to reconstruct whatever it is given, defects included (paper, sec. 2.1).

Scoring ignores the decoder: the vectors of R over all training images form a memory bank;
a test vector's score is the distance to its nearest bank vector; the map of these scores
is upsampled to the image and Gaussian-smoothed, and the image score is its maximum.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from reconad.config import PatchAeConfig
from reconad.corrupt.cutpaste import cutpaste
from reconad.errors import ConfigError
from reconad.maps import gaussian_smooth, image_score
from reconad.memory_bank import (
    MEMORY_BANK_FILE,
    build_bank,
    greedy_coreset,
    load_bank,
    nearest_distances,
    save_bank,
)
from reconad.models.backbones import (
    COARSE_STRIDE,
    FINE_STRIDE,
    build_backbone,
    freeze_batch_norm,
)
from reconad.models.base import Detector, LossFn, Method, batched_predict

REPRESENTATION = "representation"
"""Name of the layer whose output is R; :func:`encoder` cuts the model there."""
DECODER = "decoder"
"""Name of the sub-model that maps R to the image."""
MAP_NAME = "knn"

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


def build_patch_ae(config: PatchAeConfig, channels: int) -> keras.Model:
    """The Patch AE network: images ``(B, H, W, channels)`` in [0, 1] to their reconstruction.

    H and W must be multiples of 16. The layer named ``representation`` outputs R
    ``(B, H/8, W/8, compressed_channels)``; the sub-model named ``decoder`` maps R back.
    """
    backbone = build_backbone(config.backbone, config.weights, channels)
    backbone.trainable = not config.freeze_backbone  # recursive: must come before the next line
    freeze_batch_norm(backbone)
    inputs = keras.Input((None, None, channels), name="image")
    fine, coarse = backbone(inputs)
    upsampled = keras.layers.UpSampling2D(
        COARSE_STRIDE // FINE_STRIDE, interpolation="bilinear", name="upsample_coarse"
    )(coarse)
    merged = keras.layers.Concatenate(name="multiscale")([fine, upsampled])
    compressed = keras.layers.Conv2D(
        config.compressed_channels, 1, activation="relu", name="compress"
    )(merged)
    representation = keras.layers.Conv2D(
        config.compressed_channels, 1, activation="relu", name=REPRESENTATION
    )(compressed)
    decoder = build_decoder(config.compressed_channels, config.decoder_channels, channels)
    return keras.Model(inputs, decoder(representation), name="patch_ae")


def build_decoder(compressed_channels: int, hidden_channels: int, channels: int) -> keras.Model:
    """R ``(B, h, w, c3)`` to the image ``(B, 8h, 8w, channels)``, patch by patch.

    Only 1x1 convolutions: each output patch depends on its own vector of R alone.
    """
    codes = keras.Input((None, None, compressed_channels), name="representation_in")
    hidden = keras.layers.Conv2D(hidden_channels, 1, activation="relu", name="decode_hidden")(codes)
    pixels = keras.layers.Conv2D(FINE_STRIDE * FINE_STRIDE * channels, 1, name="decode_pixels")(
        hidden
    )
    image = DepthToSpace(FINE_STRIDE, dtype="float32", name="depth_to_space")(pixels)
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


class PatchAe(Method):
    """Patch AE family (methods.md section 3)."""

    family = "patch_ae"

    def build(self) -> keras.Model:
        return build_patch_ae(self.params.patch_ae, self.channels)

    def make_pairs(self, clean: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """``(x, x)`` with x = CutPaste(clean): the target is the corrupted input itself."""
        corrupted = cutpaste(clean, seed, self.params.corruption.cutpaste)
        return corrupted, corrupted

    def loss(self) -> LossFn:
        alpha = self.params.patch_ae.loss_alpha

        def patch_ae_loss(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
            return hybrid_patch_loss(y_true, y_pred, FINE_STRIDE, alpha)

        return patch_ae_loss

    def check_image_size(self, size: int) -> None:
        if size % COARSE_STRIDE:
            raise ConfigError(
                f"dataset.image_size: Patch AE needs a multiple of {COARSE_STRIDE} "
                f"(the backbone's coarsest stride), got {size}"
            )

    def after_training(self, model: keras.Model, train_images: np.ndarray, out_dir: Path) -> None:
        """Store R of every training image as the memory bank ``out_dir/memory_bank.npy``."""
        features = batched_predict(encoder(model), train_images, self.params.score.batch_size)
        bank = build_bank(features)
        config = self.params.patch_ae
        if config.coreset_fraction < 1.0:
            keep = greedy_coreset(
                bank, config.coreset_fraction, config.coreset_projection, self.params.seed
            )
            bank = bank[keep]
        save_bank(Path(out_dir) / MEMORY_BANK_FILE, bank)

    def load_detector(self, model: keras.Model, model_dir: Path) -> Detector:
        score = self.params.score
        return PatchAeDetector(
            encoder(model),
            load_bank(Path(model_dir) / MEMORY_BANK_FILE),
            sigma=score.patch_ae.sigma,
            chunk_size=score.patch_ae.chunk_size,
            batch_size=score.batch_size,
        )


class PatchAeDetector:
    """Nearest-neighbour distance of each R vector to the memory bank, as an image map."""

    map_names = (MAP_NAME,)

    def __init__(
        self,
        encoder_model: keras.Model,
        bank: np.ndarray,
        sigma: float,
        chunk_size: int,
        batch_size: int,
    ) -> None:
        self.encoder = encoder_model
        self.bank = tf.convert_to_tensor(bank, tf.float32)
        self.sigma = sigma
        self.chunk_size = chunk_size
        self.batch_size = batch_size

    def anomaly_maps(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """``{"knn": (N, H, W) float32}`` for images ``(N, H, W, C)`` in [0, 1]."""
        maps = [
            self._batch_maps(images[start : start + self.batch_size])
            for start in range(0, len(images), self.batch_size)
        ]
        empty = np.zeros((0, *images.shape[1:3]), np.float32)
        return {MAP_NAME: np.concatenate(maps, axis=0) if maps else empty}

    def image_scores(self, maps: np.ndarray) -> np.ndarray:
        """Maximum of each map: ``(N, H, W)`` to ``(N,)``."""
        return image_score(maps, "max")

    def _batch_maps(self, images: np.ndarray) -> np.ndarray:
        features = np.asarray(self.encoder(tf.convert_to_tensor(images, tf.float32)))
        count, rows, cols, depth = features.shape
        distances = nearest_distances(features.reshape(-1, depth), self.bank, self.chunk_size)
        grid = distances.reshape(count, rows, cols, 1)
        upsampled = tf.image.resize(grid, images.shape[1:3], method="bilinear")
        return gaussian_smooth(upsampled.numpy()[..., 0], self.sigma)
