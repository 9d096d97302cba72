"""The report stage: gather every evaluation into ``reports/metrics.json`` (DVC metrics),
DVC plot data, PNG figures, ``report.md`` and a self-contained ``report.html``.

Both documents are rendered from one list of blocks (headings, tables, figures), so
they always say the same thing.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from reconad import paths
from reconad.config import Params
from reconad.errors import ReconadError
from reconad.io import atomic_dir, atomic_write_json, atomic_write_text, read_json
from reconad.published import MVTEC_CATEGORIES, published_table

REPORT_METRICS = (
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "tpr",
    "tnr",
    "tpr_tnr_mean",
    "image_f1",
    "pixel_f1",
    "training_minutes",
    "ms_per_image",
)
OVERVIEW_METRICS = (
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "tpr_tnr_mean",
    "pixel_f1",
    "training_minutes",
    "ms_per_image",
)
"""The columns of the side-by-side table and of ``reconad metrics``."""
RULE_METRICS = ("tpr", "tnr", "tpr_tnr_mean", "image_f1", "pixel_f1")
"""The columns of the table of every calibration rule's decisions."""
LOWER_IS_BETTER = frozenset({"training_minutes", "ms_per_image"})
BEST_MARK = "*"
METRICS_JSON = "metrics.json"
# The params sections the report prints; dvc.yaml's report stage lists the same.
REPORTED_PARAMS = ("seed", "profile", "dataset", "run", "variants", "calibrate")
PLOTS_DIR = "plots"
FIGURES_DIR = "figures"
MAP_SEPARATOR = "@"


@dataclass(frozen=True)
class Evaluation:
    variant: str
    category: str
    primary: str
    rule: str
    time_budget_reached: bool
    metrics: dict[str, dict[str, float]]
    curves: dict[str, Any]
    examples: list[Path]
    defect_types: dict[str, dict[str, dict[str, float]]]
    rules: dict[str, dict[str, dict[str, float]]]


@dataclass(frozen=True)
class Block:
    kind: str  # "heading" | "text" | "table" | "image"
    content: Any


def build_report(params: Params, eval_dir: Path, reports_dir: Path) -> dict:
    """Write every report output; returns the metrics written to ``metrics.json``."""
    evaluations = collect(eval_dir, params)
    metrics = metrics_tree(evaluations)
    atomic_write_json(reports_dir / METRICS_JSON, metrics)
    write_plot_data(reports_dir / PLOTS_DIR, evaluations)
    figures = write_figures(reports_dir / FIGURES_DIR, evaluations)
    blocks = report_blocks(params, metrics, evaluations, figures)
    atomic_write_text(reports_dir / "report.md", render_markdown(blocks, reports_dir))
    atomic_write_text(reports_dir / "report.html", render_html(blocks))
    return metrics


def collect(eval_dir: Path, params: Params) -> list[Evaluation]:
    """The evaluations of every variant and category that ``run`` asks for."""
    evaluations = []
    for variants in params.run.values():
        for variant in variants:
            for category in params.dataset.categories:
                evaluations.append(load_evaluation(eval_dir / variant / category))
    if not evaluations:
        raise ReconadError("params.yaml run: no variant selected, nothing to report")
    return evaluations


def load_evaluation(directory: Path) -> Evaluation:
    metrics_file = directory / paths.EVAL_METRICS_FILE
    if not metrics_file.exists():
        raise ReconadError(f"{metrics_file}: missing; run `dvc repro` to evaluate first")
    summary = read_json(metrics_file)
    curves = read_json(directory / paths.EVAL_CURVES_FILE)
    defect_types = read_json(directory / paths.EVAL_DEFECT_TYPES_FILE)
    rules = read_json(directory / paths.EVAL_RULES_FILE)
    maps = {k: v for k, v in summary.items() if isinstance(v, dict)}
    examples = sorted((directory / paths.EVAL_EXAMPLES_DIR).glob("*.png"))
    return Evaluation(
        summary["variant"],
        summary["category"],
        summary["primary"],
        summary["rule"],
        bool(summary.get("time_budget_reached", False)),
        maps,
        curves,
        examples,
        defect_types,
        rules,
    )


def series_name(evaluation: Evaluation, map_name: str) -> str:
    """``variant`` for the primary map, ``variant@map`` for the others."""
    if map_name == evaluation.primary:
        return evaluation.variant
    return f"{evaluation.variant}{MAP_SEPARATOR}{map_name}"


def metrics_tree(evaluations: list[Evaluation]) -> dict[str, dict[str, dict[str, float]]]:
    """``{series: {category: {metric: value}, "mean": {...}}}``, the DVC metrics file."""
    tree: dict[str, dict[str, dict[str, float]]] = {}
    for evaluation in evaluations:
        for map_name, values in evaluation.metrics.items():
            series = tree.setdefault(series_name(evaluation, map_name), {})
            series[evaluation.category] = {k: round_metric(values[k]) for k in REPORT_METRICS}
    for series in tree.values():
        categories = list(series.values())
        series["mean"] = {
            k: round_metric(float(np.mean([c[k] for c in categories]))) for k in REPORT_METRICS
        }
    return tree


def round_metric(value: float) -> float:
    return round(float(value), 4) if math.isfinite(value) else float("nan")


def write_plot_data(directory: Path, evaluations: list[Evaluation]) -> None:
    """One CSV per curve and series, the layout ``dvc plots show`` draws as lines."""
    with atomic_dir(directory) as tmp:
        for evaluation in evaluations:
            for map_name, curve in evaluation.curves.items():
                stem = f"{series_name(evaluation, map_name)}__{evaluation.category}.csv"
                write_csv(
                    tmp / "roc" / stem, ("fpr", "tpr"), curve["roc"]["fpr"], curve["roc"]["tpr"]
                )
                write_csv(
                    tmp / "pro" / stem, ("fpr", "pro"), curve["pro"]["fpr"], curve["pro"]["pro"]
                )


def write_csv(path: Path, header: tuple[str, str], xs: list[float], ys: list[float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows((f"{x:.6g}", f"{y:.6g}") for x, y in zip(xs, ys, strict=True))
    path.write_text(buffer.getvalue(), encoding="utf-8")


def write_figures(directory: Path, evaluations: list[Evaluation]) -> dict[str, Path]:
    """ROC and PRO figures per category, every series in one plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures: dict[str, Path] = {}
    categories = sorted({e.category for e in evaluations})
    with atomic_dir(directory) as tmp:
        for curve, x_label, y_label in (("roc", "FPR", "TPR"), ("pro", "FPR", "PRO")):
            figure, axes = plt.subplots(
                1, len(categories), figsize=(4 * len(categories), 3.6), squeeze=False
            )
            for axis, category in zip(axes[0], categories, strict=True):
                for evaluation in (e for e in evaluations if e.category == category):
                    for map_name, data in evaluation.curves.items():
                        y_key = "tpr" if curve == "roc" else "pro"
                        axis.plot(
                            data[curve]["fpr"],
                            data[curve][y_key],
                            label=series_name(evaluation, map_name),
                        )
                axis.set(title=category, xlabel=x_label, ylabel=y_label)
                axis.grid(alpha=0.3)
                axis.legend(fontsize=7)
            figure.tight_layout()
            name = f"{curve}.png"
            figure.savefig(tmp / name, dpi=90)
            plt.close(figure)
            figures[curve] = directory / name
    return figures


def report_blocks(
    params: Params,
    metrics: dict[str, dict[str, dict[str, float]]],
    evaluations: list[Evaluation],
    figures: dict[str, Path],
) -> list[Block]:
    blocks = [
        Block("heading", "reconad report"),
        Block(
            "text",
            f"Dataset `{params.dataset.name}` ({', '.join(params.dataset.categories)}), "
            f"image size {params.dataset.image_size}, profile `{params.profile}`, "
            f"seed {params.seed}. Thresholds were calibrated on validation normals only "
            f"(rule `{params.calibrate.rule}`).",
        ),
    ]
    blocks.append(Block("heading2", "Every variant side by side (mean over the categories)"))
    blocks.append(
        Block(
            "text",
            f"The best value of each column is marked {BEST_MARK}. Cost: training minutes "
            "per category (on this machine) and scoring milliseconds per test image. "
            "`decided by`: the calibration rule whose threshold gave TPR/TNR and F1.",
        )
    )
    blocks.append(Block("table", overview_table(metrics, evaluations)))
    if note := time_budget_note(evaluations):
        blocks.append(Block("text", note))
    blocks.append(Block("heading2", "Every calibration rule"))
    blocks.append(
        Block(
            "text",
            "What the threshold of each rule, all set on validation normals, gives on the "
            "test split (mean over the categories). The rule of `calibrate.rule` decided "
            "the figures above; choosing another from this table uses the test labels.",
        )
    )
    blocks.append(Block("table", rule_table(evaluations)))
    for series, per_category in metrics.items():
        blocks.append(Block("heading2", series))
        blocks.append(Block("table", metrics_table(per_category)))
    if mvtec_categories(params):
        title = "Ours next to the published MVTec AD numbers"
        if params.dataset.name != "mvtec_ad":
            title += " (local copy, may be resized)"
        blocks.append(Block("heading2", title))
        blocks.append(Block("table", published_table(metrics, mvtec_categories(params))))
    blocks.append(Block("heading2", "By defect type"))
    blocks.append(
        Block(
            "text",
            "Image AUROC of each defect type against all good test images, and the share of "
            "its images flagged at the calibrated threshold (primary map).",
        )
    )
    blocks.append(Block("table", defect_type_table(evaluations)))
    blocks.append(Block("heading2", "ROC (image level) and PRO curves"))
    blocks += [Block("image", path) for path in figures.values()]
    blocks.append(Block("heading2", "Best and worst test images"))
    for evaluation in evaluations:
        blocks.append(Block("text", f"**{evaluation.variant} / {evaluation.category}**"))
        blocks += [Block("image", path) for path in evaluation.examples]
    blocks.append(Block("heading2", "Params used"))
    blocks.append(
        Block(
            "text",
            "Each model's complete params are in `models/<variant>/<category>/model/config.json`.",
        )
    )
    dump = params.model_dump(mode="json", by_alias=True)
    blocks.append(
        Block("code", yaml.safe_dump({k: dump[k] for k in REPORTED_PARAMS}, sort_keys=False))
    )
    return blocks


def time_budget_note(evaluations: list[Evaluation]) -> str | None:
    """Which models ``train.max_minutes`` stopped early, so that a reader of figures from
    a slow machine knows they are not the full schedule's; None when none was."""
    cut = [f"{e.variant}/{e.category}" for e in evaluations if e.time_budget_reached]
    if not cut:
        return None
    return (
        "Training stopped at its time budget (`train.max_minutes`) before the end of its "
        f"schedule for: {', '.join(cut)}. On a faster machine these models train longer."
    )


def mvtec_categories(params: Params) -> list[str]:
    """The categories of this run named like MVTec AD ones (all of them for ``mvtec_ad``)."""
    return [c for c in params.dataset.categories if c in MVTEC_CATEGORIES]


def overview_table(
    metrics: dict[str, dict[str, dict[str, float]]], evaluations: list[Evaluation]
) -> list[list[str]]:
    """One row per series (mean over categories), the best of each column marked."""
    rules = {e.variant: e.rule for e in evaluations}
    rows = [["variant", *OVERVIEW_METRICS, "decided by"]]
    best = best_values(metrics)
    for series, per_category in metrics.items():
        mean = per_category["mean"]
        cells = [marked(mean[k], best[k]) for k in OVERVIEW_METRICS]
        rows.append([series, *cells, rules[series.split(MAP_SEPARATOR)[0]]])
    return rows


def rule_table(evaluations: list[Evaluation]) -> list[list[str]]:
    """One row per series and calibration rule, means over the categories; the rule that
    decided is marked."""
    per_rule: dict[tuple[str, str], list[dict[str, float]]] = {}
    deciding: dict[str, str] = {}
    for evaluation in evaluations:
        for map_name, rules in evaluation.rules.items():
            series = series_name(evaluation, map_name)
            deciding[series] = evaluation.rule
            for rule, values in rules.items():
                per_rule.setdefault((series, rule), []).append(values)
    rows = [["variant", "rule", *RULE_METRICS]]
    for (series, rule), values in per_rule.items():
        label = f"{rule} (decided)" if rule == deciding[series] else rule
        means = [f"{np.mean([v[k] for v in values]):.3f}" for k in RULE_METRICS]
        rows.append([series, label, *means])
    return rows


def best_values(metrics: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
    """The best mean of each overview column over all series (lowest for costs)."""
    best = {}
    for key in OVERVIEW_METRICS:
        values = [s["mean"][key] for s in metrics.values() if math.isfinite(s["mean"][key])]
        pick = min if key in LOWER_IS_BETTER else max
        best[key] = pick(values) if values else float("nan")
    return best


def marked(value: float, best: float) -> str:
    """``value`` with 3 decimals (costs with 1), marked when it is the best."""
    text = f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return f"{text} {BEST_MARK}" if math.isfinite(value) and value == best else text


def metrics_table(per_category: dict[str, dict[str, float]]) -> list[list[str]]:
    header = ["category", *REPORT_METRICS]
    rows = [
        [name, *(f"{values[k]:.3f}" for k in REPORT_METRICS)]
        for name, values in per_category.items()
    ]
    return [header, *rows]


def defect_type_table(evaluations: list[Evaluation]) -> list[list[str]]:
    header = ["variant", "category", "defect", "images", "image_auroc", "detected"]
    rows = [
        [
            evaluation.variant,
            evaluation.category,
            defect,
            str(int(values["images"])),
            f"{values['image_auroc']:.3f}",
            f"{values['detected']:.3f}",
        ]
        for evaluation in evaluations
        for defect, values in evaluation.defect_types[evaluation.primary].items()
    ]
    return [header, *rows]


def render_markdown(blocks: list[Block], base: Path) -> str:
    lines: list[str] = []
    for block in blocks:
        if block.kind == "heading":
            lines += [f"# {block.content}", ""]
        elif block.kind == "heading2":
            lines += [f"## {block.content}", ""]
        elif block.kind == "text":
            lines += [block.content, ""]
        elif block.kind == "code":
            lines += ["```yaml", block.content.rstrip(), "```", ""]
        elif block.kind == "table":
            header, *rows = block.content
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "---|" * len(header))
            lines += ["| " + " | ".join(row) + " |" for row in rows]
            lines.append("")
        elif block.kind == "image":
            relative = Path(block.content).resolve().relative_to(base.resolve())
            lines += [f"![{relative.stem}]({relative.as_posix()})", ""]
    return "\n".join(lines)


def render_html(blocks: list[Block]) -> str:
    """A single HTML file with every PNG embedded, readable offline and by email."""
    body: list[str] = []
    for block in blocks:
        if block.kind == "heading":
            body.append(f"<h1>{html.escape(block.content)}</h1>")
        elif block.kind == "heading2":
            body.append(f"<h2>{html.escape(block.content)}</h2>")
        elif block.kind == "text":
            body.append(f"<p>{markdown_inline(block.content)}</p>")
        elif block.kind == "code":
            body.append(f"<pre>{html.escape(block.content)}</pre>")
        elif block.kind == "table":
            header, *rows = block.content
            cells = "".join(f"<th>{html.escape(h)}</th>" for h in header)
            body.append(f"<table><tr>{cells}</tr>")
            for row in rows:
                body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
            body.append("</table>")
        elif block.kind == "image":
            data = base64.b64encode(Path(block.content).read_bytes()).decode("ascii")
            alt = html.escape(Path(block.content).stem)
            body.append(f'<img alt="{alt}" src="data:image/png;base64,{data}">')
    return HTML_PAGE.format(body="\n".join(body))


def markdown_inline(text: str) -> str:
    """The two inline forms the report uses: **bold** and `code`."""
    escaped = html.escape(text)
    parts = escaped.split("**")
    escaped = "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
    parts = escaped.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


HTML_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>reconad report</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
img {{ max-width: 100%; margin: 4px; vertical-align: top; }}
pre {{ background: #f6f6f6; padding: 1em; font-size: 0.8em; overflow-x: auto; }}
</style></head>
<body>
{body}
</body></html>
"""


def format_metrics(path: Path, columns: tuple[str, ...] = OVERVIEW_METRICS) -> str:
    """``reports/metrics.json`` as an aligned text table: every variant side by side on
    the mean over the categories (the best of each column marked), then each category."""
    if not path.exists():
        raise ReconadError(f"{path}: missing; run `dvc repro` first")
    tree = read_json(path)
    best = best_values(tree)
    header = ["variant", "category", *columns]
    means = [
        [series, "mean", *(marked(per_category["mean"][c], best[c]) for c in columns)]
        for series, per_category in tree.items()
    ]
    details = [
        [series, category, *(marked(values[c], float("nan")) for c in columns)]
        for series, per_category in tree.items()
        for category, values in per_category.items()
        if category != "mean"
    ]
    rows = [*means, *details]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines)
