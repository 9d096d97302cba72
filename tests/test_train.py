"""Training callbacks: early stopping only where a variant asks for it."""

from __future__ import annotations

from pathlib import Path

import keras

from reconad.config import load_params
from reconad.train import phase_callbacks

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
