"""Training set-up: early stopping only where a variant asks for it, mixed precision, the
learning rate, the checks before training, and what the resume key depends on."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml

import reconad.train
from pipeline_fixtures import REPO_PARAMS, TINY_CATEGORY, TINY_VARIANT, normals_only, tiny_params
from reconad.config import Params, apply_overrides, load_params, params_from_dict
from reconad.data.layout import CategoryData
from reconad.errors import ConfigError
from reconad.models import method_class
from reconad.models.base import precise_batch_norm
from reconad.runtime import dtype_policy
from reconad.synthetic import METRIC, SyntheticValidation
from reconad.tracking import EpochMetricsLogger
from reconad.train import (
    VALIDATION_IMAGES,
    cluster_workers,
    code_fingerprint,
    compiled_model,
    describe_input,
    distribution_strategy,
    epoch_validation,
    learning_rate,
    make_method,
    phase_callbacks,
    relevant_params,
    run_key,
)


def _tiny(**changes: object) -> Params:
    """The tiny params with dotted ``changes`` (``__`` for ``.``), as ``sdc_restore``."""
    raw = tiny_params()
    for dotted, value in changes.items():
        node = raw
        *parents, last = dotted.split("__")
        for part in parents:
            node = node[part]
        node[last] = value
    return params_from_dict(raw, variant=TINY_VARIANT)


def _callbacks(tmp_path: Path, patience: int, monitor: str) -> list[keras.callbacks.Callback]:
    params = _tiny(sdc_ae__train__patience=patience, sdc_ae__train__monitor=monitor)
    method = make_method(params, "sdc_restore", 1)
    data = load_split_of_tiny(tmp_path)
    return phase_callbacks(tmp_path / "backup", 0, 0, method, data, params.seed)


def load_split_of_tiny(tmp_path: Path) -> CategoryData:
    """A small grey category: 6 training and 4 validation images of 32 px."""
    images = np.random.default_rng(0).random((10, 32, 32, 1), dtype=np.float32)
    return normals_only(images[:6], val=images[6:], category="gravel")


def _early_stopping(callbacks: list[keras.callbacks.Callback]) -> list[keras.callbacks.Callback]:
    return [c for c in callbacks if isinstance(c, keras.callbacks.EarlyStopping)]


def test_no_patience_means_no_early_stopping(tmp_path: Path) -> None:
    callbacks = _callbacks(tmp_path, 0, "synthetic")
    assert _early_stopping(callbacks) == []
    assert not any(isinstance(c, SyntheticValidation) for c in callbacks)


def test_a_patience_stops_early_and_keeps_the_best_weights(tmp_path: Path) -> None:
    [stopping] = _early_stopping(_callbacks(tmp_path, 4, "val_loss"))
    assert stopping.patience == 4
    assert stopping.restore_best_weights
    assert (stopping.monitor, stopping.mode) == ("val_loss", "min")


def test_the_synthetic_score_is_logged_before_early_stopping_reads_it(tmp_path: Path) -> None:
    callbacks = _callbacks(tmp_path, 3, "synthetic")
    kinds = [type(c) for c in callbacks]
    [stopping] = _early_stopping(callbacks)
    assert (stopping.monitor, stopping.mode) == (METRIC, "max")
    assert kinds.index(SyntheticValidation) < kinds.index(keras.callbacks.EarlyStopping)
    assert kinds.index(SyntheticValidation) < kinds.index(EpochMetricsLogger)


def test_the_validation_loss_of_an_epoch_is_on_a_few_normals_whatever_the_dataset() -> None:
    method = make_method(_tiny(), "sdc_restore", 1)
    images = np.random.default_rng(0).random((VALIDATION_IMAGES + 9, 32, 32, 1), np.float32)
    data = normals_only(images[:4], val=images[4:], category="gravel")
    pairs = epoch_validation(data, 8, seed=0, make_pairs=method.make_pairs)
    targets = np.concatenate([target for _, target in pairs.as_numpy_iterator()])
    np.testing.assert_allclose(targets[..., :1], data.val[:VALIDATION_IMAGES], atol=1 / 255)


def _patience(variant: str) -> int:
    params = load_params(REPO_PARAMS, variant)
    return params.family(params.variant(variant).method).train.patience


def test_contrast_and_patch_ae_stop_early_in_the_repo_params() -> None:
    """Patience is per family (``<family>.train.patience``, 0 is off): ``sdc_contrast``
    can overfit (Bauer et al.), and training degrades Patch AE's memory bank
    (docs/quality.md), so both keep their best epoch."""
    patience = {
        variant: _patience(variant)
        for variant in ("sdc_restore", "sdc_contrast", "sdc_model2", "aesc_stain", "patch_ae")
    }
    assert patience == {
        "sdc_restore": 0,
        "sdc_contrast": 6,
        "sdc_model2": 0,
        "aesc_stain": 0,
        "patch_ae": 2,
    }


@pytest.mark.parametrize(
    ("mixed", "compute"), [("float16", "float16"), ("bfloat16", "bfloat16"), ("none", "float32")]
)
@pytest.mark.parametrize(("family", "output"), [("sdc_ae", "reconstruction"), ("aesc", "output")])
def test_mixed_precision_builds_low_precision_layers_and_leaves_the_global_policy(
    mixed: str, compute: str, family: str, output: str
) -> None:
    params = _tiny()
    variant = {"sdc_ae": TINY_VARIANT, "aesc": "aesc_stain"}[family]
    method = method_class(family)(params, variant, 1)
    with dtype_policy(mixed):
        model = method.build()
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    hidden = [layer for layer in convs if layer.name != output]
    assert {layer.compute_dtype for layer in hidden} == {compute}
    assert {layer.variable_dtype for layer in convs} == {"float32"}
    assert model.get_layer(output).compute_dtype == "float32"
    assert keras.config.dtype_policy().name == "float32"


@pytest.mark.parametrize(("mixed", "scaled"), [("float16", True), ("bfloat16", False)])
def test_a_mixed_precision_training_step_has_a_finite_float32_loss(
    mixed: str, scaled: bool
) -> None:
    params = _tiny()
    method = method_class("sdc_ae")(params, TINY_VARIANT, 1)
    with dtype_policy(mixed):
        model = method.build()
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=method.loss())
    clean = tf.random.stateless_uniform((2, 32, 32, 1), seed=(1, 2))
    x, y = method.make_pairs(clean, tf.constant([3, 4], dtype=tf.int64))
    loss = model.train_on_batch(x, y)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == scaled
    assert np.isfinite(loss)


def _cluster(workers: int, chief: bool = False) -> str:
    cluster = {"worker": [f"localhost:{2000 + index}" for index in range(workers)]}
    if chief:
        cluster["chief"] = ["localhost:1999"]
    return json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}})


@pytest.mark.parametrize(
    ("tf_config", "workers"),
    [(None, 1), ("{}", 1), (_cluster(1), 1), (_cluster(2), 2), (_cluster(2, chief=True), 3)],
)
def test_cluster_workers_counts_chief_and_workers(
    monkeypatch: pytest.MonkeyPatch, tf_config: str | None, workers: int
) -> None:
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    assert cluster_workers() == workers


def test_multi_worker_on_a_cluster_stops_with_one_line_before_joining_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TF_CONFIG", _cluster(2))
    with pytest.raises(ConfigError, match=r"^train\.distribute: multi_worker: .* 2 workers") as err:
        distribution_strategy("multi_worker")
    assert "\n" not in str(err.value)
    assert "mirrored" in str(err.value)


def test_a_tf_config_that_is_not_json_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TF_CONFIG", "workers: 2")
    with pytest.raises(ConfigError, match=r"^TF_CONFIG: not valid JSON"):
        distribution_strategy("multi_worker")


@pytest.mark.parametrize(
    ("schedule", "kind"), [("constant", float), ("cosine", keras.optimizers.schedules.CosineDecay)]
)
def test_learning_rate_is_constant_or_decays_to_zero_over_all_steps(
    schedule: str, kind: type
) -> None:
    params = _tiny(sdc_ae__train__lr_schedule=schedule)
    fit = make_method(params, TINY_VARIANT, 1).fit_config()
    rate = learning_rate(fit)
    if kind is float:
        assert rate == pytest.approx(1e-3)
        return
    assert isinstance(rate, kind)
    total = fit.total_steps()
    assert total == 2 * 3, "two epochs of three steps"
    assert float(rate(0)) == pytest.approx(1e-3)
    assert float(rate(total)) == pytest.approx(0.0, abs=1e-9)


def test_a_crop_larger_than_the_image_is_refused_naming_the_phase() -> None:
    params = _tiny(sdc_ae__train__phases=[{"crop": 16, "epochs": 1}, {"crop": 64, "epochs": 1}])
    with pytest.raises(ConfigError, match=r"^sdc_ae\.train\.phases\[1\]\.crop: 64 exceeds .* 32"):
        make_method(params, TINY_VARIANT, 1)


def test_compiled_model_is_compiled_with_the_family_learning_rate() -> None:
    params = _tiny()
    method = make_method(params, TINY_VARIANT, 1)
    model = compiled_model(params, method)
    assert model.compiled
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-3)
    assert model.input_shape == (None, None, None, 1)


def _data(seed: int = 0) -> CategoryData:
    rng = np.random.default_rng(seed)
    empty = np.zeros((0, 32, 32, 1), np.float32)
    return CategoryData(
        category=TINY_CATEGORY,
        color="grey",
        image_size=32,
        train=rng.random((4, 32, 32, 1), dtype=np.float32),
        val=rng.random((2, 32, 32, 1), dtype=np.float32),
        test=empty,
        test_labels=np.zeros(0, np.int64),
        test_masks=np.zeros((0, 32, 32), bool),
        test_names=[],
        test_defects=[],
        train_names=[],
        val_names=[],
    )


def test_relevant_params_are_the_family_blocks_and_the_shared_training_loop() -> None:
    params = _tiny()
    sdc = relevant_params(params, "sdc_ae")
    assert set(sdc) == {"seed", "dataset", "train", "sdc_ae", "loss"}
    assert sdc["sdc_ae"] == params.raw()["sdc_ae"]
    assert set(relevant_params(params, "aesc")) == {"seed", "dataset", "train", "aesc"}


@pytest.mark.parametrize(
    ("change", "retrains"),
    [
        ({"loss__lambda": 0.9}, True),
        ({"sdc_ae__train__learning_rate": 2e-3}, True),
        ({"seed": 7}, True),
        ({"aesc__network__width": 0.25}, False),
        ({"patch_ae__train__steps_per_epoch": 7}, False),
        ({"calibrate__target_fpr": 0.2}, False),
    ],
)
def test_the_resume_key_changes_with_what_determines_the_weights_only(
    change: dict[str, object], retrains: bool
) -> None:
    key = run_key(_tiny(), TINY_VARIANT, _data())
    assert (run_key(_tiny(**change), TINY_VARIANT, _data()) != key) is retrains


def test_the_resume_key_changes_with_the_pixels_and_the_variant() -> None:
    params = _tiny()
    key = run_key(params, TINY_VARIANT, _data())
    assert run_key(params, TINY_VARIANT, _data()) == key
    assert run_key(params, TINY_VARIANT, _data(seed=1)) != key
    assert run_key(params, "sdc_contrast", _data()) != key


def test_the_resume_key_changes_with_the_code(monkeypatch: pytest.MonkeyPatch) -> None:
    key = run_key(_tiny(), TINY_VARIANT, _data())
    monkeypatch.setattr(reconad.train, "code_fingerprint", lambda package: "edited")
    assert run_key(_tiny(), TINY_VARIANT, _data()) != key


def test_the_code_fingerprint_covers_every_source_file_by_path(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "net.py").write_text("WIDTH = 1\n", encoding="utf-8")
    (tmp_path / "README.txt").write_text("not code", encoding="utf-8")
    before = code_fingerprint.__wrapped__(tmp_path)
    (tmp_path / "README.txt").write_text("still not code", encoding="utf-8")
    assert code_fingerprint.__wrapped__(tmp_path) == before
    (tmp_path / "models" / "net.py").write_text("WIDTH = 2\n", encoding="utf-8")
    assert code_fingerprint.__wrapped__(tmp_path) != before
    (tmp_path / "models" / "net.py").rename(tmp_path / "net.py")
    (tmp_path / "net.py").write_text("WIDTH = 1\n", encoding="utf-8")
    assert code_fingerprint.__wrapped__(tmp_path) != before


def test_precise_batch_norm_sets_the_mean_of_every_batch_statistic() -> None:
    """Each moving statistic becomes the plain mean of the per-batch statistics over the
    images (batch k folded in with momentum (k - 1) / k); momenta are restored."""
    inputs = keras.Input((4, 4, 2))
    norm = keras.layers.BatchNormalization(momentum=0.9, name="norm")
    model = keras.Model(inputs, norm(inputs))
    images = np.random.default_rng(0).normal(3.0, 2.0, (10, 4, 4, 2)).astype(np.float32)
    precise_batch_norm(model, images, batch_size=4)
    batches = [images[0:4], images[4:8], images[8:10]]
    means = np.mean([batch.mean(axis=(0, 1, 2)) for batch in batches], axis=0)
    variances = np.mean([batch.var(axis=(0, 1, 2)) for batch in batches], axis=0)
    np.testing.assert_allclose(norm.moving_mean.numpy(), means, rtol=1e-5)
    np.testing.assert_allclose(norm.moving_variance.numpy(), variances, rtol=1e-4)
    assert norm.momentum == 0.9


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        ("aesc_stain", "aesc at 256 px, grey"),
        ("sdc_restore", "sdc_ae at 512 px, rgb"),
        ("patch_ae", "patch_ae at 512 px, rgb, resnet101/imagenet"),
        ("patchcore", "patchcore at 512 px, rgb, resnet101/imagenet"),
    ],
)
def test_the_log_names_what_each_family_sees_under_the_paper_profile(
    variant: str, expected: str
) -> None:
    raw = apply_overrides(
        yaml.safe_load(REPO_PARAMS.read_text()), {"profile": "paper"}, "test", None
    )
    params = params_from_dict(raw, variant)
    method = make_method(params, variant, prepared_channels=3)
    assert describe_input(params, method) == expected
