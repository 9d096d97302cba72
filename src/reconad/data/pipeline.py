"""tf.data input pipelines: random full-resolution crops of normal images, made into
training pairs by the method's corruption, all inside the graph so they run on the
accelerator and overlap with the training step.

Every random draw is a stateless op keyed by a seed that comes from
``tf.data.Dataset.random(seed)``, so a given ``seed`` always yields the same stream.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from reconad.config import AugmentConfig

PairFn = Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]
AUTOTUNE = tf.data.AUTOTUNE


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Store images as uint8 in the pipeline: a quarter of the float32 memory."""
    return np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)


def training_dataset(
    images: np.ndarray,
    crop: int,
    batch_size: int,
    augment: AugmentConfig | None,
    seed: int,
    make_pairs: PairFn,
) -> tf.data.Dataset:
    """An endless stream of corrupted/clean training pairs.

    Args:
        images: float32 ``(N, H, W, C)`` in [0, 1], normal training images.
        crop: side of the random crops (progressive training grows it).
        batch_size: images per batch; the last partial batch is dropped.
        augment: rot90 / flips allowed for this category; None: none.
        seed: seeds the shuffle, the crops and the corruption.
        make_pairs: the method's ``(clean, seed) -> (x, y)``.
    """
    if crop > images.shape[1] or crop > images.shape[2]:
        raise ValueError(f"crop {crop} is larger than the images {images.shape[1:3]}")
    channels = images.shape[-1]
    clean = tf.data.Dataset.from_tensor_slices(to_uint8(images))
    clean = clean.shuffle(len(images), seed=seed, reshuffle_each_iteration=True).repeat()
    crops = tf.data.Dataset.zip(clean, _seed_stream(seed + 1)).map(
        lambda image, key: _crop_and_augment(image, key, crop, channels, augment),
        num_parallel_calls=AUTOTUNE,
    )
    batches = crops.batch(batch_size, drop_remainder=True)
    pairs = tf.data.Dataset.zip(batches, _seed_stream(seed + 2)).map(
        make_pairs, num_parallel_calls=AUTOTUNE
    )
    return pairs.prefetch(AUTOTUNE)


def validation_dataset(
    images: np.ndarray, batch_size: int, seed: int, make_pairs: PairFn
) -> tf.data.Dataset:
    """Validation pairs at full size, corrupted once with a fixed seed and cached, so
    the validation loss (early stopping) compares epochs on identical inputs."""
    clean = tf.data.Dataset.from_tensor_slices(to_uint8(images)).map(_to_float)
    batches = clean.batch(batch_size)
    pairs = tf.data.Dataset.zip(batches, _seed_stream(seed + 3)).map(make_pairs)
    return pairs.cache().prefetch(AUTOTUNE)


def _seed_stream(seed: int) -> tf.data.Dataset:
    """Endless stateless-op seeds of shape (2,)."""
    return tf.data.Dataset.random(seed=seed).batch(2)


def _to_float(image: tf.Tensor) -> tf.Tensor:
    return tf.cast(image, tf.float32) / 255.0


def _crop_and_augment(
    image: tf.Tensor, key: tf.Tensor, crop: int, channels: int, augment: AugmentConfig | None
) -> tf.Tensor:
    keys = tf.random.experimental.stateless_split(key, num=4)
    out = tf.image.stateless_random_crop(image, (crop, crop, channels), seed=keys[0])
    if augment is None:
        return _to_float(out)
    if augment.rot90:
        turns = tf.random.stateless_uniform((), keys[1], minval=0, maxval=4, dtype=tf.int32)
        out = tf.image.rot90(out, k=turns)
    if augment.hflip:
        out = tf.image.stateless_random_flip_left_right(out, seed=keys[2])
    if augment.vflip:
        out = tf.image.stateless_random_flip_up_down(out, seed=keys[3])
    return _to_float(out)
