"""Training set-up: early stopping only where a variant asks for it; mixed precision."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from reconad.config import load_params
from reconad.errors import ConfigError
from reconad.models import method_class
from reconad.train import cluster_workers, distribution_strategy, dtype_policy, phase_callbacks

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def _early_stopping(patience: int | None, tmp_path: Path) -> list[keras.callbacks.EarlyStopping]:
    callbacks = phase_callbacks(tmp_path, patience, phase=0, first_epoch=0)
    return [c for c in callbacks if isinstance(c, keras.callbacks.EarlyStopping)]


def test_no_patience_means_no_early_stopping(tmp_path: Path) -> None:
    assert _early_stopping(None, tmp_path) == []


def test_a_patience_stops_early_and_keeps_the_best_weights(tmp_path: Path) -> None:
    [stopping] = _early_stopping(4, tmp_path)
    assert stopping.patience == 4
    assert stopping.restore_best_weights
    assert stopping.monitor == "val_loss"


def test_only_the_contrast_variant_stops_early_in_the_repo_params() -> None:
    patience = {
        variant: load_params(REPO_PARAMS, variant).train.patience
        for variant in ("sdc_restore", "sdc_contrast", "sdc_model2", "aesc_stain", "patch_ae")
    }
    assert patience == {
        "sdc_restore": None,
        "sdc_contrast": 6,
        "sdc_model2": None,
        "aesc_stain": None,
        "patch_ae": None,
    }


@pytest.mark.parametrize("mixed", [True, False])
def test_mixed_precision_builds_float16_layers_and_leaves_the_global_policy(
    mixed: bool,
) -> None:
    params = load_params(REPO_PARAMS, "sdc_restore")
    method = method_class("sdc_ae")(params, 1)
    with dtype_policy(mixed):
        model = method.build()
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    hidden = [layer for layer in convs if layer.name != "reconstruction"]
    assert {layer.compute_dtype for layer in hidden} == {"float16" if mixed else "float32"}
    assert {layer.variable_dtype for layer in convs} == {"float32"}
    assert model.get_layer("reconstruction").compute_dtype == "float32"
    assert keras.config.dtype_policy().name == "float32"


def test_a_mixed_precision_training_step_has_a_finite_float32_loss() -> None:
    params = load_params(REPO_PARAMS, "sdc_restore")
    method = method_class("sdc_ae")(params, 1)
    with dtype_policy(True):
        model = method.build()
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=method.loss())
    clean = tf.random.stateless_uniform((2, 32, 32, 1), seed=(1, 2))
    x, y = method.make_pairs(clean, tf.constant([3, 4], dtype=tf.int64))
    loss = model.train_on_batch(x, y)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
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
