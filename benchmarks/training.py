"""Training throughput per method family, and the FLOP/s it reaches against a plain matmul.

For each variant (default: the first variant ``params.yaml`` defines for every family
that trains, :func:`default_variants`; ``sdc_restore``, ``aesc_stain``, ``patch_ae`` in
the repository) at the active profile of ``params.yaml``: the real network
(``Method.build``), compiled as ``reconad train`` compiles it (Adam,
``<family>.train.learning_rate``, ``Method.loss``, ``train.jit_compile``), trained with
``train_on_batch`` on one fixed batch of ``Method.make_pairs`` output, under the
dtype policy of ``train.mixed_precision`` or of each ``--precision`` (batch
``<family>.train.batch_size``, crop = the family's largest training crop of
``method.fit_config().phases``, ``crop: 0`` being the whole image the network sees, one
channel like the textures dataset; Patch AE uses the offline ``hed_vgg16`` backbone,
frozen as in the quick profile). It prints ms/step, images/s and the FLOP/s of the step,
and the FLOP/s of a square float32 ``tf.linalg.matmul`` of about the same work measured
just before it.

FLOPs are counted from the TensorFlow graph of one training step (forward, loss and
``GradientTape`` gradients of the trainable weights, at the exact batch shape): every
Conv2D, Conv2DBackpropInput, Conv2DBackpropFilter and MatMul op counts ``2 x`` its
multiply-adds, from its tensor shapes. Element-wise work (batch norm, activations, the
loss, the Adam update) is not counted, so the FLOP/s is a lower bound. The count is exact
where the usual ``3 x forward`` rule is not: a frozen backbone has no backward pass and
the first layer needs no input gradient. Usage::

    python benchmarks/training.py                       # quick profile, 5 timed steps
    python benchmarks/training.py --variant sdc_restore --crop 64 --steps 10
    python benchmarks/training.py --precision none --precision bfloat16  # step-time ratio
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from reconad.runtime import configure_environment, seed_everything

configure_environment()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.common import median_seconds  # noqa: E402
from reconad.config import Params, load_params  # noqa: E402
from reconad.errors import ConfigError  # noqa: E402
from reconad.models import FAMILIES, method_class  # noqa: E402
from reconad.models.base import TrainedMethod  # noqa: E402
from reconad.runtime import dtype_policy  # noqa: E402
from reconad.train import compiled_model, make_method  # noqa: E402

CHANNELS = 1
"""The embedded textures dataset is grey."""

WARMUP_STEPS = 2
"""Steps run before timing: graph tracing, kernel selection, optimizer slots."""

MATMUL_SIDE_RANGE = (256, 2048)
"""Bounds of the reference matmul side: big enough to be compute bound, small enough to time."""

MATMUL_SIDE_MULTIPLE = 64

CONV_OPS = ("Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter")


def op_flops(op: tf.Operation) -> int:
    """``2 x`` multiply-adds of one convolution or matmul op from its shapes; 0 otherwise.

    A convolution and both of its gradients do ``|dy| x kh x kw x C_in`` multiply-adds,
    where ``dy`` is the (forward) convolution output ``(B, H_out, W_out, C_out)`` and the
    kernel is ``(kh, kw, C_in, C_out)``; a matmul does ``|output| x K``.
    """
    if op.type in CONV_OPS:
        if op.type == "Conv2D":
            dy, kernel = op.outputs[0].shape, op.inputs[1].shape
        elif op.type == "Conv2DBackpropInput":
            dy, kernel = op.inputs[2].shape, op.inputs[1].shape
        else:
            dy, kernel = op.inputs[2].shape, op.outputs[0].shape
        return 2 * dy.num_elements() * kernel[0] * kernel[1] * kernel[2]
    if op.type == "MatMul":
        left = op.inputs[0].shape
        inner = left[0] if op.get_attr("transpose_a") else left[1]
        return 2 * op.outputs[0].shape.num_elements() * inner
    return 0


def executed_ops(graph: tf.Graph) -> list[tf.Operation]:
    """The ops of a function graph its outputs depend on: TensorFlow prunes the others.

    ``GradientTape`` also records the backward pass of frozen layers; only the gradients
    asked for are computed when the function runs.
    """
    pending = [tensor.op for tensor in graph.outputs] + list(graph.control_outputs)
    needed: dict[str, tf.Operation] = {}
    while pending:
        op = pending.pop()
        if op.name in needed:
            continue
        needed[op.name] = op
        pending.extend(tensor.op for tensor in op.inputs)
        pending.extend(op.control_inputs)
    return list(needed.values())


def graph_flops(graph: tf.Graph) -> int:
    """Sum of :func:`op_flops` over the executed ops of ``graph`` and the functions it calls.

    Raises:
        ValueError: a counted op has a shape that is not fully known.
    """
    total = 0
    for op in executed_ops(graph):
        if op.type in ("PartitionedCall", "StatefulPartitionedCall"):
            total += graph_flops(graph._get_function(op.get_attr("f").name).graph)
            continue
        try:
            total += op_flops(op)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"cannot count the FLOPs of {op.type} {op.name}: {exc}") from exc
    return total


def step_flops(
    model: keras.Model,
    loss_fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor],
    x: tf.Tensor,
    y: tf.Tensor,
) -> tuple[int, int]:
    """FLOPs of one forward pass and of one training step on the batch ``(x, y)``.

    The training step is forward (``training=True``), mean loss, and the gradients of
    ``model.trainable_variables``, traced at the shapes of ``x`` and ``y``.
    """
    weights = model.trainable_variables

    def forward(images: tf.Tensor) -> tf.Tensor:
        return model(images, training=False)

    def gradients(images: tf.Tensor, targets: tf.Tensor) -> list[tf.Tensor]:
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(loss_fn(targets, model(images, training=True)))
        return tape.gradient(loss, weights)

    x_spec = tf.TensorSpec(x.shape, x.dtype)
    y_spec = tf.TensorSpec(y.shape, y.dtype)
    forward_graph = tf.function(forward).get_concrete_function(x_spec).graph
    step_graph = tf.function(gradients).get_concrete_function(x_spec, y_spec).graph
    return graph_flops(forward_graph), graph_flops(step_graph)


def matmul_side(flops: float) -> int:
    """Side ``n`` of a square matmul doing about ``flops`` (``2 n^3``), within bounds."""
    low, high = MATMUL_SIDE_RANGE
    side = round((flops / 2.0) ** (1.0 / 3.0) / MATMUL_SIDE_MULTIPLE) * MATMUL_SIDE_MULTIPLE
    return int(min(max(side, low), high))


def matmul_flops_per_s(side: int, repeats: int, seed: int) -> float:
    """FLOP/s of a float32 ``(side, side) @ (side, side)`` in a tf.function (median call)."""
    rng = np.random.default_rng(seed)
    a = tf.constant(rng.random((side, side), dtype=np.float32))
    b = tf.constant(rng.random((side, side), dtype=np.float32))
    product = tf.function(lambda: tf.reduce_sum(tf.linalg.matmul(a, b)))
    seconds = median_seconds(lambda: product().numpy(), repeats, WARMUP_STEPS)
    return 2.0 * side**3 / seconds


def default_variants(params: Params) -> tuple[str, ...]:
    """One variant per family that trains (a :class:`TrainedMethod`), in the order of
    :data:`reconad.models.FAMILIES`: the first one ``params.yaml`` defines."""
    chosen = []
    for family in FAMILIES:
        if not issubclass(method_class(family), TrainedMethod):
            continue
        name = next((n for n, v in params.variants.items() if v.method == family), None)
        if name is not None:
            chosen.append(name)
    return tuple(chosen)


def training_crop(method: TrainedMethod) -> int:
    """The largest crop the family trains on; ``crop: 0`` is the whole image it sees."""
    return max(phase.crop or method.image_size for phase in method.fit_config().phases)


def training_batch(
    method: TrainedMethod, batch: int, crop: int, seed: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """One ``make_pairs`` batch from random clean crops ``(batch, crop, crop, CHANNELS)``."""
    levels = np.random.default_rng(seed).integers(0, 256, (batch, crop, crop, CHANNELS))
    clean = tf.constant((levels / 255.0).astype(np.float32))
    return method.make_pairs(clean, tf.constant([seed, 0], tf.int64))


def measure_variant(
    params_path: Path | str,
    variant: str,
    steps: int,
    crop: int | None,
    seed: int,
    precision: str | None = None,
) -> dict[str, Any]:
    """Time ``steps`` training steps of ``variant`` and count their FLOPs.

    ``precision`` (``none``, ``float16``, ``bfloat16``) overrides ``train.mixed_precision``.

    Returns:
        One row: sizes, ``precision``, ``ms_per_step``, ``images_per_s``, ``forward_gflop``,
        ``step_gflop``, ``gflop_per_s``, the reference ``matmul_side`` and
        ``matmul_gflop_per_s``, and ``step_over_matmul`` (FLOP/s ratio).
    """
    params = load_params(params_path, variant)
    method = make_method(params, variant, CHANNELS)
    if not isinstance(method, TrainedMethod):
        raise ConfigError(f"{variant}: the {method.family} family does not train")
    crop = training_crop(method) if crop is None else crop
    method.check_image_size(crop)
    batch = method.fit_config().batch_size
    x, y = training_batch(method, batch, crop, seed)
    precision = precision or params.train.mixed_precision
    with dtype_policy(precision):
        model = compiled_model(params, method)
    forward, step = step_flops(model, method.loss(), x, y)
    side = matmul_side(step)
    matmul = matmul_flops_per_s(side, steps, seed)
    seconds = median_seconds(lambda: model.train_on_batch(x, y), steps, WARMUP_STEPS)
    keras.backend.clear_session()
    return {
        "variant": variant,
        "family": method.family,
        "crop": crop,
        "batch": batch,
        "precision": precision,
        "ms_per_step": 1e3 * seconds,
        "images_per_s": batch / seconds,
        "forward_gflop": forward / 1e9,
        "step_gflop": step / 1e9,
        "step_over_forward": step / forward,
        "gflop_per_s": step / seconds / 1e9,
        "matmul_side": side,
        "matmul_gflop_per_s": matmul / 1e9,
        "step_over_matmul": step / seconds / matmul,
    }


def run(
    params_path: Path | str = "params.yaml",
    steps: int = 5,
    variants: Iterable[str] | None = None,
    crop: int | None = None,
    seed: int | None = None,
    precisions: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Measure every variant at every precision.

    Args:
        params_path: the ``params.yaml`` whose active profile sets the sizes.
        steps: timed training steps (and reference matmuls) per variant.
        variants: variant names defined in ``params.yaml``; default
            :func:`default_variants`.
        crop: crop side for every variant; default each family's largest training crop.
        seed: seeds the batches, pairs and weights; default ``params.seed``.
        precisions: each of ``none``, ``float16``, ``bfloat16``; default
            ``train.mixed_precision``. The first is the reference of the others' step times.

    Returns:
        The profile, ``steps``, the FLOP-counting method and one row per variant (see
        :func:`measure_variant`).
    """
    if steps < 1:
        raise ValueError(f"Expected steps >= 1, Received: steps={steps}")
    params = load_params(params_path)
    seed = params.seed if seed is None else seed
    seed_everything(seed)
    variants = default_variants(params) if variants is None else tuple(variants)
    precisions = tuple(precisions or (params.train.mixed_precision,))
    rows = [
        measure_variant(params_path, name, steps, crop, seed, precision)
        for name in variants
        for precision in precisions
    ]
    return {
        "profile": params.profile,
        "channels": CHANNELS,
        "steps": steps,
        "flops": "conv/matmul ops of the traced training-step graph, 2 x multiply-adds",
        "variants": with_time_ratios(rows),
    }


def with_time_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row with ``time_over_first``: its step time over that of the first row of the
    same variant (the first precision asked for)."""
    first: dict[str, float] = {}
    for row in rows:
        first.setdefault(row["variant"], row["ms_per_step"])
    return [{**row, "time_over_first": row["ms_per_step"] / first[row["variant"]]} for row in rows]


def format_figures(figures: dict[str, Any]) -> str:
    """The table and ratios of :func:`run` as printable text."""
    lines = [
        f"profile {figures['profile']}: {figures['channels']} channel, median of "
        f"{figures['steps']} train_on_batch steps; FLOPs: {figures['flops']}",
        f"  {'variant':<12} {'crop':>4} {'batch':>5} {'mixed':>8} {'ms/step':>9} {'img/s':>8} "
        f"{'GFLOP/step':>10} {'step/fwd':>8} {'GFLOP/s':>8} {'matmul n':>8} "
        f"{'matmul GFLOP/s':>14} {'step/matmul':>11} {'time/first':>10}",
    ]
    for row in figures["variants"]:
        lines.append(
            f"  {row['variant']:<12} {row['crop']:>4} {row['batch']:>5} {row['precision']:>8} "
            f"{row['ms_per_step']:>9.1f} {row['images_per_s']:>8.1f} "
            f"{row['step_gflop']:>10.2f} {row['step_over_forward']:>7.2f}x "
            f"{row['gflop_per_s']:>8.1f} {row['matmul_side']:>8} "
            f"{row['matmul_gflop_per_s']:>14.1f} {row['step_over_matmul']:>10.2f}x "
            f"{row['time_over_first']:>9.2f}x"
        )
    return "\n".join(lines)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    parser.add_argument(
        "--variant", action="append", help="repeatable; default: one per training family"
    )
    parser.add_argument("--crop", type=int, default=None, help="default: largest training crop")
    parser.add_argument("--seed", type=int, default=None, help="default: params seed")
    parser.add_argument(
        "--precision",
        action="append",
        choices=("none", "float16", "bfloat16"),
        help="repeatable, the first is the reference; default: train.mixed_precision",
    )
    return parser.parse_args()


def main() -> None:
    args = _arguments()
    figures = run(args.params, args.steps, args.variant, args.crop, args.seed, args.precision)
    print(format_figures(figures))


if __name__ == "__main__":
    main()
