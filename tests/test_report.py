"""The report's side-by-side table: best per column, costs, the deciding rule, and the
published numbers for categories named like MVTec AD ones."""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from reconad.config import apply_overrides, params_from_dict
from reconad.report import (
    BEST_MARK,
    OVERVIEW_METRICS,
    Evaluation,
    best_values,
    format_metrics,
    mvtec_categories,
    overview_table,
    rule_table,
    time_budget_note,
)

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def series(image: float, pixel: float, minutes: float) -> dict[str, dict[str, float]]:
    values = dict.fromkeys(OVERVIEW_METRICS, 0.5)
    values.update(image_auroc=image, pixel_auroc=pixel, training_minutes=minutes)
    return {"brick": values, "mean": values}


TREE = {
    "fast": series(0.9, 0.7, 1.0),
    "good": series(0.95, 0.6, 20.0),
    "good@uncertainty": series(0.8, math.nan, 20.0),
}


def evaluation(variant: str, rule: str, time_budget_reached: bool = False) -> Evaluation:
    return Evaluation(variant, "brick", "residual", rule, time_budget_reached, {}, {}, [], {}, {})


def test_best_of_each_column_highest_quality_lowest_cost() -> None:
    best = best_values(TREE)
    assert best["image_auroc"] == 0.95
    assert best["pixel_auroc"] == 0.7  # NaN is ignored
    assert best["training_minutes"] == 1.0


def test_overview_marks_the_best_and_names_the_deciding_rule() -> None:
    table = overview_table(TREE, [evaluation("fast", "fpr"), evaluation("good", "components")])
    header, *rows = table
    assert header == ["variant", *OVERVIEW_METRICS, "decided by"]
    by_name = {row[0]: row for row in rows}
    image = 1 + OVERVIEW_METRICS.index("image_auroc")
    minutes = 1 + OVERVIEW_METRICS.index("training_minutes")
    assert by_name["good"][image] == f"0.950 {BEST_MARK}"
    assert by_name["fast"][image] == "0.900"
    assert by_name["fast"][minutes] == f"1.000 {BEST_MARK}"
    assert by_name["fast"][-1] == "fpr"
    assert by_name["good@uncertainty"][-1] == "components"


def test_metrics_command_lists_means_first(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(TREE), encoding="utf-8")
    lines = format_metrics(path).splitlines()
    assert [line.split()[:2] for line in lines[1:4]] == [
        ["fast", "mean"],
        ["good", "mean"],
        ["good@uncertainty", "mean"],
    ]
    assert all(BEST_MARK not in line for line in lines[4:])


def test_published_numbers_also_for_a_folder_with_mvtec_names() -> None:
    raw = yaml.safe_load(REPO_PARAMS.read_text(encoding="utf-8"))
    folder = apply_overrides(
        raw,
        {
            "dataset.name": "folder",
            "dataset.root": "/data",
            "dataset.categories": ["bottle", "my_part"],
        },
        "test",
        None,
    )
    assert mvtec_categories(params_from_dict(folder)) == ["bottle"]
    assert mvtec_categories(params_from_dict(raw)) == []


def test_the_report_names_the_models_the_time_budget_stopped() -> None:
    assert time_budget_note([evaluation("fast", "fpr")]) is None
    note = time_budget_note([evaluation("fast", "fpr"), evaluation("good", "fpr", True)])
    assert note is not None
    assert "good/brick" in note
    assert "fast/brick" not in note


def test_every_rule_is_averaged_over_the_categories_and_the_deciding_one_marked() -> None:
    def rules(tpr: float) -> dict[str, dict[str, dict[str, float]]]:
        values = dict(tpr=tpr, tnr=1.0, tpr_tnr_mean=(tpr + 1.0) / 2, image_f1=0.5, pixel_f1=0.1)
        return {"residual": {"components": values, "fpr": {**values, "tnr": 0.5}}}

    brick = Evaluation("fast", "brick", "residual", "fpr", False, {}, {}, [], {}, rules(0.2))
    gravel = Evaluation("fast", "gravel", "residual", "fpr", False, {}, {}, [], {}, rules(0.6))
    header, *rows = rule_table([brick, gravel])
    assert header == ["variant", "rule", "tpr", "tnr", "tpr_tnr_mean", "image_f1", "pixel_f1"]
    assert rows == [
        ["fast", "components", "0.400", "1.000", "0.700", "0.500", "0.100"],
        ["fast", "fpr (decided)", "0.400", "0.500", "0.700", "0.500", "0.100"],
    ]
