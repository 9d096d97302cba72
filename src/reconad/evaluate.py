"""The evaluate stage: score the test split, compute every metric per map, save curves
and the best and worst examples. Thresholds come from ``threshold.json`` (validation
normals only); test labels are used for measuring, never for choosing.

The decisions of the rules that did not decide are measured too (``rules.json``), so a
user sees what another ``calibrate.rule`` would give without running the pipeline again."""

from __future__ import annotations

import csv
import io
import logging
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from reconad import paths, tracking, visualize
from reconad.config import Params
from reconad.data.layout import CategoryData, load_split
from reconad.decision import RULES, decide, decision_threshold
from reconad.io import atomic_dir, atomic_write_json, atomic_write_text
from reconad.metrics import (
    defect_type_metrics,
    evaluate_all,
    pro_curve,
    roc_curve_points,
    threshold_metrics,
)
from reconad.models.base import Scores
from reconad.models.trained import load_trained, variant_dir
from reconad.score import score_images

METRICS_FILE = paths.EVAL_METRICS_FILE
CURVES_FILE = paths.EVAL_CURVES_FILE
SCORES_FILE = paths.EVAL_SCORES_FILE
DEFECT_TYPES_FILE = paths.EVAL_DEFECT_TYPES_FILE
RULES_FILE = paths.EVAL_RULES_FILE
EXAMPLES_DIR = paths.EVAL_EXAMPLES_DIR
CURVE_POINTS = 200
log = logging.getLogger("reconad")


class Decision(NamedTuple):
    """A map's calibrated decisions on the test split, computed once and shared."""

    threshold: float
    min_area: int
    image_pred: np.ndarray
    pixel_pred: np.ndarray


def evaluate(
    params: Params,
    variant: str,
    category: str,
    prepared_dir: Path = paths.PREPARED_DIR,
    model_dir: Path | None = None,
    out_dir: Path | None = None,
) -> dict[str, Any]:
    """Evaluate a calibrated model on the test split of ``category``; returns metrics."""
    model_dir = model_dir or variant_dir(params, variant, category)
    out_dir = out_dir or paths.eval_dir(variant, category)
    trained = load_trained(model_dir, params)
    calibration = trained.threshold()
    data = load_split(paths.prepared_category(category, prepared_dir))
    start = time.perf_counter()
    scores = score_images(trained.detector, data.test, f"scoring {variant}/{category} (test)")
    cost = {
        "training_minutes": round(trained.description["training_seconds"] / 60.0, 2),
        "ms_per_image": round(1000.0 * (time.perf_counter() - start) / len(data.test), 1),
    }
    by_rule = {
        name: {rule: decision(scores, name, {**calibration, "rule": rule}) for rule in RULES}
        for name in trained.detector.map_names
    }
    decisions = {name: made[calibration["rule"]] for name, made in by_rule.items()}
    results = {
        name: {**map_metrics(scores, name, data, made, params.evaluate.max_fpr), **cost}
        for name, made in decisions.items()
    }
    primary = trained.primary_map
    summary = {
        "variant": variant,
        "category": category,
        "primary": primary,
        "rule": calibration["rule"],
        "time_budget_reached": bool(trained.description.get("time_budget_reached", False)),
        **results,
    }
    with atomic_dir(out_dir) as tmp:
        atomic_write_json(tmp / METRICS_FILE, summary)
        atomic_write_json(tmp / CURVES_FILE, curves(scores, data, params.evaluate.max_fpr))
        atomic_write_text(tmp / SCORES_FILE, scores_table(scores, data, primary, decisions))
        atomic_write_json(tmp / DEFECT_TYPES_FILE, defect_types(scores, data, decisions))
        atomic_write_json(tmp / RULES_FILE, every_rule(data, by_rule))
        save_examples(tmp / EXAMPLES_DIR, scores, data, primary, decisions[primary], params)
    run_id = trained.description.get("mlflow_run_id")
    tags = {"variant": variant, "category": category, "method": trained.description["method"]}
    with tracking.evaluation_run(params, run_id, f"{variant}/{category}", tags):
        for name, metrics in results.items():
            tracking.log_metrics(metrics, prefix=f"test_{name}_")
    return summary


def decision(scores: Scores, name: str, calibration: dict[str, Any]) -> Decision:
    """Binarise map ``name`` once: metrics, the scores table and examples all reuse it."""
    threshold, min_area = decision_threshold(calibration, name)
    image_pred, pixel_pred = decide(scores.maps[name], threshold, min_area)
    return Decision(threshold, min_area, image_pred, pixel_pred)


def map_metrics(
    scores: Scores, name: str, data: CategoryData, made: Decision, max_fpr: float
) -> dict[str, float]:
    metrics = evaluate_all(
        scores.image_scores[name],
        data.test_labels,
        scores.maps[name],
        data.test_masks,
        made.image_pred,
        made.pixel_pred,
        max_fpr,
    )
    return {**metrics, "threshold": made.threshold, "min_area": made.min_area}


def every_rule(
    data: CategoryData, by_rule: dict[str, dict[str, Decision]]
) -> dict[str, dict[str, dict[str, float]]]:
    """Per map and calibration rule, the threshold and the decisions' metrics on the test
    split: ``{map: {rule: {"threshold", "min_area", "tpr", "tnr", ...}}}``.

    Every rule's threshold was set on validation normals; only reading this table to
    pick a rule would use the test labels.
    """
    return {
        name: {
            rule: {
                "threshold": made.threshold,
                "min_area": made.min_area,
                **threshold_metrics(
                    made.image_pred, data.test_labels, made.pixel_pred, data.test_masks
                ),
            }
            for rule, made in rules.items()
        }
        for name, rules in by_rule.items()
    }


def defect_types(
    scores: Scores, data: CategoryData, decisions: dict[str, Decision]
) -> dict[str, dict[str, dict[str, float]]]:
    """Per map: image AUROC and share detected at the threshold, per defect type."""
    return {
        name: defect_type_metrics(
            scores.image_scores[name], data.test_labels, data.test_defects, made.image_pred
        )
        for name, made in decisions.items()
    }


def curves(scores: Scores, data: CategoryData, max_fpr: float) -> dict[str, Any]:
    """ROC (image level) and PRO curves of every map, downsampled for plotting."""
    out: dict[str, Any] = {}
    for name, maps in scores.maps.items():
        fpr, pro = pro_curve(maps, data.test_masks, max_fpr=max_fpr)
        keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), CURVE_POINTS)).astype(int))
        out[name] = {
            "roc": roc_curve_points(scores.image_scores[name], data.test_labels, CURVE_POINTS),
            "pro": {"fpr": fpr[keep].tolist(), "pro": pro[keep].tolist()},
        }
    return out


def scores_table(
    scores: Scores, data: CategoryData, primary: str, decisions: dict[str, Decision]
) -> str:
    """One CSV row per test image: its label, score and verdict under the primary map."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "defect", "label", "score", "anomalous"])
    for row in zip(
        data.test_names,
        data.test_defects,
        data.test_labels,
        scores.image_scores[primary],
        decisions[primary].image_pred,
        strict=True,
    ):
        image, defect, label, score, verdict = row
        writer.writerow([image, defect, int(label), f"{float(score):.6g}", int(verdict)])
    return buffer.getvalue()


def save_examples(
    directory: Path,
    scores: Scores,
    data: CategoryData,
    name: str,
    made: Decision,
    params: Params,
) -> None:
    """Overlays of the best- and worst-handled test images of each class."""
    count = params.evaluate.examples
    if count == 0:
        return
    directory.mkdir(parents=True, exist_ok=True)
    image_scores = scores.image_scores[name]
    for kind, index in visualize.pick_examples(image_scores, data.test_labels, count):
        png = visualize.example_panel(
            data.test[index],
            scores.maps[name][index],
            data.test_masks[index],
            made.pixel_pred[index],
            made.threshold,
            title=f"{data.test_names[index]}  score {image_scores[index]:.4g}",
        )
        stem = Path(data.test_names[index]).with_suffix("").as_posix().replace("/", "_")
        (directory / f"{kind}_{stem}.png").write_bytes(png)
