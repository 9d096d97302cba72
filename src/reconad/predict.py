"""``reconad predict``: score new images with a trained, calibrated model.

Per image it writes the anomaly map, a heatmap and an overlay (PNG), and the predicted
defect mask, all at the image's own size, and yields one JSON line with the image score,
the threshold, the verdict and the files; the same lines go to ``predictions.jsonl`` in
the output folder.

The anomaly map is a coloured PNG (``--maps-format png``, for people) or the float32
scores themselves (``tiff`` or ``npy``), the form the MVTec AD evaluation script and
anomalib read.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from reconad import visualize
from reconad.data.images import IMAGE_SUFFIXES, decode_image, read_image, resize_image
from reconad.decision import decide, decision_threshold
from reconad.errors import DataError, ReconadError
from reconad.io import atomic_write_bytes, atomic_write_text, check_writable
from reconad.models.trained import TrainedModel, load_trained
from reconad.score import score_images

PREDICTIONS_FILE = "predictions.jsonl"
MAP_FORMATS = ("png", "tiff", "npy")
log = logging.getLogger("reconad")


def predict(
    model_dir: Path, source: Path, out_dir: Path, maps_format: str = "png"
) -> Iterator[str]:
    """Score every image of ``source`` (a file or a folder); yields JSON lines.

    Raises:
        ReconadError: ``maps_format`` is unknown, the model is not calibrated, or an
            input is not a readable image (before any output is written).
    """
    if maps_format not in MAP_FORMATS:
        raise ReconadError(
            f"--maps-format: unknown format '{maps_format}' (allowed: {', '.join(MAP_FORMATS)})"
        )
    trained = load_trained(model_dir)
    calibration = trained.threshold()
    threshold, min_area = decision_threshold(calibration, trained.primary_map)
    files = list_images(source)
    for path in files:
        decode_image(path)  # a corrupt file fails here, before any output is written
    check_writable(out_dir)
    lines: list[str] = []
    batch = trained.params.score.batch_size
    for start in range(0, len(files), batch):
        chunk = files[start : start + batch]
        originals = [load_for_model(path, trained) for path in chunk]
        images = np.stack([resized for resized, _ in originals])
        scores = score_images(trained.detector, images, progress=False)
        maps = scores.maps[trained.primary_map]
        verdicts, masks = decide(maps, threshold, min_area)
        for i, path in enumerate(chunk):
            original_shape = originals[i][1]
            record = write_outputs(
                path,
                output_stem(path, source),
                out_dir,
                images[i],
                maps[i],
                masks[i],
                original_shape,
                threshold,
                maps_format,
            )
            record.update(
                score=float(scores.image_scores[trained.primary_map][i]),
                threshold=threshold,
                min_area=min_area,
                anomalous=bool(verdicts[i]),
                map=trained.primary_map,
            )
            line = json.dumps(record)
            lines.append(line)
            yield line
    atomic_write_text(out_dir / PREDICTIONS_FILE, "\n".join(lines) + "\n")


def list_images(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise DataError(f"{source}: no such image or folder")
    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{source}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
    return files


def load_for_model(path: Path, trained: TrainedModel) -> tuple[np.ndarray, tuple[int, int]]:
    """The image at the size the model was trained on, in the colour of its training
    data, and the image's own size.

    The detector converts colour and size further to what its network sees, exactly as
    for the prepared images of calibration and evaluation.
    """
    color = trained.description["color"]
    size = int(trained.description["prepared_size"])
    image, converted = read_image(path, color)
    if converted:
        log.warning("%s: converted to %s to match the model", path, color)
    shape = image.shape[:2]
    if shape != (size, size):
        log.warning("%s: resized from %dx%d to the model's %d px", path, shape[1], shape[0], size)
        image = resize_image(image, size)
    return image.astype(np.float32, copy=False), shape


def output_stem(path: Path, source: Path) -> str:
    """A file name unique within the output folder, even for equal names in subfolders."""
    if source.is_file():
        return path.stem
    return path.relative_to(source).with_suffix("").as_posix().replace("/", "__")


def write_outputs(
    path: Path,
    stem: str,
    out_dir: Path,
    image: np.ndarray,
    anomaly_map: np.ndarray,
    mask: np.ndarray,
    original_shape: tuple[int, int],
    threshold: float,
    maps_format: str,
) -> dict[str, str]:
    """Map, heatmap, overlay and mask at the image's original size.

    The float map is written in ``maps_format``; with ``png`` the heatmap is the map.
    """
    height, width = original_shape
    full_map = cv2.resize(anomaly_map, (width, height), interpolation=cv2.INTER_LINEAR)
    full_image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    full_mask = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
    heatmap = visualize.encode_png(visualize.heatmap(full_map, threshold))
    outputs = {
        "map_file": out_dir / f"{stem}_map.{maps_format}",
        "heatmap": out_dir / f"{stem}_heatmap.png",
        "overlay": out_dir / f"{stem}_overlay.png",
        "mask": out_dir / f"{stem}_mask.png",
    }
    if maps_format == "png":
        outputs["map_file"] = outputs["heatmap"]
    else:
        atomic_write_bytes(outputs["map_file"], encode_float_map(full_map, maps_format))
    atomic_write_bytes(outputs["heatmap"], heatmap)
    atomic_write_bytes(
        outputs["overlay"], visualize.encode_png(visualize.overlay(full_image, full_map, threshold))
    )
    atomic_write_bytes(outputs["mask"], visualize.encode_png(full_mask * 255))
    return {"image": str(path), **{k: str(v) for k, v in outputs.items()}}


def encode_float_map(anomaly_map: np.ndarray, maps_format: str) -> bytes:
    """A ``(H, W)`` map as float32 TIFF or NPY bytes, scores unchanged."""
    values = np.ascontiguousarray(anomaly_map, dtype=np.float32)
    if maps_format == "npy":
        buffer = io.BytesIO()
        np.save(buffer, values, allow_pickle=False)
        return buffer.getvalue()
    encoded, data = cv2.imencode(".tiff", values)
    if not encoded:
        raise ReconadError("could not encode the anomaly map as TIFF")
    return data.tobytes()
