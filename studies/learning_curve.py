"""Learning curve of one variant: image and pixel AUROC on the test split against training
minutes, to see what more CPU time (or a GPU) would buy and whether a method still learns
when its budget ends.

It trains with the pipeline's own code (``reconad.train``: the variant's params, profile,
phases, corruption, precise BN) on a category that ``reconad fetch`` and ``reconad
prepare`` have prepared, and at the end of every ``--every``-th epoch scores the test split
with the model as it is then (the family's ``after_training`` state included). The clock
stops while it scores. The test labels only measure here; nothing is chosen on them.
``--extend`` lengthens the last phase past the profile's budget (with a cosine learning
rate the decay then spans the longer run, so the curve past the budget is a longer run,
not a continuation). Writes a CSV and a PNG (image and pixel AUROC against minutes).

From a project folder whose ``params.yaml`` selects the data (e.g. ``dataset.root``)::

    python -m studies.learning_curve --variant aesc_stain --category bottle \\
        --every 2 --extend 1.5 --out docs/quality/learning_curves
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from reconad.runtime import configure_environment, seed_everything

configure_environment()

import keras  # noqa: E402

from reconad import paths  # noqa: E402
from reconad.config import Params, apply_overrides, load_params, params_from_dict  # noqa: E402
from reconad.data.layout import CategoryData, load_split  # noqa: E402
from reconad.metrics import aupro, image_auroc, pixel_auroc  # noqa: E402
from reconad.models.base import AdaptedDetector, TrainedMethod, precise_batch_norm  # noqa: E402
from reconad.score import score_images  # noqa: E402
from reconad.synthetic import SyntheticScore, synthetic_score, synthetic_set  # noqa: E402
from reconad.train import as_seen_by, compiled_model, fit_phases, make_method  # noqa: E402


@dataclass(frozen=True)
class Point:
    variant: str
    category: str
    epoch: int
    steps: int
    minutes: float
    image_auroc: float
    pixel_auroc: float
    aupro: float
    synthetic: dict[str, SyntheticScore]
    """The label-free validation score (``reconad.synthetic``) at the same moment, per kind
    of pasted defects: whether it follows the test figures decides whether it can choose
    without them."""


class CurveRecorder(keras.callbacks.Callback):
    """Scores the test split every ``every`` epochs, with the training clock stopped."""

    def __init__(
        self,
        method: TrainedMethod,
        seen: CategoryData,
        test: CategoryData,
        every: int,
        defects: list[str],
    ) -> None:
        super().__init__()
        self.method = method
        self.seen = seen
        self.test = test
        self.every = every
        self.epoch = 0
        self.seconds = 0.0
        self.started = 0.0
        self.points: list[Point] = []
        self.synthetic = {kind: synthetic_set(method, seen.val, 0, kind) for kind in defects}

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.seconds += time.perf_counter() - self.started
        self.epoch += 1
        if self.epoch % self.every == 0:
            self.points.append(self.measure())

    def measure(self) -> Point:
        """The test metrics of the model as it is now, with its BatchNorm statistics
        recomputed on full-size images as training ends (``train.precise_bn``); training
        itself uses batch statistics, so this does not change how it goes on."""
        fit = self.method.fit_config()
        if fit.precise_bn:
            precise_batch_norm(self.model, self.seen.train, fit.batch_size)
        with tempfile.TemporaryDirectory() as state:
            self.method.after_training(self.model, self.seen, Path(state))
            inner = self.method.load_detector(self.model, Path(state))
            detector = AdaptedDetector(inner, self.method.image_size, self.method.channels)
            scores = score_images(detector, self.test.test, progress=False)
        name = detector.map_names[0]
        maps = scores.maps[name]
        point = Point(
            self.method.variant,
            self.test.category,
            self.epoch,
            self.epoch * fit.steps_per_epoch,
            round(self.seconds / 60.0, 2),
            round(image_auroc(scores.image_scores[name], self.test.test_labels), 4),
            round(pixel_auroc(maps, self.test.test_masks), 4),
            round(aupro(maps, self.test.test_masks), 4),
            {
                kind: synthetic_score(self.method, self.model, self.seen, made)
                for kind, made in self.synthetic.items()
            },
        )
        print(flat(point), flush=True)
        return point


def extended(params_file: Path, variant: str, factor: float) -> Params:
    """The variant's params with its last phase ``factor`` times as long."""
    params = load_params(params_file, variant)
    family = params.variant(variant).method
    phases = [phase.model_dump() for phase in params.family(family).train.phases]
    phases[-1]["epochs"] = max(1, round(phases[-1]["epochs"] * factor))
    raw = apply_overrides(params.raw(), {f"{family}.train.phases": phases}, "--extend", None)
    return params_from_dict(raw, variant, params_file)


def learning_curve(
    params_file: Path,
    variant: str,
    category: str,
    every: int,
    factor: float,
    defects: list[str],
) -> list[Point]:
    params = extended(params_file, variant, factor)
    seed_everything(params.seed)
    prepared = load_split(paths.prepared_category(category))
    method = make_method(params, variant, prepared.train.shape[-1])
    if not isinstance(method, TrainedMethod):
        raise SystemExit(f"{variant}: a {method.family} variant is not trained")
    seen = as_seen_by(method, prepared)
    model = compiled_model(params, method, seen)
    recorder = CurveRecorder(method, seen, prepared, every, defects)
    with tempfile.TemporaryDirectory() as checkpoints:
        fit_phases(model, method, seen, params, Path(checkpoints), extra_callbacks=[recorder])
    if not recorder.points or recorder.points[-1].epoch != recorder.epoch:
        recorder.points.append(recorder.measure())
    return recorder.points


def flat(point: Point) -> dict[str, Any]:
    """One CSV (and log) row: per kind of pasted defects, ``synthetic_<kind>`` (the mean
    early stopping watches) and its halves ``synthetic_<kind>_pixel``, ``_image``."""
    row = asdict(point)
    del row["synthetic"]
    for kind, score in point.synthetic.items():
        mean, pixel, image = synthetic_columns(kind)
        row[mean] = round(score.mean, 4)
        row[pixel] = round(score.pixel_auroc, 4)
        row[image] = round(score.image_auroc, 4)
    return row


def synthetic_columns(kind: str) -> tuple[str, str, str]:
    """The CSV columns of one kind of pasted defects: its mean, pixel and image AUROC."""
    return f"synthetic_{kind}", f"synthetic_{kind}_pixel", f"synthetic_{kind}_image"


def write_csv(points: list[Point], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [flat(point) for point in points]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: Path) -> list[Point]:
    """The points :func:`write_csv` wrote, to plot a measured curve again without training."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    kinds = [key.removeprefix("synthetic_") for key in rows[0] if _is_synthetic_mean(key)]
    return [
        Point(
            variant=row["variant"],
            category=row["category"],
            epoch=int(row["epoch"]),
            steps=int(row["steps"]),
            minutes=float(row["minutes"]),
            image_auroc=float(row["image_auroc"]),
            pixel_auroc=float(row["pixel_auroc"]),
            aupro=float(row["aupro"]),
            synthetic={kind: _synthetic_score(row, kind) for kind in kinds},
        )
        for row in rows
    ]


def _synthetic_score(row: dict[str, str], kind: str) -> SyntheticScore:
    _, pixel, image = synthetic_columns(kind)
    return SyntheticScore(float(row[pixel]), float(row[image]))


def _is_synthetic_mean(column: str) -> bool:
    return column.startswith("synthetic_") and not column.endswith(("_pixel", "_image"))


def plot(points: list[Point], path: Path, budget_minutes: float, ymin: float = 0.4) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [p.minutes for p in points]
    figure, axis = plt.subplots(figsize=(5.5, 3.6))
    axis.plot(minutes, [p.image_auroc for p in points], marker="o", label="image AUROC")
    axis.plot(minutes, [p.pixel_auroc for p in points], marker="s", label="pixel AUROC")
    axis.plot(minutes, [p.aupro for p in points], marker="^", label="AUPRO", alpha=0.6)
    for kind in points[0].synthetic:
        axis.plot(
            minutes,
            [p.synthetic[kind].mean for p in points],
            linestyle=":",
            label=f"label-free: {kind} defects",
        )
    axis.axvline(budget_minutes, color="grey", linestyle="--", label="cpu budget")
    axis.set(
        xlabel="training minutes (2 CPU cores)",
        ylabel="test split",
        title=f"{points[0].variant} on {points[0].category}",
        ylim=(ymin, 1.0),
    )
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--variant", required=True)
    parser.add_argument("--category", required=True)
    parser.add_argument("--every", type=int, default=2, help="epochs between measurements")
    parser.add_argument("--extend", type=float, default=1.0, help="last phase x this")
    parser.add_argument("--budget-minutes", type=float, default=30.0)
    parser.add_argument("--ymin", type=float, default=0.4, help="lower end of the plot's y axis")
    parser.add_argument(
        "--defects",
        nargs="+",
        default=["training"],
        help="kinds of synthetic defects scored (training: the family's own corruption)",
    )
    parser.add_argument("--out", type=Path, default=Path("docs/quality/learning_curves"))
    parser.add_argument(
        "--replot", action="store_true", help="plot the CSV in --out again; train nothing"
    )
    args = parser.parse_args(argv)
    stem = args.out / f"{args.variant}_{args.category}"
    if args.replot:
        points = read_csv(stem.with_suffix(".csv"))
    else:
        points = learning_curve(
            args.params, args.variant, args.category, args.every, args.extend, args.defects
        )
        write_csv(points, stem.with_suffix(".csv"))
    plot(points, stem.with_suffix(".png"), args.budget_minutes, args.ymin)


if __name__ == "__main__":
    main()
