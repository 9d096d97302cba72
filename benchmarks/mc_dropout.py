"""Cost of MC-dropout scoring: T batched passes against one deterministic pass.

Builds the AESc network of an AESc variant of ``params.yaml`` (default ``aesc_stain``,
at the active profile: ``aesc.network``) with random weights and times, as the median of
``--repeats`` calls after a warm-up call that traces the graphs:

- one deterministic forward pass;
- T MC-dropout passes as ``mc_predict`` runs them (stem once, head once on T x B);
- T naive full forward passes (stem and head every time).

It also prints the bound set by arithmetic alone: convolution multiply-adds of the stem
once plus the head T times, over those of one pass. The deterministic pass is the
reference of both ratios, measured in the same run. Usage::

    python -m benchmarks.mc_dropout --size 128 --channels 1 --batch 8 --passes 30
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from reconad.runtime import configure_environment, seed_everything

configure_environment()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.common import median_seconds  # noqa: E402
from reconad.config import load_params  # noqa: E402
from reconad.errors import ConfigError  # noqa: E402
from reconad.models.aesc import Aesc, AescNetwork, mc_predict  # noqa: E402

VARIANT = "aesc_stain"
"""The AESc variant whose network is timed by default."""


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    seed_everything(args.seed)
    params = load_params(args.params, args.variant)
    if params.variant(args.variant).method != Aesc.family:
        raise ConfigError(f"{args.variant}: not an AESc variant")
    network = AescNetwork(Aesc(params, args.variant, args.channels).build())
    rng = np.random.default_rng(args.seed)
    images = tf.constant(rng.random((args.batch, args.size, args.size, args.channels), np.float32))
    seed = tf.constant([args.seed, 0], tf.int64)
    pass_seeds = tf.random.experimental.stateless_split(seed, args.passes)
    full_pass = tf.function(network.forward, reduce_retracing=True)

    def naive() -> None:
        for t in range(args.passes):
            full_pass(images, pass_seeds[t : t + 1]).numpy()

    def timed(call: Callable[[], object]) -> float:
        return median_seconds(call, args.repeats, warmup=1)

    timings = {
        "deterministic pass": timed(lambda: network.run_model(images).numpy()),
        f"{args.passes} batched MC passes": timed(
            lambda: mc_predict(network, images, args.passes, seed)[1].numpy()
        ),
        f"{args.passes} naive full passes": timed(naive),
    }
    stem, head = _stem_and_head_macs(network, args.size)
    widths = [network.model.get_layer(f"enc{d}_conv").filters for d in range(network.depth)]
    print(
        f"AESc widths {widths}, dropout from depth {network.split}, "
        f"input {args.batch} x {args.size}^2 x {args.channels}"
    )
    for name, seconds in timings.items():
        print(f"{name:>24}: {seconds * 1000:10.3f} ms")
    deterministic, batched, unbatched = timings.values()
    print(f"batched / deterministic: {batched / deterministic:7.2f}x  (goal <= 8x)")
    print(f"naive / batched:         {unbatched / batched:7.2f}x")
    print(
        f"arithmetic bound (stem + T * head) / (stem + head): "
        f"{(stem + args.passes * head) / (stem + head):6.1f}x "
        f"(stem {100 * stem / (stem + head):.1f}% of the multiply-adds)"
    )


def _stem_and_head_macs(network: AescNetwork, size: int) -> tuple[int, int]:
    """Convolution multiply-adds per image of the stem and of the head."""
    stem_layers = {f"enc{d}_conv" for d in range(min(network.split + 1, network.depth))}
    stem = head = 0
    for layer in network.model.layers:
        if not isinstance(layer, keras.layers.Conv2D):
            continue
        side = (
            size if layer.name == "output" else size // 2 ** (int(layer.name[3:].split("_")[0]) + 1)
        )
        macs = int(np.prod(layer.kernel.shape)) * side * side
        if layer.name in stem_layers:
            stem += macs
        else:
            head += macs
    return stem, head


def _arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--variant", default=VARIANT, help="an AESc variant of params.yaml")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--channels", type=int, default=1, choices=(1, 3))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--passes", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls (median)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
