"""Every registered benchmark runs on a tiny configuration and returns rows whose ratios are
taken against a reference measured in the same run; the reference corruption does what
the TF op does, the training benchmark counts FLOPs right, the pipeline benchmark re-runs
exactly the SDC branch of the DAG DVC resolves, and ``python -m benchmarks`` reads the
figures the other scripts print.

No speed is asserted here: on a shared machine a timing test would be flaky. ``make bench``
measures. Family and stage counts come from ``reconad.models.FAMILIES`` and from the DAG
DVC resolves, never from fixed numbers.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf
from benchmarks.dvc_stub import stage_family

from faults_support import write_params
from pipeline_fixtures import REPO_DVC_YAML, repo_params
from reconad.config import Params, load_params
from reconad.corrupt.elastic import ElasticConfig, ElasticOp, elastic_patch_corruption
from reconad.data.fetch import fetch_dataset
from reconad.data.layout import CategoryData, load_split
from reconad.data.prepare import prepare_dataset
from reconad.models import FAMILIES, block_owner, method_class
from reconad.models.base import TrainedMethod
from reconad.models.trained import load_trained
from reconad.train import as_seen_by, make_method, save_model

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / "benchmarks"
HELPERS = {"__init__", "__main__", "common", "dvc_stub"}
"""Modules of ``benchmarks/`` that are not benchmarks themselves."""

CATEGORY = "brick"
SIZE = 32
CFG = ElasticOp.at_size(
    ElasticConfig(
        patches_min=1,
        patches_max=4,
        size_min_px=38.4,
        size_max_px=89.6,
        modes=["elastic"],
        sigma_px=32.0,
        displacement_px=16.0,
        mask_sigma_px=32.0,
        mask_displacement_px=6.4,
        brightness=0.0,
    ),
    SIZE,
)
"""Patches of 5-11 px, a field of sigma 4 px moving pixels by 2 px RMS, at 32 px."""

TINY_BENCH = {
    "sdc_ae__train__batch_size": 2,
    "aesc__network__width": 0.5,
    "aesc__network__filters": [8, 16, 32],
    "aesc__network__dropout": [0.0, 0.1, 0.2],
    "aesc__train__batch_size": 2,
    "aesc__train__phases": [{"crop": 0, "epochs": 1}],
    "aesc__score__mc_passes": 2,
    "patch_ae__network__backbone": "vgg16",
    "patch_ae__network__weights": "random",
    "patch_ae__network__compressed_channels": 8,
    "patch_ae__network__decoder_channels": 8,
    "patch_ae__train__batch_size": 2,
    "patch_ae__train__phases": [{"crop": 0, "epochs": 1}],
    "patch_ae__bank__coreset_fraction": 0.5,
    "patchcore__network__backbone": "vgg16",
    "patchcore__network__weights": "random",
    "patchcore__bank__coreset_fraction": 0.5,
}
"""On top of ``faults_support.TINY`` (32 px, 8 training images of ``brick``): every family
thin enough to build and step in about a second on a CPU; an untrained VGG16 backbone."""


def import_benchmark(name: str) -> ModuleType:
    """``benchmarks.<name>`` imported as ``python -m benchmarks`` does, from the repo root
    (pytest's ``pythonpath`` puts it on ``sys.path``)."""
    return importlib.import_module(f"benchmarks.{name}")


bench = import_benchmark("__main__")


# A tiny project shared by the registry tests: params, prepared data, one Patch AE model.


@dataclass(frozen=True)
class TinyProject:
    root: Path
    params_path: Path
    params: Params
    options: Any
    """``benchmarks.__main__.Options`` sized for seconds per benchmark."""


def save_untrained_model(params: Params, variant: str, prepared: Path, out_dir: Path) -> None:
    """``out_dir/model`` as ``reconad train`` leaves it, with freshly built weights: the
    family's state (a memory bank) fitted by ``after_training``, the network and its
    description saved by ``reconad.train.save_model``."""
    data = load_split(prepared)
    method = make_method(params, variant, data.channels)
    model = method.build()
    model_dir = out_dir / "model"
    model_dir.mkdir(parents=True)
    method.after_training(model, as_seen_by(method, data), model_dir)
    save_model(model, method, data, "no-run", 0.0, model_dir)


@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory: pytest.TempPathFactory) -> TinyProject:
    root = tmp_path_factory.mktemp("bench")
    params_path = write_params(root, **TINY_BENCH)
    shutil.copy(REPO_DVC_YAML, root / "dvc.yaml")
    params = load_params(params_path)
    fetch_dataset(params, root / "raw")
    prepare_dataset(params, root / "raw", root / "prepared")
    keras.utils.set_random_seed(3)
    patch_variant = "patch_ae"
    save_untrained_model(
        load_params(params_path, patch_variant),
        patch_variant,
        root / "prepared" / CATEGORY,
        root / "models" / patch_variant / CATEGORY,
    )
    options = bench.Options(
        params=params_path,
        workspace=root,  # not a DVC project: the workspace repro is skipped
        batches=1,
        train_steps=1,
        large_batch=2,
        inference_repeats=1,
        mc_dropout_flags=("--size", str(SIZE), "--batch", "2", "--passes", "3"),
        knn_flags=("--bank", "4000", "--queries", "1000", "--dim", "16", "--memory-banks"),
        coreset_variant=patch_variant,
        models_root=root / "models",
        prepared_root=root / "prepared",
        categories=(CATEGORY,),
        pipeline_repeats=1,
    )
    return TinyProject(root, params_path, params, options)


def run_script_in_process(name: str, flags: tuple[str, ...]) -> str:
    """What ``python -m benchmarks.<name> flags`` prints, run in this process: the subprocess
    ``python -m benchmarks`` starts would spend most of its time importing TensorFlow."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        import_benchmark(name).main(list(flags))
    return printed.getvalue()


@pytest.fixture(scope="module")
def figures_of(tiny_project: TinyProject) -> Callable[[str], Any]:
    """Each registered benchmark's figures on the tiny project, measured once per module."""
    cache: dict[str, Any] = {}

    def figures(name: str) -> Any:
        if name not in cache:
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(bench, "run_script", run_script_in_process)
                cache[name] = bench.BENCHMARKS[name].run(tiny_project.options)
        return cache[name]

    return figures


def test_every_benchmark_script_is_registered() -> None:
    scripts = {path.stem for path in BENCH_DIR.glob("*.py")} - HELPERS
    assert set(bench.BENCHMARKS) == scripts


@pytest.mark.slow
def test_printing_benchmarks_run_as_modules_from_any_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``make bench`` starts ``knn`` (and its memory children) and ``mc_dropout`` as
    ``python -m benchmarks.<name>``: they import ``benchmarks.common``, which only the
    repository folder provides."""
    monkeypatch.chdir(tmp_path)
    text = bench.run_script(
        "knn", ("--bank", "2000", "--queries", "200", "--dim", "8", "--memory-banks", "1000")
    )
    figures = bench.parse_figures(text, bench.KNN_FIGURES)
    assert all(positive(value) for value in figures.values()), figures
    assert len(bench.parse_knn_memory(text)) == 1


def positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


SLOW_BENCHMARKS = {"pipeline"}
"""Benchmarks that stay slow at any size: ``pipeline`` runs DVC on every stage of the DAG."""


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=[pytest.mark.slow] if name in SLOW_BENCHMARKS else [])
        for name in bench.BENCHMARKS
    ],
)
def test_registered_benchmark_returns_ratios_against_a_same_run_reference(
    name: str, figures_of: Callable[[str], Any]
) -> None:
    """Run on tiny sizes, every row has its reference timings and its ratios, each ratio
    being the quotient of two figures of the same row (printed figures are read back with
    their rounding: 2%)."""
    benchmark = bench.BENCHMARKS[name]
    figures = figures_of(name)

    rows = benchmark.rows(figures)
    assert rows, f"{name}: no rows"
    for row in rows:
        for field in benchmark.reference:
            assert positive(row.get(field)), (name, field, row.get(field))
        for ratio in benchmark.ratios:
            numerator, denominator = row.get(ratio.numerator), row.get(ratio.denominator)
            assert positive(numerator) and positive(denominator), (name, ratio, row)
            assert row.get(ratio.field) == pytest.approx(numerator / denominator, rel=0.02), (
                name,
                ratio,
            )
    assert isinstance(benchmark.text(figures), str)


def test_run_all_prints_and_collects_the_figures_of_the_benchmarks_asked_for(
    tiny_project: TinyProject,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ran: list[Any] = []

    def fake(name: str) -> Any:
        def run(options: Any) -> dict[str, Any]:
            ran.append((name, options))
            return {"rows": [{"measured": 2.0, "reference": 1.0, "ratio": 2.0}]}

        return bench.Benchmark(
            title=f"{name} title",
            run=run,
            text=lambda figures: f"{name} text",
            rows=lambda figures: figures["rows"],
            ratios=(bench.Ratio("ratio", "measured", "reference"),),
            reference=("reference",),
        )

    monkeypatch.setattr(bench, "BENCHMARKS", {"first": fake("first"), "second": fake("second")})

    results = bench.run_all(tiny_project.options, ["second"])

    assert ran == [("second", tiny_project.options)]
    assert set(results) == {"machine_at_start", "second", "load_average_at_end", "seconds"}
    assert "== second: second title\nsecond text\n" in capsys.readouterr().out
    assert set(bench.run_all(tiny_project.options)) >= {"first", "second"}
    with pytest.raises(ValueError, match="unknown benchmark"):
        bench.run_all(tiny_project.options, ["nope"])


def test_training_benchmark_runs_one_variant_per_training_family(
    tiny_project: TinyProject, figures_of: Callable[[str], Any]
) -> None:
    training = import_benchmark("training")
    figures = figures_of("training")

    rows = {row["variant"]: row for row in figures["variants"]}
    trained = [f for f in FAMILIES if issubclass(method_class(f), TrainedMethod)]
    assert [row["family"] for row in rows.values()] == trained
    assert list(rows) == list(training.default_variants(tiny_project.params))
    for name, row in rows.items():
        method = make_method(load_params(tiny_project.params_path, name), name, 1)
        assert row["crop"] == training.training_crop(method)
        assert row["batch"] == method.fit_config().batch_size
        for key in ("ms_per_step", "images_per_s", "forward_gflop", "gflop_per_s"):
            assert row[key] > 0, (name, key)
        assert row["images_per_s"] == pytest.approx(row["batch"] * 1e3 / row["ms_per_step"])
        assert row["precision"] == "none"  # train.mixed_precision
    assert rows["sdc_restore"]["crop"] == SIZE  # sdc_ae.train.phases: crop 32
    assert rows["aesc_stain"]["crop"] == SIZE  # crop 0: the whole image
    assert 2.5 < rows["sdc_restore"]["step_over_forward"] <= 3.0
    assert rows["patch_ae"]["step_over_forward"] < 1.5  # the frozen backbone has no backward
    assert "step/matmul" in training.format_figures(figures)


def test_training_benchmark_times_each_precision_against_the_first(
    tiny_project: TinyProject,
) -> None:
    training = import_benchmark("training")
    figures = training.run(
        tiny_project.params_path, 1, ["sdc_restore"], seed=0, precisions=["none", "bfloat16"]
    )
    none, bf16 = figures["variants"]
    assert (none["precision"], bf16["precision"]) == ("none", "bfloat16")
    assert none["time_over_first"] == 1.0
    assert bf16["time_over_first"] == pytest.approx(bf16["ms_per_step"] / none["ms_per_step"])
    assert "time/first" in training.format_figures(figures)
    assert keras.config.dtype_policy().name == "float32"


def test_inference_benchmark_scores_every_family_but_the_ensemble(
    tiny_project: TinyProject, figures_of: Callable[[str], Any]
) -> None:
    inference = import_benchmark("inference")
    figures = figures_of("inference")

    rows = {row["variant"]: row for row in figures["variants"]}
    assert [row["family"] for row in rows.values()] == [f for f in FAMILIES if f != "ensemble"]
    assert list(rows) == list(inference.default_variants(tiny_project.params))
    textures = tiny_project.params.dataset.textures.train
    stride = tiny_project.params.family("patch_ae").network.stride
    assert rows["patch_ae"]["memory_bank"] == round(0.5 * textures * (SIZE // stride) ** 2)
    assert rows["patch_ae"]["maps"] == ["knn"]
    assert rows["aesc_stain"]["maps"] == ["residual", "uncertainty"]
    assert rows["sdc_restore"]["memory_bank"] == 0
    assert "b2/b1" in inference.format_figures(figures)


def test_corruption_benchmark_crops_the_first_and_last_phases(
    tiny_project: TinyProject, figures_of: Callable[[str], Any]
) -> None:
    figures = figures_of("corruption")

    assert [row["crop"] for row in figures["crops"]] == [SIZE]
    assert figures["batch_size"] == TINY_BENCH["sdc_ae__train__batch_size"]
    assert figures["image_size"] == SIZE
    assert "tf.data/ref" in import_benchmark("corruption").format_figures(figures)


@pytest.mark.parametrize("channels", [1, 3])
def test_reference_output_is_shaped_like_the_tf_op(channels: int) -> None:
    corruption = import_benchmark("corruption")
    images = np.random.default_rng(0).random((2, SIZE, SIZE, channels), dtype=np.float32)
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
    images = np.random.default_rng(0).random((64, SIZE, SIZE, 1), dtype=np.float32)
    ours = corruption.reference_corruption(images, CFG, np.random.default_rng(2))[2]
    theirs = elastic_patch_corruption(images, tf.constant([3, 4]), CFG)[2].numpy()
    assert ours.mean() == pytest.approx(theirs.mean(), rel=0.25)


def test_reference_patch_sides_are_pixels_of_the_image() -> None:
    """``ElasticOp`` sides are pixels (``size_*_px`` rescaled), not shares of the crop."""
    corruption = import_benchmark("corruption")
    rng = np.random.default_rng(5)
    sides = [corruption._draw_box(SIZE, SIZE, CFG, rng)[2] for _ in range(200)]
    assert min(sides) >= round(CFG.size_min) and max(sides) <= round(CFG.size_max)
    assert CFG.size_min == pytest.approx(38.4 * SIZE / 256)


def test_reference_falls_back_on_a_flat_image() -> None:
    """Elastic deformation cannot change a flat image: the brightness fallback must."""
    corruption = import_benchmark("corruption")
    flat = np.full((2, SIZE, SIZE, 1), 0.7, np.float32)
    x_hat, x, mask = corruption.reference_corruption(flat, CFG, np.random.default_rng(3))
    np.testing.assert_allclose(x_hat, x - corruption.FALLBACK_SHIFT * mask, atol=1e-6)
    assert (mask.max(axis=(1, 2, 3)) == 1.0).all()


def test_figures_are_read_back_from_printed_text() -> None:
    knn_text = (
        "bank 50000 x 64, 5000 queries, chunk 4096\n"
        "  reconad chunked TF kNN :   0.250000 s\n"
        "  sklearn brute force    :   0.750000 s\n"
        "  speed-up               :     3.000 x\n"
        "  max |difference|       : 4.77e-07\n"
        "peak extra resident memory of one search (5000 queries, dim 64):\n"
        "      bank  bank MiB  Q x M matrix MiB  ours MiB  ours - bank  sklearn MiB\n"
        "     10000       2.4             190.7      20.5         18.1        200.0\n"
    )
    mc_text = "batched / deterministic:    6.50x  (goal <= 8x)\nnaive / batched:    4.00x\n"

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


def test_nested_rows_are_flattened_for_their_ratio_fields() -> None:
    row = {"category": "brick", "full": {"scoring_s": 2.0}, "coreset": {"scoring_s": 1.0}}
    assert bench.flat(row) == {
        "category": "brick",
        "full_scoring_s": 2.0,
        "coreset_scoring_s": 1.0,
    }


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


# The pipeline benchmark: stage sets derived from FAMILIES and the resolved DAG.


def test_every_family_is_switched_on_with_the_ensemble_members() -> None:
    pipeline = import_benchmark("pipeline")
    variants = repo_params()["variants"]

    selection = pipeline.every_family(variants)

    assert list(selection) == list(FAMILIES)
    for family, names in selection.items():
        assert names, family
        assert all(variants[name]["method"] == family for name in names)
    for ensemble in selection["ensemble"]:
        for member in variants[ensemble]["members"]:
            assert member in selection[variants[member]["method"]]


def stage(deps: list[str], outs: list[str]) -> Any:
    dvc_stub = import_benchmark("dvc_stub")
    output = dvc_stub.Output(cache=True, metric=False, plot=False)
    return dvc_stub.StageView(
        cmd="stub", deps=frozenset(deps), params=frozenset(), outs=dict.fromkeys(outs, output)
    )


def test_sdc_branch_is_the_loss_family_and_everything_downstream() -> None:
    """The ensemble depends on the whole of ``models``: it follows the SDC-AE models; the
    AESc and Patch AE stages, upstream or beside them, stay out."""
    pipeline = import_benchmark("pipeline")
    model, threshold = "models/sdc_restore/brick/model", "models/sdc_restore/brick/threshold.json"
    stages = {
        "fetch": stage([], ["data/raw"]),
        "prepare": stage(["data/raw"], ["data/prepared"]),
        "train_sdc_ae@sdc_restore-brick": stage(["data/prepared/brick"], [model]),
        "calibrate_sdc_ae@sdc_restore-brick": stage([model], [threshold]),
        "evaluate_sdc_ae@sdc_restore-brick": stage(
            [model, threshold], ["reports/eval/sdc_restore/brick"]
        ),
        "train_aesc@aesc_stain-brick": stage(
            ["data/prepared/brick"], ["models/aesc_stain/brick/model"]
        ),
        "evaluate_aesc@aesc_stain-brick": stage(
            ["models/aesc_stain/brick/model"], ["reports/eval/aesc_stain/brick"]
        ),
        "train_ensemble@sdc_ensemble-brick": stage(
            ["models", "data/prepared/brick"], ["ensembles/sdc_ensemble/brick/model"]
        ),
        "evaluate_ensemble@sdc_ensemble-brick": stage(
            ["ensembles/sdc_ensemble/brick/model", "models"],
            ["reports/eval/sdc_ensemble/brick"],
        ),
        "report": stage(["reports/eval"], ["reports/report.md"]),
    }

    assert pipeline.sdc_branch(stages) == {
        "train_sdc_ae@sdc_restore-brick",
        "calibrate_sdc_ae@sdc_restore-brick",
        "evaluate_sdc_ae@sdc_restore-brick",
        "train_ensemble@sdc_ensemble-brick",
        "evaluate_ensemble@sdc_ensemble-brick",
        "report",
    }
    assert pipeline.stages_per_family(set(stages)) == {
        "": 3,
        "aesc": 2,
        "ensemble": 2,
        "sdc_ae": 3,
    }


def test_stage_names_give_kind_and_family() -> None:
    dvc_stub = import_benchmark("dvc_stub")
    assert dvc_stub.stage_family("train_ensemble@sdc_ensemble-brick") == ("train", "ensemble")
    assert dvc_stub.stage_family("calibrate_patch_ae@patch_ae-grass") == ("calibrate", "patch_ae")
    assert dvc_stub.stage_family("report") is None


@pytest.mark.slow
def test_pipeline_benchmark_reruns_the_sdc_branch(figures_of: Callable[[str], Any]) -> None:
    """Every family has train, calibrate and evaluate stages for each variant it runs; a
    ``loss.lambda`` change re-runs those of SDC-AE, of the ensemble of SDC-AE variants and
    the report, nothing else."""
    pipeline = import_benchmark("pipeline")
    figures = figures_of("pipeline")
    scratch = figures["scratch"]
    names = set(scratch["stage_names"])

    assert scratch["stages"] == scratch["first_repro_ran"] == len(names)
    assert set(scratch["families"]) == set(FAMILIES)
    for family, variants in scratch["families"].items():
        assert variants, family
        for variant in variants:
            for kind in ("train", "calibrate", "evaluate"):
                assert f"{kind}_{family}@{variant}-{CATEGORY}" in names
    matrix = sum(scratch["stages_per_family"][family] for family in FAMILIES)
    assert set(scratch["stages_per_family"]) - set(FAMILIES) == {""}
    assert matrix + scratch["stages_per_family"][""] == len(names)
    assert scratch["noop_ran"] == [] and scratch["noop_kept_lock"]
    assert scratch["lambda_rerun_is_sdc_branch"]
    # The ensembles of the scratch project combine SDC-AE variants only.
    variants = repo_params()["variants"]
    owner = block_owner("loss")
    for ensemble in scratch["families"]["ensemble"]:
        assert {variants[m]["method"] for m in variants[ensemble]["members"]} == {owner}
    branch = {name for name in names if (stage_family(name) or ("", ""))[1] in {owner, "ensemble"}}
    assert set(scratch["lambda_rerun"]) == branch | {"report"}
    assert figures["workspace"]["skipped"].startswith("`dvc status` failed")
    assert "exactly the SDC branch + report: yes" in pipeline.format_figures(figures)


@pytest.mark.slow
def test_workspace_repro_is_timed_only_when_up_to_date(tmp_path: Path) -> None:
    """A stub project stands in for the workspace: skipped before its first repro."""
    pipeline = import_benchmark("pipeline")
    dvc_stub = import_benchmark("dvc_stub")
    params = repo_params()
    params["dataset"]["categories"] = [CATEGORY]
    params["run"] = {family: [] for family in FAMILIES} | {"sdc_ae": ["sdc_restore"]}
    project = dvc_stub.new_project(tmp_path / "project", REPO_DVC_YAML, params)
    stages = dvc_stub.resolved_stages(project)
    dvc_stub.stub_pipeline(project, stages)

    skipped = pipeline.measure_workspace(project, reference_s=1.0, repeats=1)
    assert skipped["noop_repro_s"] is None
    assert skipped["skipped"].startswith(f"not up to date ({len(stages)} stages to run")
    assert not (project / "dvc.lock").exists()

    dvc_stub.dvc(project, "repro")
    timed = pipeline.measure_workspace(project, reference_s=2.0, repeats=1)
    assert timed["skipped"] is None
    assert timed["stages"] == len(stages)
    assert timed["noop_ran"] == [] and timed["noop_kept_lock"]
    assert timed["noop_over_full"] == timed["noop_repro_s"] / 2.0


# The coreset benchmark on a Patch AE model saved as training saves it.


def test_coreset_benchmark_compares_the_full_bank_with_its_coreset(
    tiny_project: TinyProject,
) -> None:
    coreset = import_benchmark("coreset")
    model_dir = tiny_project.options.models_root / "patch_ae" / CATEGORY
    params = load_params(tiny_project.params_path, "patch_ae")
    trained = load_trained(model_dir, params)
    data: CategoryData = load_split(tiny_project.options.prepared_root / CATEGORY)
    bank = params.family("patch_ae").bank
    stride = params.family("patch_ae").network.stride
    full_vectors = len(data.train) * (SIZE // stride) ** 2

    quarter = bank.model_copy(update={"coreset_fraction": 0.25, "coreset_projection": 0})
    row = coreset.compare_banks(trained, data, quarter, seed=0)

    assert row["full"]["vectors"] == full_vectors
    assert row["stored_vectors"] == round(0.5 * full_vectors)  # TINY_BENCH coreset_fraction
    assert row["coreset"]["vectors"] == round(0.25 * full_vectors)
    for which in ("full", "coreset"):
        assert 0.0 <= row[which]["image_auroc"] <= 1.0
        assert 0.0 <= row[which]["pixel_auroc"] <= 1.0
        assert row[which]["scoring_s"] > 0
    assert row["image_auroc_difference"] == pytest.approx(
        row["coreset"]["image_auroc"] - row["full"]["image_auroc"]
    )
    whole = coreset.compare_banks(
        trained, data, bank.model_copy(update={"coreset_fraction": 1.0}), seed=0
    )
    # The bank unthinned: the same scores.
    assert whole["coreset"]["vectors"] == full_vectors
    assert whole["image_auroc_difference"] == pytest.approx(0.0, abs=1e-5)
    assert whole["pixel_auroc_difference"] == pytest.approx(0.0, abs=1e-5)
    assert "speed-up" in coreset.format_table([row, whole])


def test_coreset_benchmark_defaults_to_the_params_bank(figures_of: Callable[[str], Any]) -> None:
    (row,) = figures_of("coreset")
    assert row["category"] == CATEGORY
    assert row["fraction"] == TINY_BENCH["patch_ae__bank__coreset_fraction"]
    assert row["coreset"]["vectors"] == row["stored_vectors"]


def test_coreset_benchmark_skips_categories_without_a_trained_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    coreset = import_benchmark("coreset")
    rows = coreset.run(
        REPO / "params.yaml", "patch_ae", [CATEGORY], 0.1, models_root=tmp_path / "models"
    )
    assert rows == []
    assert f"{CATEGORY}: skipped, no trained model" in capsys.readouterr().out
