"""AESc and AE (Collin & De Vleeschouwer): a strided-convolution autoencoder, with or
without additive skip connections, trained to remove synthetic corruptions, scored by
the reconstruction residual or by the MC-dropout uncertainty.

Network (paper sec. III-A, Fig. 2, and the authors' public code where the paper is
silent). For depth ``d = 0 .. D-1`` (D = 6) the encoder applies a 5x5 convolution of
stride 2, batch normalisation, LeakyReLU and dropout of rate ``dropout[d]``, giving
``e_d`` at 1/2^(d+1) of the input size. The decoder has D stages, each an x2
upsampling followed by a 5x5 convolution: stages ``d = D-2 .. 0`` end in BN, LeakyReLU
and dropout ``dropout[d]`` and, for AESc, add ``e_d``; the last stage is the output
convolution (sigmoid) at full size. So AESc has D - 1 = 5 additive skips: the latent
``e_{D-1}`` has no decoder feature of its own size, and a skip at full size would hand
the input straight to the output. AE is the same network without the adds. Dropout
sits where the authors put it: after every encoder stage (so skips carry dropped
features) and before every skip add.

MC-dropout. All layers before the first dropout with a positive rate are
deterministic: :class:`AescNetwork` runs this *stem* once, repeats its outputs T times
along the batch axis and runs the stochastic *head* once on the T x B batch, with
batch normalisation in inference mode and one independent, seeded dropout mask per
pass. Pass ``t`` with seed ``s_t`` gives exactly the output of a full forward pass
with that seed, so batching changes the cost, not the result. The uncertainty map is
the population variance (divided by T) over the passes, averaged over channels.

Maps. The paper scores the raw residual (or variance). ``aesc.score.sigma_px`` > 0
smooths both maps with a Gaussian first, as SDC-AE and PatchCore do: a raw residual is
speckled where the reconstruction is sharp, and a stain-sized defect is a blob, not
single pixels (docs/quality.md has the figures on bottle). The ``paper`` profile keeps 0.

Image score: the paper's L^p norm of the (smoothed) map, ``(sum_ij |m_ij|^p)^(1/p)`` (eq. 1),
not normalised by the number of pixels; AUROC is unaffected as every image of a
category has the same size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import keras
import numpy as np
import tensorflow as tf
from pydantic import Field, model_validator

from reconad.config import (
    FitConfig,
    InputConfig,
    NonNegativeFloat,
    Positive,
    PositiveFloat,
    Section,
    scaled,
)
from reconad.corrupt.stain import CORRUPTION_MODELS, corrupt
from reconad.errors import ConfigError
from reconad.maps import gaussian_smooth
from reconad.models.base import (
    Detector,
    LossFn,
    MapScoredDetector,
    TrainedMethod,
    batched_predict,
)
from reconad.models.layers import BN_MOMENTUM, FusedBatchNormalization, UpsamplingConv2D

MAP_NAMES = ("residual", "uncertainty")


class NetworkConfig(Section):
    """AESc (``skips``) or the plain AE; widths and dropout per depth, highest resolution
    first."""

    skips: bool
    width: Annotated[float, Field(gt=0.0, le=4.0)]
    filters: list[Positive] = Field(min_length=2)
    kernel_size: Positive
    dropout: list[Annotated[float, Field(ge=0.0, lt=1.0)]]

    @model_validator(mode="after")
    def _one_rate_per_depth(self) -> NetworkConfig:
        if len(self.dropout) != len(self.filters):
            raise ValueError(
                f"aesc.network.dropout: needs one rate per depth ({len(self.filters)}), "
                f"got {len(self.dropout)}"
            )
        return self


class CorruptionConfig(Section):
    model: Literal[CORRUPTION_MODELS]


class ScoreConfig(Section):
    """Which map decides (residual or MC-dropout uncertainty), how both are smoothed,
    and the image score's p."""

    map: Literal[MAP_NAMES]
    sigma_px: NonNegativeFloat
    """Gaussian smoothing of the maps, pixels at 256 px; 0: the raw maps (the paper)."""
    p: PositiveFloat
    mc_passes: Positive


class Config(Section):
    """The ``aesc`` block."""

    input: InputConfig
    network: NetworkConfig
    train: FitConfig
    corruption: CorruptionConfig
    score: ScoreConfig


SEED_RANGE = 2**31
"""Dropout layer seeds are folded into stateless seeds as int32 data."""


@keras.saving.register_keras_serializable(package="reconad")
class McDropout(keras.layers.Layer):
    """Dropout that can also draw one seeded mask per MC pass, for batched MC-dropout.

    ``call`` is ordinary dropout (active when ``training``), used by ``fit``.
    :meth:`sample` is the MC-dropout form used at scoring time: it is explicit about
    its randomness, so batch normalisation can stay in inference mode while dropout is
    active.

    Args:
        rate: fraction of units dropped, in [0, 1).
        seed: this layer's seed; it also tells its MC masks apart from other layers'.
    """

    def __init__(self, rate: float, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"Expected 0 <= rate < 1, Received: rate={rate}")
        if not 0 <= seed < SEED_RANGE:
            raise ValueError(f"Expected 0 <= seed < 2**31, Received: seed={seed}")
        self.rate = float(rate)
        self.seed = int(seed)
        self.seed_generator: keras.random.SeedGenerator | None = None

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if self.rate > 0.0:
            self.seed_generator = keras.random.SeedGenerator(self.seed)
        self.built = True

    def call(self, inputs: Any, training: bool = False) -> Any:
        if training and self.rate > 0.0:
            return keras.random.dropout(inputs, self.rate, seed=self.seed_generator)
        return inputs

    def sample(self, inputs: tf.Tensor, pass_seeds: tf.Tensor | None) -> tf.Tensor:
        """Dropout with one mask per MC pass.

        Args:
            inputs: ``(T * B, h, w, c)``, pass-major (the B images of pass 0 first).
            pass_seeds: ``(T, 2)`` one stateless seed per pass; ``None`` disables dropout.

        Returns:
            ``inputs`` with units dropped and the rest scaled by ``1 / (1 - rate)``; the
            mask of pass ``t`` depends only on ``pass_seeds[t]``, this layer's seed and
            the per-pass shape ``(B, h, w, c)``.
        """
        if pass_seeds is None or self.rate == 0.0:
            return inputs
        shape = tf.shape(inputs)
        per_pass = tf.concat([[shape[0] // tf.shape(pass_seeds)[0]], shape[1:]], axis=0)

        def keep_mask(pass_seed: tf.Tensor) -> tf.Tensor:
            layer_seed = tf.random.experimental.stateless_fold_in(pass_seed, self.seed)
            return tf.random.stateless_uniform(per_pass, layer_seed) >= self.rate

        keep = tf.map_fn(keep_mask, pass_seeds, fn_output_signature=tf.bool)
        scaled = inputs / (1.0 - self.rate)
        return tf.where(tf.reshape(keep, shape), scaled, tf.zeros_like(scaled))

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


def build_network(
    channels: int,
    filters: Sequence[int],
    kernel_size: int,
    dropout: Sequence[float],
    skips: bool,
    seed: int,
) -> keras.Model:
    """AESc (``skips``) or AE, input ``(None, None, channels)`` with sides divisible by 2^D.

    Layers are named by role and depth (``enc{d}_conv``, ``dec{d}_skip``, ...):
    :class:`AescNetwork` finds the stem/head split of a saved model by these names.

    Args:
        channels: image channels (1 grey, 3 colour).
        filters: encoder widths per depth, highest resolution first; the decoder
            mirrors them.
        kernel_size: side of every convolution kernel.
        dropout: dropout rate per depth, highest resolution first.
        skips: add encoder features to decoder features of the same size.
        seed: seeds the dropout layers (one distinct seed per layer).
    """
    if len(filters) != len(dropout) or len(filters) < 2:
        raise ValueError(
            "Expected one dropout rate per depth and at least 2 depths, Received: "
            f"filters={list(filters)}, dropout={list(dropout)}"
        )
    depth = len(filters)
    images = keras.Input((None, None, channels), name="image")
    x = images
    encoded = []
    for d in range(depth):
        x = _conv_block(x, filters[d], kernel_size, f"enc{d}")
        x = McDropout(dropout[d], (seed + d) % SEED_RANGE, name=f"enc{d}_drop")(x)
        encoded.append(x)
    for d in reversed(range(depth - 1)):
        x = _conv_block(x, filters[d], kernel_size, f"dec{d}", upsample=True)
        x = McDropout(dropout[d], (seed + depth + d) % SEED_RANGE, name=f"dec{d}_drop")(x)
        if skips:
            x = keras.layers.Add(name=f"dec{d}_skip")([x, encoded[d]])
    outputs = UpsamplingConv2D(
        channels, kernel_size, activation="sigmoid", dtype="float32", name="output"
    )(x)
    return keras.Model(images, outputs, name="aesc" if skips else "ae")


def _conv_block(x: Any, filters: int, kernel_size: int, prefix: str, upsample: bool = False) -> Any:
    """Stride-2 convolution (encoder) or x2 upsampling then convolution (decoder), without
    bias (BN's offset replaces it), then batch normalisation and LeakyReLU."""
    if upsample:
        conv = UpsamplingConv2D(filters, kernel_size, use_bias=False, name=f"{prefix}_conv")
    else:
        conv = keras.layers.Conv2D(
            filters, kernel_size, strides=2, padding="same", use_bias=False, name=f"{prefix}_conv"
        )
    x = conv(x)
    x = FusedBatchNormalization(momentum=BN_MOMENTUM, name=f"{prefix}_bn")(x)
    return keras.layers.LeakyReLU(name=f"{prefix}_act")(x)


class AescNetwork:
    """A built or loaded AESc/AE model run as a deterministic stem and a stochastic head.

    The split is found from the layer names, so it works on a model loaded from
    ``model.keras`` as well as on a freshly built one. ``split`` is the encoder depth
    whose dropout starts the head (``depth`` when the encoder has no dropout).
    """

    def __init__(self, model: keras.Model) -> None:
        self.model = model
        names = {layer.name for layer in model.layers}
        self.depth = sum(1 for name in names if name.startswith("enc") and name.endswith("_conv"))
        if self.depth < 2 or "output" not in names:
            raise ValueError(f"Expected an AESc/AE model, Received: model '{model.name}'")
        self.skips = "dec0_skip" in names
        # Models saved before UpsamplingConv2D upsample in layers of their own.
        self.upsampling_layers = {name for name in names if name.endswith("_up")}
        encoder_rates = [self._layer(f"enc{d}_drop").rate for d in range(self.depth)]
        decoder_rates = [self._layer(f"dec{d}_drop").rate for d in range(self.depth - 1)]
        self.stochastic = max(encoder_rates + decoder_rates) > 0.0
        self.split = next((d for d, rate in enumerate(encoder_rates) if rate > 0.0), self.depth)
        self.run_model = tf.function(self._deterministic, reduce_retracing=True)
        self.run_stem = tf.function(self.stem, reduce_retracing=True)
        self.run_head = tf.function(self.repeated_head, reduce_retracing=True)

    def stem(self, images: tf.Tensor) -> tuple[list[tf.Tensor], tf.Tensor]:
        """The deterministic layers, computed once per image.

        Returns:
            ``(skips, top)``: the encoder features ``e_d`` the head adds back (empty for
            AE), and the input of the head (the activation of depth ``split`` before its
            dropout, or the latent when the encoder has no dropout).
        """
        x = images
        skips = []
        for d in range(self.split):
            x = self._layer(f"enc{d}_drop").sample(self._encode(d, x), None)
            if self.skips and d < self.depth - 1:
                skips.append(x)
        top = self._encode(self.split, x) if self.split < self.depth else x
        return skips, top

    def head(
        self, skips: list[tf.Tensor], top: tf.Tensor, pass_seeds: tf.Tensor | None
    ) -> tf.Tensor:
        """The rest of the network on stem outputs of ``T * B`` images, pass-major.

        Batch normalisation runs in inference mode; dropout draws the masks of
        ``pass_seeds`` (T, 2), or is off when ``pass_seeds`` is None.
        """
        features = list(skips)
        x = top
        for d in range(self.split, self.depth):
            if d > self.split:
                x = self._encode(d, x)
            x = self._layer(f"enc{d}_drop").sample(x, pass_seeds)
            if self.skips and d < self.depth - 1:
                features.append(x)
        for d in reversed(range(self.depth - 1)):
            x = self._block(f"dec{d}", self._upsample(f"dec{d}_up", x))
            x = self._layer(f"dec{d}_drop").sample(x, pass_seeds)
            if self.skips:
                x = self._layer(f"dec{d}_skip")([x, features[d]])
        return self._layer("output")(self._upsample("out_up", x))

    def repeated_head(
        self, skips: list[tf.Tensor], top: tf.Tensor, pass_seeds: tf.Tensor
    ) -> tf.Tensor:
        """Run the head for ``T = len(pass_seeds)`` passes at once: ``(T, B, H, W, C)``."""
        passes = tf.shape(pass_seeds)[0]
        out = self.head([_repeat(s, passes) for s in skips], _repeat(top, passes), pass_seeds)
        return tf.reshape(out, tf.concat([[passes, -1], tf.shape(out)[1:]], axis=0))

    def forward(self, images: tf.Tensor, pass_seed: tf.Tensor | None) -> tf.Tensor:
        """One full forward pass: dropout masks of ``pass_seed`` (1, 2), or none."""
        skips, top = self.stem(images)
        return self.head(skips, top, pass_seed)

    def _deterministic(self, images: tf.Tensor) -> tf.Tensor:
        return self.model(images, training=False)

    def _encode(self, d: int, x: tf.Tensor) -> tf.Tensor:
        return self._block(f"enc{d}", x)

    def _block(self, prefix: str, x: tf.Tensor) -> tf.Tensor:
        x = self._layer(f"{prefix}_conv")(x)
        x = self._layer(f"{prefix}_bn")(x, training=False)
        return self._layer(f"{prefix}_act")(x)

    def _upsample(self, name: str, x: tf.Tensor) -> tf.Tensor:
        return self._layer(name)(x) if name in self.upsampling_layers else x

    def _layer(self, name: str) -> Any:
        return self.model.get_layer(name)


def _repeat(x: tf.Tensor, passes: tf.Tensor) -> tf.Tensor:
    """``(B, ...)`` -> ``(passes * B, ...)``, pass-major."""
    shape = tf.shape(x)
    tiled = tf.broadcast_to(x[None], tf.concat([[passes], shape], axis=0))
    return tf.reshape(tiled, tf.concat([[-1], shape[1:]], axis=0))


def mc_predict(
    network: keras.Model | AescNetwork,
    images: tf.Tensor | np.ndarray,
    passes: int,
    seed: tf.Tensor | Sequence[int],
    passes_per_call: int | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Mean and variance of ``passes`` MC-dropout reconstructions.

    The stem runs once; the head runs on ``passes_per_call`` passes at a time (all by
    default), the per-chunk statistics merged exactly (Chan et al.'s pairwise update).

    Args:
        network: the model or its :class:`AescNetwork`.
        images: float32 ``(B, H, W, C)``.
        passes: number T of stochastic passes.
        seed: ``(2,)`` stateless seed; pass ``t`` uses the t-th of ``passes`` seeds split
            from it, whatever the chunking.
        passes_per_call: bounds memory, which grows with ``passes_per_call * B``.

    Returns:
        ``(mean, variance)``, both float32 ``(B, H, W, C)``; the variance divides by T.
        A network without dropout returns its output and zeros, without T passes.
    """
    if passes < 1 or (passes_per_call is not None and passes_per_call < 1):
        raise ValueError(f"Expected passes >= 1, Received: {passes=}, {passes_per_call=}")
    if not isinstance(network, AescNetwork):
        network = AescNetwork(network)
    images = tf.convert_to_tensor(images, tf.float32)
    if not network.stochastic:
        output = network.run_model(images)
        return output, tf.zeros_like(output)
    pass_seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), passes)
    skips, top = network.run_stem(images)
    chunk = passes_per_call or passes
    count, mean, sum_sq = 0, None, None
    for start in range(0, passes, chunk):
        outputs = network.run_head(skips, top, pass_seeds[start : start + chunk])
        size = int(outputs.shape[0])
        chunk_mean = tf.reduce_mean(outputs, axis=0)
        chunk_sq = tf.reduce_sum(tf.square(outputs - chunk_mean), axis=0)
        if mean is None:
            mean, sum_sq = chunk_mean, chunk_sq
        else:
            delta = chunk_mean - mean
            total = count + size
            mean = mean + delta * (size / total)
            sum_sq = sum_sq + chunk_sq + tf.square(delta) * (count * size / total)
        count += size
    return mean, sum_sq / passes


def p_norm_scores(maps: np.ndarray, p: float) -> np.ndarray:
    """Image scores ``(N,)``: the L^p norm of each map ``(N, H, W)`` (paper eq. 1)."""
    if p <= 0:
        raise ValueError(f"Expected p > 0, Received: p={p}")
    flat = np.abs(np.asarray(maps, dtype=np.float64)).reshape(len(maps), -1)
    return (np.sum(flat**p, axis=1) ** (1.0 / p)).astype(np.float32)


class AescDetector(MapScoredDetector):
    """Residual and MC-dropout uncertainty maps of a trained AESc/AE model.

    ``map_names`` lists ``aesc.score.map`` first. A network without dropout has no
    uncertainty map.
    """

    def __init__(
        self,
        network: AescNetwork,
        config: ScoreConfig,
        image_size: int,
        batch_size: int,
        seed: int,
    ) -> None:
        if config.map == "uncertainty" and not network.stochastic:
            raise ConfigError(
                "aesc.score.map: 'uncertainty' needs a positive rate in aesc.network.dropout"
            )
        names = MAP_NAMES if network.stochastic else ("residual",)
        self.map_names = (config.map, *(name for name in names if name != config.map))
        self.network = network
        self.config = config
        self.sigma = scaled(config.sigma_px, image_size)
        self.batch_size = batch_size
        self.seed = seed

    def anomaly_maps(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """``{name: (N, H, W) float32}``, maps averaged over channels, then smoothed."""
        maps = {}
        if "residual" in self.map_names:
            maps["residual"] = batched_predict(self._residual, images, self.batch_size)
        if "uncertainty" in self.map_names:
            maps["uncertainty"] = self._uncertainty(images)
        return {name: self._smoothed(maps[name]) for name in self.map_names}

    def _smoothed(self, maps: np.ndarray) -> np.ndarray:
        maps = np.asarray(maps, dtype=np.float32)
        return gaussian_smooth(maps, self.sigma) if self.sigma > 0 else maps

    def image_scores(self, maps: np.ndarray) -> np.ndarray:
        return p_norm_scores(maps, self.config.p)

    def _residual(self, images: tf.Tensor) -> tf.Tensor:
        return tf.reduce_mean(tf.abs(images - self.network.run_model(images)), axis=-1)

    def _uncertainty(self, images: np.ndarray) -> np.ndarray:
        """MC-dropout variance, image batch ``index`` seeded with ``(seed, index)``.

        ``batch_size`` bounds the samples of one head call (images x passes), as it
        bounds the images of one deterministic call, so memory matches the residual's.
        """
        passes = self.config.mc_passes
        images_per_call = max(1, self.batch_size // passes)
        passes_per_call = min(passes, self.batch_size)
        outputs = []
        for index, start in enumerate(range(0, len(images), images_per_call)):
            _, variance = mc_predict(
                self.network,
                images[start : start + images_per_call],
                passes,
                (self.seed, index),
                passes_per_call,
            )
            outputs.append(tf.reduce_mean(variance, axis=-1).numpy())
        return np.concatenate(outputs) if outputs else np.zeros((0,), np.float32)


def scaled_filters(config: NetworkConfig) -> list[int]:
    """Per-depth widths after the ``width`` multiplier (at least one filter)."""
    return [max(1, round(f * config.width)) for f in config.filters]


class Aesc(TrainedMethod):
    """AESc (``aesc.network.skips: true``) or AE (``false``) trained on corrupted images."""

    family = "aesc"
    Config = Config

    def build(self) -> keras.Model:
        network = self.config.network
        return build_network(
            self.channels,
            scaled_filters(network),
            network.kernel_size,
            network.dropout,
            network.skips,
            self.params.seed,
        )

    def make_pairs(self, clean: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """``(corrupted, clean)``: the network learns to undo ``aesc.corruption.model``."""
        corrupted, _ = corrupt(clean, seed, self.config.corruption.model)
        return corrupted, clean

    def synthetic_defects(self, clean: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """The stains (or other corruption) and the pixels they may have changed."""
        corrupted, region = corrupt(clean, seed, self.config.corruption.model)
        return corrupted, tf.cast(region, tf.float32)

    def loss(self) -> LossFn:
        """MSE between the clean image and the reconstruction of its corrupted version."""
        return keras.losses.MeanSquaredError(name="mse")

    def load_detector(self, model: keras.Model | None, model_dir: Path) -> Detector:
        del model_dir
        return AescDetector(
            AescNetwork(model),
            self.config.score,
            self.image_size,
            self.params.score.batch_size,
            self.params.seed,
        )

    def check_image_size(self, size: int) -> None:
        super().check_image_size(size)
        multiple = 2 ** len(self.config.network.filters)
        if size % multiple:
            raise ConfigError(
                f"aesc.input.size (or dataset.image_size): AESc needs a multiple of {multiple} "
                f"(got {size})"
            )
        for index, phase in enumerate(self.fit_config().phases):
            if phase.crop % multiple:
                raise ConfigError(
                    f"aesc.train.phases[{index}].crop: AESc needs a multiple of {multiple} "
                    f"(got {phase.crop})"
                )
