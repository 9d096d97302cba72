"""The calibrate stage: thresholds of every map of a trained model, from the validation
normals of its category only (:mod:`reconad.decision` holds the rules)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reconad import paths
from reconad.config import Params
from reconad.data.layout import load_split
from reconad.decision import map_statistics, rule_thresholds
from reconad.io import atomic_write_json
from reconad.models.trained import load_trained, variant_dir
from reconad.score import score_images


def calibrate_model(
    params: Params,
    variant: str,
    category: str,
    prepared_dir: Path = paths.PREPARED_DIR,
    model_dir: Path | None = None,
) -> dict[str, Any]:
    """Score the validation normals and save every rule's threshold as ``threshold.json``.

    All rules are computed and stored; ``calibrate.rule`` says which one decides. The
    params are stored too, so ``predict`` scores as evaluation does.
    """
    model_dir = model_dir or variant_dir(params, variant, category)
    trained = load_trained(model_dir, params)
    val = load_split(paths.prepared_category(category, prepared_dir)).val
    scores = score_images(trained.detector, val)
    cfg = params.calibrate
    min_area = cfg.min_area_for(category, params.dataset.image_size)
    calibration = {
        "rule": cfg.rule,
        "min_area": min_area,
        "target_fpr": cfg.target_fpr,
        "percentile": cfg.percentile,
        "primary": trained.primary_map,
        "validation_images": len(val),
        "maps": {
            name: {
                **rule_thresholds(maps, min_area, cfg.target_fpr, cfg.percentile),
                "stats": map_statistics(maps),
            }
            for name, maps in scores.maps.items()
        },
        "params": params.raw(),
    }
    atomic_write_json(model_dir / paths.THRESHOLD_FILE, calibration)
    return calibration
