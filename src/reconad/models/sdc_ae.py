"""SDC-AE (Bauer): autoencoder with stacked dilated convolutions, trained to undo corruptions.

Training input: a clean crop with soft patches corrupted by
:func:`~reconad.corrupt.elastic.elastic_patch_corruption`; target: the clean crop (loss
``restore`` or ``contrast``, :mod:`reconad.losses`). Anomaly map: the squared
reconstruction error averaged over channels, smoothed (methods.md §1), and optionally
standardised per pixel over the training normals (:mod:`reconad.pixel_stats`, not in the
paper).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import keras
import numpy as np
import tensorflow as tf
from pydantic import ConfigDict, Field

from reconad.config import (
    FitConfig,
    Fraction,
    InputConfig,
    NonNegativeFloat,
    Positive,
    PositiveFloat,
    Section,
    scaled,
)
from reconad.corrupt.elastic import ElasticConfig, ElasticOp, elastic_patch_corruption
from reconad.errors import ConfigError
from reconad.losses import OBJECTIVES, sdc_loss
from reconad.maps import IMAGE_SCORES, box_smooth, gaussian_smooth, image_score
from reconad.models.base import LossFn, MapScoredDetector, TrainedMethod, batched_predict
from reconad.models.layers import (
    BN_MOMENTUM,
    ConvexCombination,
    FusedBatchNormalization,
    SdcBlock,
)
from reconad.pixel_stats import PixelStats, fit_pixel_stats, load_pixel_stats, save_pixel_stats

if TYPE_CHECKING:
    from reconad.data.layout import CategoryData

MIN_CHANNELS = 4
"""Smallest layer width after the ``width`` multiplier."""

CCM_KERNEL = 1
"""Gate convolution of the Convex Combination Module (Model II)."""


class NetworkConfig(Section):
    """Model I/II (v2 Table 1, v3); ``width`` multiplies every layer's channels."""

    architecture: Literal["model1", "model2"]
    width: Annotated[float, Field(gt=0.0, le=4.0)]
    encoder_filters: list[Positive] = Field(min_length=1)
    sdc_filters: Positive
    dilations: list[Positive] = Field(min_length=1)
    sdc_blocks: Annotated[int, Field(ge=0)]
    sdc_kernel: Positive


class LossConfig(Section):
    """The training objective (the top-level ``loss`` block of params.yaml)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    objective: Literal[OBJECTIVES]
    # ``lambda`` is a Python keyword; the YAML key stays ``lambda``.
    lambda_: Fraction = Field(alias="lambda")


class ScoreConfig(Section):
    """Anomaly map smoothing (v1/v2 Gaussian, v3 ``anomap^{n,k}``), per-pixel
    standardisation (ours) and image score."""

    smoothing: Literal["gaussian", "anomap", "none"]
    sigma_px: PositiveFloat
    box_size_px: PositiveFloat
    box_passes: Positive
    image_score: Literal[IMAGE_SCORES]
    top_q: Annotated[float, Field(gt=0.0, le=1.0)]
    normalise: Literal["none", "pixel"]
    std_floor: PositiveFloat
    stats_sigma_px: list[NonNegativeFloat] = Field(min_length=1)


class Config(Section):
    """The ``sdc_ae`` block (and the top-level ``loss`` block it owns)."""

    input: InputConfig
    network: NetworkConfig
    train: FitConfig
    corruption: ElasticConfig
    loss: LossConfig
    score: ScoreConfig


def scaled_width(filters: int, width: float) -> int:
    """Channels of a layer with the paper's ``filters`` at multiplier ``width``."""
    return max(MIN_CHANNELS, round(filters * width))


def downsampling_factor(cfg: NetworkConfig) -> int:
    """Image sides must be multiples of this: one 2x2 pooling per encoder stage."""
    return 2 ** len(cfg.encoder_filters)


def build_sdc_ae(cfg: NetworkConfig, channels: int) -> keras.Model:
    """Model I (v2 Table 1) or Model II (Model I + Convex Combination skips, v3).

    Encoder stages [conv3x3, conv3x3, maxpool] per ``encoder_filters``; ``sdc_blocks``
    SDC blocks; decoder stages [transposed conv3x3/2, conv3x3, conv3x3] with the
    encoder widths reversed; conv1x1 to ``channels`` with a sigmoid. BatchNorm + ReLU
    follow every convolution except the last (BN there causes gridding, v2 sec. 3.3).
    Model II merges each encoder stage's output (before pooling) into the decoder right
    after the transposed convolution of the same resolution; both have the same width.

    Args:
        cfg: architecture and widths.
        channels: image channels C (1 or 3).

    Returns:
        Fully convolutional model ``(None, None, C) -> (None, None, C)``, float32 output;
        H and W must be multiples of :func:`downsampling_factor`.
    """
    if channels < 1:
        raise ValueError(f"Expected channels >= 1, Received: channels={channels}")
    inputs = keras.Input(shape=(None, None, channels), name="image")
    features = inputs
    skips = []
    for stage, filters in enumerate(cfg.encoder_filters, start=1):
        width = scaled_width(filters, cfg.width)
        features = _conv_bn_relu(features, width, f"encoder{stage}_conv1")
        features = _conv_bn_relu(features, width, f"encoder{stage}_conv2")
        skips.append(features)
        features = keras.layers.MaxPooling2D(2, name=f"encoder{stage}_pool")(features)
    for block in range(1, cfg.sdc_blocks + 1):
        features = SdcBlock(
            scaled_width(cfg.sdc_filters, cfg.width),
            cfg.dilations,
            cfg.sdc_kernel,
            name=f"sdc{block}",
        )(features)
    for stage, (filters, skip) in enumerate(
        zip(reversed(cfg.encoder_filters), reversed(skips), strict=True), start=1
    ):
        width = scaled_width(filters, cfg.width)
        features = _conv_bn_relu(features, width, f"decoder{stage}_up", transpose=True)
        if cfg.architecture == "model2":
            features = ConvexCombination(CCM_KERNEL, name=f"decoder{stage}_ccm")([features, skip])
        features = _conv_bn_relu(features, width, f"decoder{stage}_conv1")
        features = _conv_bn_relu(features, width, f"decoder{stage}_conv2")
    outputs = keras.layers.Conv2D(
        channels, 1, activation="sigmoid", dtype="float32", name="reconstruction"
    )(features)
    return keras.Model(inputs, outputs, name=f"sdc_ae_{cfg.architecture}")


def _conv_bn_relu(
    features: keras.KerasTensor, filters: int, name: str, transpose: bool = False
) -> keras.KerasTensor:
    """3x3 convolution (stride-2 transposed when ``transpose``), BatchNorm, ReLU."""
    if transpose:
        conv = keras.layers.Conv2DTranspose(
            filters, 3, strides=2, padding="same", use_bias=False, name=name
        )
    else:
        conv = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=name)
    features = FusedBatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(conv(features))
    return keras.layers.ReLU(name=f"{name}_relu")(features)


class SdcDetector(MapScoredDetector):
    """Scores images by the smoothed squared reconstruction error of a trained SDC-AE."""

    map_names: tuple[str, ...] = ("residual",)

    def __init__(
        self,
        model: keras.Model,
        score: ScoreConfig,
        image_size: int,
        batch_size: int,
        pixel_stats: PixelStats | None = None,
    ) -> None:
        self._model = model
        self._score = score
        self._image_size = image_size
        self._batch_size = batch_size
        self._pixel_stats = pixel_stats
        # Traced per image size (a category has one): static sizes let the SDC blocks skip
        # dilated taps that only read padding.
        self._residual = tf.function(self._residual_map)

    def _residual_map(self, images: tf.Tensor) -> tf.Tensor:
        reconstruction = tf.cast(self._model(images, training=False), tf.float32)
        return tf.reduce_mean(tf.square(images - reconstruction), axis=-1)

    def anomaly_maps(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """``{"residual": (N, H, W)}``: mean over channels of ``(x - F(x))^2``, smoothed,
        then standardised per pixel when the detector has pixel statistics.

        Args:
            images: float32 ``(N, H, W, C)`` in [0, 1], H and W multiples of 8.
        """
        images = np.asarray(images, dtype=np.float32)
        if len(images) == 0:
            return {"residual": np.zeros(images.shape[:3], np.float32)}
        residual = batched_predict(self._residual, images, self._batch_size)
        maps = smooth_residual(residual, self._score, self._image_size)
        if self._pixel_stats is not None:
            maps = self._pixel_stats.standardise(maps)
        return {"residual": maps}

    def image_scores(self, maps: np.ndarray) -> np.ndarray:
        """``(N,)`` scores: max (or top-q mean) of each map, per ``score.sdc_ae``."""
        return image_score(maps, self._score.image_score, self._score.top_q)


def smooth_residual(maps: np.ndarray, score: ScoreConfig, image_size: int) -> np.ndarray:
    """Apply ``score.smoothing``: Gaussian (v1/v2), ``anomap^{n,k}`` box passes (v3), none.

    Sizes are ``*_px`` settings, rescaled to ``image_size``.
    """
    if score.smoothing == "gaussian":
        return gaussian_smooth(maps, scaled(score.sigma_px, image_size))
    if score.smoothing == "anomap":
        box = max(1, round(scaled(score.box_size_px, image_size)))
        return box_smooth(maps, box, score.box_passes)
    return np.asarray(maps, dtype=np.float32)


class SdcAe(TrainedMethod):
    """SDC-AE family: Model I/II, elastic patch corruption, ``restore``/``contrast`` loss."""

    family = "sdc_ae"
    Config = Config

    def build(self) -> keras.Model:
        return build_sdc_ae(self.config.network, self.channels)

    def make_pairs(self, clean: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """``(x_hat, [x, M, x_hat])``: corrupted input; clean, mask, input for the loss."""
        corruption = ElasticOp.at_size(self.config.corruption, self.image_size)
        x_hat, x, mask = elastic_patch_corruption(clean, seed, corruption)
        return x_hat, tf.concat([x, mask, x_hat], axis=-1)

    def synthetic_defects(self, clean: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """The elastic patches and their soft masks."""
        corruption = ElasticOp.at_size(self.config.corruption, self.image_size)
        x_hat, _, mask = elastic_patch_corruption(clean, seed, corruption)
        return x_hat, mask[..., :1]

    def loss(self) -> LossFn:
        return sdc_loss(self.config.loss.objective, self.config.loss.lambda_)

    def check_image_size(self, size: int) -> None:
        super().check_image_size(size)
        factor = downsampling_factor(self.config.network)
        stages = len(self.config.network.encoder_filters)
        if size % factor:
            raise ConfigError(
                f"sdc_ae.input.size (or dataset.image_size): SDC-AE needs a multiple of {factor} "
                f"({stages} poolings), got {size}"
            )
        for index, phase in enumerate(self.fit_config().phases):
            if phase.crop % factor:
                raise ConfigError(
                    f"sdc_ae.train.phases[{index}].crop: SDC-AE needs a multiple of {factor} "
                    f"({stages} poolings), got {phase.crop}"
                )

    def after_training(self, model: keras.Model | None, data: CategoryData, out_dir: Path) -> None:
        """With ``score.normalise: pixel``, the per-pixel statistics of the smoothed maps of
        the training normals (the validation normals stay unseen for calibration), pooled
        at the candidate width of ``score.stats_sigma_px`` that the maps support."""
        score = self.config.score
        if score.normalise != "pixel":
            return
        raw = self._detector(model, pixel_stats=None)
        chunk = self.params.score.batch_size
        batches = (
            raw.anomaly_maps(data.train[start : start + chunk])["residual"]
            for start in range(0, len(data.train), chunk)
        )
        sigmas = [scaled(sigma, self.image_size) for sigma in score.stats_sigma_px]
        save_pixel_stats(out_dir, fit_pixel_stats(batches, score.std_floor, sigmas))

    def load_detector(self, model: keras.Model | None, model_dir: Path) -> SdcDetector:
        if self.config.score.normalise == "pixel":
            return self._detector(model, load_pixel_stats(model_dir))
        return self._detector(model, pixel_stats=None)

    def _detector(self, model: keras.Model | None, pixel_stats: PixelStats | None) -> SdcDetector:
        return SdcDetector(
            model, self.config.score, self.image_size, self.params.score.batch_size, pixel_stats
        )
