"""CutPaste: a region of the image pasted elsewhere, pure TF, deterministic per seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from pydantic import ValidationError

from reconad.config import load_params
from reconad.corrupt.cutpaste import CutPasteConfig, cutpaste, cutpaste_with_mask

SEED = tf.constant([3, 14], tf.int64)
REPO = load_params(Path(__file__).resolve().parents[1] / "params.yaml", "patch_ae")


def _config(**overrides: object) -> CutPasteConfig:
    """``patch_ae.corruption`` of the repository's params.yaml, ``overrides`` applied."""
    base = REPO.family("patch_ae").corruption
    return CutPasteConfig.model_validate({**base.model_dump(), **overrides})


def _noise(batch: int, size: int, channels: int, seed: int = 0) -> tf.Tensor:
    rng = np.random.default_rng(seed)
    return tf.constant(rng.random((batch, size, size, channels), dtype=np.float32))


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice]:
    rows, cols = np.nonzero(mask)
    return slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1)


def test_only_the_masked_region_changes_and_range_is_kept() -> None:
    images = _noise(8, 32, 3)
    config = _config(probability=1.0, scar_probability=0.5, jitter=0.3)
    out, mask = cutpaste_with_mask(images, SEED, config)
    out, mask, images = out.numpy(), mask.numpy(), images.numpy()
    assert out.shape == images.shape
    assert out.dtype == np.float32
    assert mask.shape == (8, 32, 32, 1)
    assert set(np.unique(mask)) <= {0.0, 1.0}
    assert out.min() >= 0.0
    assert out.max() <= 1.0
    outside = np.broadcast_to(mask == 0.0, out.shape)
    np.testing.assert_array_equal(out[outside], images[outside])
    assert (mask.sum(axis=(1, 2, 3)) > 0).all()
    changed = np.abs(out - images).max(axis=-1) > 0
    assert changed.sum() > 0.5 * mask.sum()


def test_rectangles_have_the_configured_area_and_come_from_the_image() -> None:
    images = _noise(6, 64, 1, seed=1)
    config = _config(probability=1.0, scar_probability=0.0, area_min=0.05, area_max=0.1, jitter=0.0)
    out, mask = cutpaste_with_mask(images, SEED, config)
    out, mask, images = out.numpy()[..., 0], mask.numpy()[..., 0], images.numpy()[..., 0]
    for image, pasted, region in zip(images, out, mask, strict=True):
        rows, cols = _bounding_box(region)
        assert region[rows, cols].all(), "an unrotated rectangle fills its bounding box"
        assert 0.05 * 0.7 <= region.mean() <= 0.1 * 1.3
        patch = pasted[rows, cols]
        height, width = patch.shape
        windows = np.lib.stride_tricks.sliding_window_view(image, (height, width))
        assert np.any(np.all(windows == patch, axis=(2, 3))), "patch is a window of the input"


def test_scars_are_thin() -> None:
    images = _noise(16, 256, 3, seed=2)
    config = _config(probability=1.0, scar_probability=1.0)
    mask = cutpaste_with_mask(images, SEED, config)[1].numpy()[..., 0]
    areas = mask.sum(axis=(1, 2))
    assert areas.min() >= 1
    assert areas.max() <= 16 * 25 * 1.5  # CutPaste scar: at most 16 x 25 px at 256 px


def test_probability_of_corruption() -> None:
    images = _noise(600, 16, 1, seed=3)
    config = _config(probability=0.3, scar_probability=0.0)
    mask = cutpaste_with_mask(images, SEED, config)[1].numpy()
    rate = (mask.sum(axis=(1, 2, 3)) > 0).mean()
    assert 0.24 <= rate <= 0.36
    never = cutpaste(images, SEED, _config(probability=0.0)).numpy()
    np.testing.assert_array_equal(never, images.numpy())


def test_same_seed_same_output_other_seed_other_output() -> None:
    images = _noise(4, 32, 3, seed=4)
    config = _config(probability=1.0)
    first = cutpaste(images, SEED, config).numpy()
    np.testing.assert_array_equal(first, cutpaste(images, SEED, config).numpy())
    other = cutpaste(images, tf.constant([3, 15], tf.int64), config).numpy()
    assert not np.array_equal(first, other)


def test_pure_graph_with_unknown_batch_size_in_tf_data() -> None:
    config = _config(probability=1.0)
    traced = tf.function(lambda images, seed: cutpaste(images, seed, config))
    concrete = traced.get_concrete_function(
        tf.TensorSpec((None, 32, 32, 3), tf.float32), tf.TensorSpec((2,), tf.int64)
    )
    op_types = {op.type for op in concrete.graph.get_operations()}
    assert not op_types & {"PyFunc", "EagerPyFunc", "PyFuncStateless"}
    assert concrete.structured_outputs.shape.as_list() == [None, 32, 32, 3]
    images = _noise(5, 32, 3, seed=5)
    batches = tf.data.Dataset.from_tensor_slices(images).batch(2)
    seeds = tf.data.Dataset.random(seed=0).batch(2)
    pairs = tf.data.Dataset.zip(batches, seeds).map(lambda x, s: cutpaste(x, s, config))
    assert [batch.shape[0] for batch in pairs] == [2, 2, 1]


def test_channels_must_be_known() -> None:
    with pytest.raises(ValueError, match="1 or 3 channels"):
        cutpaste(tf.zeros((1, 8, 8, 2)), SEED, _config())


def test_repository_config_is_the_patch_ae_block() -> None:
    config = REPO.family("patch_ae").corruption
    assert isinstance(config, CutPasteConfig)
    assert (config.probability, config.scar_probability) == (0.5, 0.5)
    assert (config.area_min, config.area_max, config.jitter) == (0.02, 0.15, 0.1)
    with pytest.raises(ValidationError, match="area_min"):
        CutPasteConfig.model_validate({**config.model_dump(), "area_min": 0.0})
    with pytest.raises(ValidationError, match="jitter"):
        CutPasteConfig(probability=0.5, scar_probability=0.5, area_min=0.1, area_max=0.2)


@pytest.mark.parametrize("size", [64, 128])
def test_scars_scale_with_the_image_side(size: int) -> None:
    """Scar sides are CutPaste's 2-16 x 10-25 px at 256 px, scaled to the image side."""
    images = _noise(16, size, 1, seed=6)
    mask = cutpaste_with_mask(images, SEED, _config(probability=1.0, scar_probability=1.0))[1]
    areas = mask.numpy().sum(axis=(1, 2, 3))
    scale = size / 256
    assert areas.min() >= 1
    assert areas.max() <= (16 * scale + 2) * (25 * scale + 2)
