"""``reconad <stage>``: one thin subcommand per pipeline stage, plus ``predict``.

Each subcommand reads ``params.yaml`` (``--params``) into a validated config and calls
one function. Errors the user can fix print one line and exit 1; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from reconad.runtime import configure_environment

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
log = logging.getLogger("reconad")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_environment()
    try:
        with terminate_as_interrupt():
            args.handler(args)
    except KeyboardInterrupt:
        print("reconad: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if args.debug:
            raise
        if raised_by_interrupt(exc):
            print("reconad: interrupted; run the same command again to resume", file=sys.stderr)
            return EXIT_INTERRUPTED
        print(f"reconad: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    return 0


def raised_by_interrupt(exc: BaseException) -> bool:
    """True when ``exc`` comes from handling Ctrl-C or SIGTERM.

    A library's clean-up can fail after the interrupt and replace it with its own error.
    For example, MLflow's SQLite store reports "database is locked" when the interrupt
    cut a write short. That is still an interruption.
    """
    pending, seen = [exc], set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        if isinstance(current, KeyboardInterrupt):
            return True
        seen.add(id(current))
        pending += [current.__cause__, current.__context__]
    return False


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Unwind on SIGTERM (``kill``, a scheduler, a stopped job) as on Ctrl-C.

    Temporary outputs are then removed and the MLflow run is closed instead of the process
    vanishing mid-write; the epoch checkpoints survive either way.
    """
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def one_line(exc: BaseException) -> str:
    """The message of a user error, or the type and first line of an unexpected one."""
    from reconad.errors import ReconadError

    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, ReconadError):
        return text
    return f"{type(exc).__name__}: {text} (run with --debug for the traceback)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reconad", description=__doc__, parents=[common_options(Path("params.yaml"), False)]
    )
    stages = parser.add_subparsers(dest="stage", required=True)
    # The options are accepted after the stage name too. A stage's copy has no default,
    # so it cannot reset a value given before the stage name.
    after_stage = common_options(argparse.SUPPRESS, argparse.SUPPRESS)

    def stage(name: str, handler: Callable[[argparse.Namespace], None], help_text: str):
        sub = stages.add_parser(name, parents=[after_stage], help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    stage("fetch", run_fetch, "build, download or locate the dataset (data/raw)")
    prepare = stage(
        "prepare", run_prepare, "validate, resize and split the dataset (data/prepared)"
    )
    prepare.add_argument(
        "--category",
        action="append",
        help="prepare only this category (repeatable; default: every one in dataset.categories)",
    )
    for name, handler, text in (
        ("train", run_train, "train one variant on one category"),
        ("calibrate", run_calibrate, "choose thresholds on validation normals"),
        ("evaluate", run_evaluate, "score the test split and compute the metrics"),
    ):
        sub = stage(name, handler, text)
        sub.add_argument("--variant", required=True)
        sub.add_argument("--category", required=True)
    stage("report", run_report, "gather metrics, plots and the HTML/Markdown report")
    stage("metrics", run_metrics, "print reports/metrics.json as a table")
    describe = stage(
        "describe", run_describe, "what each variant in `run` sees and how long it trains"
    )
    describe.add_argument(
        "-S",
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a params key, as dvc exp run -S does (e.g. -S profile=paper)",
    )
    predict = stage("predict", run_predict, "score new images with a trained model")
    predict.add_argument("--model", type=Path, required=True, help="models/<variant>/<category>")
    predict.add_argument("--input", type=Path, required=True, help="an image or a folder")
    predict.add_argument("--output", type=Path, required=True, help="folder for maps and JSON")
    predict.add_argument(
        "--maps-format",
        choices=("png", "tiff", "npy"),
        default="png",
        help="anomaly maps as a coloured PNG, or float32 scores (TIFF/NPY) at the image's size",
    )
    return parser


def common_options(params_default: object, debug_default: object) -> argparse.ArgumentParser:
    """``--params`` and ``--debug``, shared by ``reconad`` and every stage."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", type=Path, default=params_default, help="params file")
    common.add_argument(
        "--debug", action="store_true", default=debug_default, help="show tracebacks"
    )
    return common


def load(args: argparse.Namespace, variant: str | None = None, uses_tensorflow: bool = False):
    """Validated params; stages that run TensorFlow also get its seeds fixed."""
    from reconad.config import load_params
    from reconad.runtime import seed_everything

    params = load_params(args.params, variant=variant)
    if uses_tensorflow:
        seed_everything(params.seed)
    return params


def run_fetch(args: argparse.Namespace) -> None:
    from reconad import paths
    from reconad.data.fetch import fetch_dataset

    fetch_dataset(load(args), paths.RAW_DIR, downloads_dir=paths.DOWNLOADS_DIR)


def run_prepare(args: argparse.Namespace) -> None:
    from reconad import paths
    from reconad.data.prepare import prepare_dataset

    prepare_dataset(load(args), paths.RAW_DIR, paths.PREPARED_DIR, args.category)


def run_train(args: argparse.Namespace) -> None:
    params = load(args, args.variant, uses_tensorflow=True)
    from reconad.train import train

    result = train(params, args.variant, args.category)
    log.info(
        "trained %s/%s: %d epochs%s -> %s",
        args.variant,
        args.category,
        result.epochs_run,
        " (stopped by train.max_minutes)" if result.time_budget_reached else "",
        result.model_dir,
    )


def run_calibrate(args: argparse.Namespace) -> None:
    params = load(args, args.variant, uses_tensorflow=True)
    from reconad.calibrate import calibrate_model

    calibrate_model(params, args.variant, args.category)


def run_evaluate(args: argparse.Namespace) -> None:
    params = load(args, args.variant, uses_tensorflow=True)
    from reconad.evaluate import evaluate

    summary = evaluate(params, args.variant, args.category)
    primary = summary[summary["primary"]]
    log.info(
        "%s/%s: image AUROC %.3f, pixel AUROC %.3f, AUPRO %.3f",
        args.variant,
        args.category,
        primary["image_auroc"],
        primary["pixel_auroc"],
        primary["aupro"],
    )


def run_report(args: argparse.Namespace) -> None:
    from reconad import paths
    from reconad.report import build_report

    build_report(load(args), paths.EVAL_DIR, paths.REPORTS_DIR)


def run_metrics(args: argparse.Namespace) -> None:
    from reconad import paths
    from reconad.report import METRICS_JSON, format_metrics

    print(format_metrics(paths.REPORTS_DIR / METRICS_JSON))


def run_describe(args: argparse.Namespace) -> None:
    from reconad.config import params_from_dict, raw_params
    from reconad.train import describe_variant

    raw = raw_params(args.params, args.set)
    params = params_from_dict(raw, None, args.params)
    for names in params.run.values():
        for variant in names:
            print(describe_variant(params_from_dict(raw, variant, args.params), variant))


def run_predict(args: argparse.Namespace) -> None:
    from reconad.predict import predict

    for line in predict(args.model, args.input, args.output, args.maps_format):
        print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
