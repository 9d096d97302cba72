"""What the reconstruction families make of good and defective test images: one figure
per category with, for each chosen image, the input, each model's reconstruction and its
anomaly map.

It reads trained models as the pipeline left them (``models/<variant>/<category>``) and the
prepared test split, so it runs after ``dvc repro`` / ``dvc exp run`` in the same folder::

    python -m studies.reconstructions --category bottle \\
        --variant sdc_restore --variant aesc_stain --variant patch_ae \\
        --out docs/quality/reconstructions_bottle.png

Images are picked without looking at any score: the first ``--per-kind`` good images and the
first of each defect type, in file order.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from reconad.runtime import configure_environment

configure_environment()

import keras  # noqa: E402
import numpy as np  # noqa: E402

from reconad import paths  # noqa: E402
from reconad.config import load_params  # noqa: E402
from reconad.data.layout import CategoryData, load_split  # noqa: E402
from reconad.models.base import adapt_images, resize_maps  # noqa: E402
from reconad.models.trained import TrainedModel, load_trained, variant_dir  # noqa: E402


def pick_images(data: CategoryData, per_kind: int) -> list[int]:
    """Indices of the first ``per_kind`` good test images and the first of each defect type."""
    chosen = [i for i, defect in enumerate(data.test_defects) if defect == "good"][:per_kind]
    seen: set[str] = set()
    for index, defect in enumerate(data.test_defects):
        if defect != "good" and defect not in seen:
            seen.add(defect)
            chosen.append(index)
    return chosen


def reconstruction(trained: TrainedModel, images: np.ndarray) -> np.ndarray | None:
    """The network's output for ``images`` at their size, for families whose network
    reconstructs the image (None otherwise)."""
    model_file = trained.directory / paths.MODEL_SUBDIR / paths.MODEL_FILE
    if not model_file.exists():
        return None
    model = keras.saving.load_model(model_file, compile=False)
    size, channels = int(trained.description["image_size"]), int(trained.description["channels"])
    seen = adapt_images(images, size, channels)
    output = np.asarray(model(seen, training=False), np.float32)
    if output.shape[1:3] != seen.shape[1:3]:
        return None
    if output.shape[1:3] != images.shape[1:3]:
        output = np.stack(
            [resize_maps(output[..., c], images.shape[1:3]) for c in range(channels)], -1
        )
    return np.clip(output, 0.0, 1.0)


def figure(
    data: CategoryData, picks: list[int], models: dict[str, TrainedModel], out: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = data.test[picks]
    columns = 1 + 2 * len(models)
    fig, axes = plt.subplots(len(picks), columns, figsize=(1.9 * columns, 1.9 * len(picks)))
    axes = np.atleast_2d(axes)
    for row, index in enumerate(picks):
        show(axes[row, 0], images[row], f"{data.test_defects[index]}\n{data.test_names[index]}")
    for slot, (variant, trained) in enumerate(models.items()):
        rebuilt = reconstruction(trained, images)
        maps = trained.detector.score(images).maps[trained.primary_map]
        for row in range(len(picks)):
            axis = axes[row, 1 + 2 * slot]
            if rebuilt is None:
                axis.axis("off")
                axis.set_title(f"{variant}\n(no image output)" if row == 0 else "", fontsize=7)
            else:
                show(axis, rebuilt[row], f"{variant}\nreconstruction" if row == 0 else "")
            axis = axes[row, 2 + 2 * slot]
            axis.imshow(maps[row], cmap="inferno")
            axis.set_axis_off()
            if row == 0:
                axis.set_title(f"{variant}\n{trained.primary_map} map", fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)


def show(axis, image: np.ndarray, title: str) -> None:
    axis.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="grey", vmin=0, vmax=1)
    axis.set_axis_off()
    axis.set_title(title, fontsize=7)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--category", required=True)
    parser.add_argument("--variant", action="append", required=True)
    parser.add_argument("--per-kind", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    data = load_split(paths.prepared_category(args.category))
    models = {}
    for variant in args.variant:
        params = load_params(args.params, variant)
        models[variant] = load_trained(variant_dir(params, variant, args.category), params)
    figure(data, pick_images(data, args.per_kind), models, args.out)


if __name__ == "__main__":
    main()
