"""The learning-curve study's CSV, read back to plot a measured curve again."""

from __future__ import annotations

from pathlib import Path

from studies.learning_curve import Point, main, read_csv, write_csv

from reconad.synthetic import SyntheticScore


def _points() -> list[Point]:
    return [
        Point(
            "patch_ae",
            "bottle",
            epoch,
            epoch * 50,
            minutes,
            0.99,
            0.978,
            aupro,
            {"training": SyntheticScore(0.96, 0.98), "mix1": SyntheticScore(0.97, 0.99)},
        )
        for epoch, minutes, aupro in ((2, 0.68, 0.929), (4, 1.49, 0.9236))
    ]


def test_a_written_curve_reads_back_as_the_same_points(tmp_path: Path) -> None:
    path = tmp_path / "patch_ae_bottle.csv"
    write_csv(_points(), path)
    assert read_csv(path) == _points()


def test_replot_draws_the_csv_without_training(tmp_path: Path) -> None:
    write_csv(_points(), tmp_path / "patch_ae_bottle.csv")
    main(["--variant", "patch_ae", "--category", "bottle", "--out", str(tmp_path), "--replot"])
    assert (tmp_path / "patch_ae_bottle.png").stat().st_size > 0
