"""Whether a model's anomaly maps are hot at the image border, where the backbone's and the
networks' zero padding makes features that the middle of an image never has.

On the good test images it compares the mean map in a band along the border with the mean
map inside it, and counts the good images whose map maximum (the image score of the
memory-bank families) lies in the band: a border that competes with defects shows as a
ratio above 1 and as maxima there. It reads trained models as the pipeline left them, so
it runs after ``dvc repro`` / ``dvc exp run`` in the same folder::

    python -m studies.border_maps --category bottle --variant patchcore --variant patch_ae
"""

from __future__ import annotations

import argparse
from pathlib import Path

from reconad.runtime import configure_environment

configure_environment()

import numpy as np  # noqa: E402

from reconad import paths  # noqa: E402
from reconad.config import load_params  # noqa: E402
from reconad.data.layout import load_split  # noqa: E402
from reconad.models.trained import load_trained, variant_dir  # noqa: E402
from reconad.score import score_images  # noqa: E402


def border_mask(size: int, band: int) -> np.ndarray:
    """True within ``band`` pixels of the border of a ``size`` x ``size`` map."""
    inside = np.zeros((size, size), bool)
    inside[band:-band, band:-band] = True
    return ~inside


def border_report(maps: np.ndarray, bands: tuple[int, ...]) -> list[str]:
    """One line per band on the maps ``(N, H, W)`` of good images."""
    mean = maps.mean(axis=0)
    peaks = maps.reshape(len(maps), -1).argmax(axis=1)
    lines = []
    for band in bands:
        border = border_mask(maps.shape[1], band)
        at_border = int(border.reshape(-1)[peaks].sum())
        ratio = mean[border].mean() / mean[~border].mean()
        lines.append(
            f"  band {band:>3} px: border / inside mean {ratio:.3f}, "
            f"map maximum in the band on {at_border} of {len(maps)} good images"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--category", required=True)
    parser.add_argument("--variant", action="append", required=True)
    parser.add_argument("--band", type=int, action="append", default=None, help="px; repeatable")
    args = parser.parse_args(argv)
    data = load_split(paths.prepared_category(args.category))
    good = data.test[data.test_labels == 0]
    for variant in args.variant:
        params = load_params(args.params, variant)
        trained = load_trained(variant_dir(params, variant, args.category), params)
        maps = score_images(trained.detector, good, progress=False).maps[trained.primary_map]
        print(f"{variant}/{args.category}, {len(good)} good test images:")
        print("\n".join(border_report(maps, tuple(args.band or (8, 16, 32)))))


if __name__ == "__main__":
    main()
