"""The benchmark scripts import, their reference corruption does what the TF op does, the
training benchmark counts FLOPs right, the training, inference and pipeline benchmarks
return their figures, and ``python -m benchmarks`` reads the figures the other scripts print.

No speed is asserted here: on a shared machine a timing test would be flaky. ``make bench``
measures.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import keras
import numpy as np
import pytest
import tensorflow as tf

from faults_support import write_params
from pipeline_fixtures import REPO_DVC_YAML, repo_params
from reconad.config import DatasetConfig, ElasticConfig, Params, PatchAeConfig
from reconad.corrupt.elastic import elastic_patch_corruption
from reconad.data.layout import CategoryData
from reconad.models.patch_ae import PatchAe, PatchAeDetector

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = (
    "corruption",
    "knn",
    "mc_dropout",
    "training",
    "inference",
    "coreset",
    "pipeline",
    "__main__",
)
CFG = ElasticConfig(size_min=0.15, size_max=0.35, sigma=4.0, alpha=50.0)


def import_benchmark(name: str) -> ModuleType:
    """``benchmarks.<name>`` imported as ``python -m benchmarks`` does, from the repo root
    (pytest's ``pythonpath`` puts it on ``sys.path``)."""
    return importlib.import_module(f"benchmarks.{name}")


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_imports_without_running(name: str) -> None:
    module = import_benchmark(name)
    assert callable(module.main)


@pytest.mark.parametrize("channels", [1, 3])
def test_reference_output_is_shaped_like_the_tf_op(channels: int) -> None:
    corruption = import_benchmark("corruption")
    images = np.random.default_rng(0).random((2, 32, 32, channels), dtype=np.float32)
    x_hat, x, mask = corruption.reference_corruption(images, CFG, np.random.default_rng(1))
    expected = [t.numpy() for t in elastic_patch_corruption(images, tf.constant([1, 2]), CFG)]

    for ours, theirs in zip((x_hat, x, mask), expected, strict=True):
        assert ours.shape == theirs.shape
        assert ours.dtype == theirs.dtype == np.float32
    np.testing.assert_array_equal(x, images)
    assert mask.min() >= 0.0 and mask.max() <= 1.0
    assert (x_hat >= 0.0).all() and (x_hat <= 1.0).all()
    np.testing.assert_array_equal(mask, np.repeat(mask[..., :1], channels, axis=-1))
    np.testing.assert_array_equal(x_hat[mask == 0], x[mask == 0])
    assert (np.abs(x_hat - x).sum(axis=(1, 2, 3)) > 0).all()


def test_reference_masks_cover_as_much_as_the_tf_op() -> None:
    """Same patch counts and sizes: mean mask coverage of 64 images within 25% of the op's."""
    corruption = import_benchmark("corruption")
    images = np.random.default_rng(0).random((64, 32, 32, 1), dtype=np.float32)
    ours = corruption.reference_corruption(images, CFG, np.random.default_rng(2))[2]
    theirs = elastic_patch_corruption(images, tf.constant([3, 4]), CFG)[2].numpy()
    assert ours.mean() == pytest.approx(theirs.mean(), rel=0.25)


def test_reference_falls_back_on_a_flat_image() -> None:
    """Elastic deformation cannot change a flat image: the brightness fallback must."""
    corruption = import_benchmark("corruption")
    flat = np.full((2, 32, 32, 1), 0.7, np.float32)
    x_hat, x, mask = corruption.reference_corruption(flat, CFG, np.random.default_rng(3))
    np.testing.assert_allclose(x_hat, x - corruption.FALLBACK_SHIFT * mask, atol=1e-6)
    assert (mask.max(axis=(1, 2, 3)) == 1.0).all()


def test_figures_are_read_back_from_printed_text() -> None:
    bench = import_benchmark("__main__")
    knn_text = (
        "bank 50000 x 64, 5000 queries, chunk 4096\n"
        "  reconad chunked TF kNN :    0.250 s\n"
        "  sklearn brute force    :    0.750 s\n"
        "  speed-up               :     3.00 x\n"
        "  max |difference|       : 4.77e-07\n"
        "peak extra resident memory of one search (5000 queries, dim 64):\n"
        "      bank  bank MiB  Q x M matrix MiB  ours MiB  ours - bank  sklearn MiB\n"
        "     10000       2.4             190.7      20.5         18.1        200.0\n"
    )
    mc_text = "batched / deterministic:    6.5x  (goal <= 8x)\nnaive / batched:    4.0x\n"

    knn = bench.parse_figures(knn_text, bench.KNN_FIGURES)
    mc = bench.parse_figures(mc_text, bench.MC_DROPOUT_FIGURES)

    assert knn == {
        "reconad_s": 0.25,
        "sklearn_s": 0.75,
        "speedup": 3.0,
        "max_abs_difference": 4.77e-07,
    }
    assert mc["batched_over_deterministic"] == 6.5
    assert mc["naive_over_batched"] == 4.0
    assert mc["deterministic_ms"] is None
    assert bench.parse_knn_memory(knn_text) == [
        dict(zip(bench.KNN_MEMORY_COLUMNS, [10000, 2.4, 190.7, 20.5, 18.1, 200.0], strict=True))
    ]


def two_convs(first_trainable: bool) -> keras.Model:
    """3x3 convolutions 2 -> 4 -> 3 channels, the first one frozen or not."""
    inputs = keras.Input((None, None, 2))
    first = keras.layers.Conv2D(4, 3, padding="same", trainable=first_trainable)
    outputs = keras.layers.Conv2D(3, 3, padding="same")(first(inputs))
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("first_trainable", [True, False])
def test_training_step_flops_match_the_convolution_formula(first_trainable: bool) -> None:
    """Forward ``2 x H x W x k^2 x C_in x C_out`` per conv and image; a training step adds
    the kernel gradient of each trainable conv and the input gradient of the second conv
    only (nothing upstream of the first conv, or of a frozen one, needs a gradient)."""
    training = import_benchmark("training")
    batch, side = 2, 8
    first = 2 * batch * side * side * 9 * 2 * 4
    second = 2 * batch * side * side * 9 * 4 * 3
    x = tf.zeros((batch, side, side, 2))
    y = tf.zeros((batch, side, side, 3))

    forward, step = training.step_flops(
        two_convs(first_trainable), keras.losses.MeanSquaredError(), x, y
    )

    assert forward == first + second
    assert step == (2 * first + 3 * second if first_trainable else first + 2 * second)


def test_matmul_flops_of_a_dense_layer() -> None:
    training = import_benchmark("training")
    inputs = keras.Input((5,))
    model = keras.Model(inputs, keras.layers.Dense(7)(inputs))

    forward, step = training.step_flops(
        model, keras.losses.MeanSquaredError(), tf.zeros((3, 5)), tf.zeros((3, 7))
    )

    assert forward == 2 * 3 * 5 * 7
    assert step == 2 * forward


def test_reference_matmul_side_does_about_the_step_work() -> None:
    training = import_benchmark("training")
    assert training.matmul_side(2 * 1024**3) == 1024
    assert training.matmul_side(1.0) == training.MATMUL_SIDE_RANGE[0]
    assert training.matmul_side(1e15) == training.MATMUL_SIDE_RANGE[1]


def tiny_bench_params(directory: Path) -> Path:
    """Every family at 64 px, thin networks, a random VGG16 backbone, a 4-image bank."""
    return write_params(
        directory,
        dataset__image_size=64,
        dataset__textures={"train": 4, "val": 2, "test_good": 2, "test_defect": 2},
        sdc_ae__schedule=[{"crop": 32, "epochs": 1}],
        aesc__width=0.125,
        patch_ae__backbone="random",
        score__aesc={"map": "residual", "p": 2.0, "mc_passes": 2},
    )


@pytest.mark.slow
def test_training_benchmark_reports_positive_figures(tmp_path: Path) -> None:
    training = import_benchmark("training")
    figures = training.run(tiny_bench_params(tmp_path), steps=1)

    rows = {row["variant"]: row for row in figures["variants"]}
    assert list(rows) == list(training.VARIANTS)
    assert [rows[name]["crop"] for name in training.VARIANTS] == [32, 64, 64]
    for row in rows.values():
        for key in ("ms_per_step", "images_per_s", "forward_gflop", "gflop_per_s"):
            assert row[key] > 0, (row["variant"], key)
        assert row["step_over_matmul"] > 0
        assert row["images_per_s"] == pytest.approx(row["batch"] * 1e3 / row["ms_per_step"])
    assert 2.5 < rows["sdc_restore"]["step_over_forward"] <= 3.0
    assert rows["patch_ae"]["step_over_forward"] < 1.5  # the frozen backbone has no backward
    assert "step/matmul" in training.format_figures(figures)


@pytest.mark.slow
def test_inference_benchmark_reports_positive_figures(tmp_path: Path) -> None:
    inference = import_benchmark("inference")
    figures = inference.run(tiny_bench_params(tmp_path), large_batch=2, repeats=1)

    rows = {row["variant"]: row for row in figures["variants"]}
    assert list(rows) == list(inference.VARIANTS)
    assert rows["patch_ae"]["memory_bank"] == 4 * (64 // 8) ** 2
    assert rows["patch_ae"]["maps"] == ["knn"]
    assert rows["aesc_stain"]["maps"] == ["residual", "uncertainty"]
    for row in rows.values():
        for path in ("detector", "network"):
            single = row[f"{path}_ms_batch1"]
            per_image = row[f"{path}_ms_per_image_large"]
            assert single > 0 and per_image > 0, (row["variant"], path)
            assert row[f"{path}_large_over_batch1"] == pytest.approx(per_image / single)
    assert "b2/b1" in inference.format_figures(figures)


def test_sdc_branch_is_sdc_ae_and_ensemble_stages_plus_report() -> None:
    pipeline = import_benchmark("pipeline")
    names = {
        "fetch",
        "prepare",
        "train_sdc_ae@sdc_restore-brick",
        "evaluate_sdc_ae@sdc_contrast-grass",
        "train_aesc@aesc_stain-brick",
        "calibrate_patch_ae@patch_ae-brick",
        "calibrate_ensemble@sdc_ensemble-brick",
        "evaluate_ensemble@sdc_ensemble-brick",
        "report",
    }
    assert pipeline.sdc_branch(names) == {
        "train_sdc_ae@sdc_restore-brick",
        "evaluate_sdc_ae@sdc_contrast-grass",
        "calibrate_ensemble@sdc_ensemble-brick",
        "evaluate_ensemble@sdc_ensemble-brick",
        "report",
    }


@pytest.mark.slow
def test_pipeline_benchmark_reruns_the_sdc_branch() -> None:
    """One category: 3 + (2 SDC-AE x 3 + AESc 3 + Patch AE 3 + ensemble 2) stages."""
    pipeline = import_benchmark("pipeline")
    figures = pipeline.measure_scratch(REPO, repeats=1, categories=["brick"])

    assert figures["stages"] == figures["first_repro_ran"] == 3 + 2 * 3 + 3 + 3 + 2
    assert figures["noop_ran"] == [] and figures["noop_kept_lock"]
    assert figures["lambda_rerun_is_sdc_branch"]
    assert figures["lambda_rerun"] == sorted(
        [
            f"{kind}_sdc_ae@{variant}-brick"
            for kind in ("train", "calibrate", "evaluate")
            for variant in ("sdc_restore", "sdc_contrast")
        ]
        + ["calibrate_ensemble@sdc_ensemble-brick", "evaluate_ensemble@sdc_ensemble-brick"]
        + ["report"]
    )
    assert figures["noop_repro_s"] > 0 and figures["full_stub_repro_s"] > 0
    assert figures["noop_over_full"] == figures["noop_repro_s"] / figures["full_stub_repro_s"]
    assert "exactly the SDC branch + report: yes" in pipeline.format_figures(
        {"scratch": figures, "workspace": {"skipped": "test"}}
    )


@pytest.mark.slow
def test_workspace_repro_is_timed_only_when_up_to_date(tmp_path: Path) -> None:
    """A stub project stands in for the workspace: skipped before its first repro."""
    pipeline = import_benchmark("pipeline")
    dvc_stub = import_benchmark("dvc_stub")
    params = repo_params()
    params["dataset"]["categories"] = ["brick"]
    params["run"] = {"sdc_ae": ["sdc_restore"], "aesc": [], "patch_ae": [], "ensemble": []}
    project = dvc_stub.new_project(tmp_path / "project", REPO_DVC_YAML, params)
    dvc_stub.stub_pipeline(project, dvc_stub.resolved_stages(project))

    skipped = pipeline.measure_workspace(project, reference_s=1.0, repeats=1)
    assert skipped["noop_repro_s"] is None
    assert skipped["skipped"].startswith("not up to date (6 stages to run")
    assert not (project / "dvc.lock").exists()

    dvc_stub.dvc(project, "repro")
    timed = pipeline.measure_workspace(project, reference_s=2.0, repeats=1)
    assert timed["skipped"] is None
    assert timed["stages"] == 6
    assert timed["noop_ran"] == [] and timed["noop_kept_lock"]
    assert timed["noop_over_full_stub"] == timed["noop_repro_s"] / 2.0


def _patch_category(size: int = 32) -> CategoryData:
    """Noise images; the defective half carries a bright square the bank has never seen."""
    rng = np.random.default_rng(11)
    train = rng.random((6, size, size, 1), dtype=np.float32) * 0.5
    test = rng.random((8, size, size, 1), dtype=np.float32) * 0.5
    masks = np.zeros((8, size, size), bool)
    masks[4:, 8:20, 8:20] = True
    test[masks] = 1.0
    labels = np.array([0] * 4 + [1] * 4)
    defects = ["good"] * 4 + ["square"] * 4
    return CategoryData(
        category="noise",
        color="grey",
        image_size=size,
        train=train,
        val=train[:2],
        test=test,
        test_labels=labels,
        test_masks=masks,
        test_names=[f"test/{kind}/{i:03d}.png" for i, kind in enumerate(defects)],
        test_defects=defects,
        train_names=[f"train/good/{i:03d}.png" for i in range(6)],
        val_names=["train/good/val_000.png", "train/good/val_001.png"],
    )


def _patch_detector(data: CategoryData, model_dir: Path) -> PatchAeDetector:
    """A random-backbone Patch AE with its bank stored and loaded as training leaves it."""
    params = Params(
        dataset=DatasetConfig(categories=[data.category], image_size=data.image_size),
        patch_ae=PatchAeConfig(backbone="random", compressed_channels=4, decoder_channels=8),
    )
    keras.utils.set_random_seed(3)
    method = PatchAe(params, channels=1)
    model = method.build()
    method.after_training(model, data.train, model_dir)
    detector = method.load_detector(model, model_dir)
    assert isinstance(detector, PatchAeDetector)
    return detector


def test_coreset_benchmark_compares_the_stored_bank_with_its_coreset(tmp_path: Path) -> None:
    coreset = import_benchmark("coreset")
    data = _patch_category()
    detector = _patch_detector(data, tmp_path)
    full_vectors = len(detector.bank)

    row = coreset.compare_banks(detector, data, fraction=0.25, projection_dim=0, seed=0)

    assert row["full"]["vectors"] == full_vectors == 6 * (32 // 8) ** 2
    assert row["coreset"]["vectors"] == round(0.25 * full_vectors)
    for bank in ("full", "coreset"):
        assert 0.0 <= row[bank]["image_auroc"] <= 1.0
        assert 0.0 <= row[bank]["pixel_auroc"] <= 1.0
        assert row[bank]["scoring_s"] > 0
    assert row["image_auroc_difference"] == pytest.approx(
        row["coreset"]["image_auroc"] - row["full"]["image_auroc"]
    )
    whole = coreset.compare_banks(detector, data, fraction=1.0, projection_dim=0, seed=0)
    # The same vectors in selection order: distances agree up to float rounding.
    assert whole["image_auroc_difference"] == pytest.approx(0.0, abs=1e-5)
    assert whole["pixel_auroc_difference"] == pytest.approx(0.0, abs=1e-5)
    assert "speed-up" in coreset.format_table([row, whole])


def test_coreset_benchmark_skips_categories_without_a_trained_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    coreset = import_benchmark("coreset")
    rows = coreset.run(
        REPO / "params.yaml", "patch_ae", ["brick"], 0.1, models_root=tmp_path / "models"
    )
    assert rows == []
    assert "brick: skipped, no trained model" in capsys.readouterr().out
