"""Engine efficiency: scan throughput vs a bare forward+backward-to-input pass.

Throughput = image x label gradient evaluations per second. The bare pass is
the least any trigger optimiser must do per image: the model's forward pass
and the gradient of the loss w.r.t. its input, in one compiled function, at
the same batch size the engine sends through the model (slots x batch_size).
Target: engine / bare >= 0.9. Uses the NC GTSRB architecture (speed does not
depend on the weights) and random images.

Usage: python bench/engine_efficiency.py [--slots 8] [--batch-size 32] [--steps 20]
"""

import argparse
import os
import sys
import time

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(__file__))
from _common import print_peak_rss  # noqa: E402

from nc_tf.engine import ReverseEngine  # noqa: E402
from nc_tf.models import gtsrb_model  # noqa: E402


def bare_throughput(model, batch, repeats):
    x = tf.constant(np.random.default_rng(0).uniform(0, 255, (batch, 32, 32, 3)).astype(np.float32))
    y = tf.zeros([batch], tf.int32)

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            p = model(x, training=False)
            loss = tf.reduce_sum(
                -tf.math.log(tf.clip_by_value(tf.gather(p, y, batch_dims=1), 1e-7, 1.0))
            )
        return tape.gradient(loss, x)

    step(x).numpy()
    t0 = time.time()
    for _ in range(repeats):
        g = step(x)
    g.numpy()
    return batch * repeats / (time.time() - t0)


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--mini-batch", type=int, default=4)
    args = ap.parse_args()
    model = gtsrb_model()
    x = np.random.default_rng(1).integers(0, 256, (2000, 32, 32, 3)).astype(np.uint8)
    engine = ReverseEngine(
        model,
        x,
        steps=args.steps,
        mini_batch=args.mini_batch,
        batch_size=args.batch_size,
        slots=args.slots,
        early_stop=False,
        steps_per_call=args.steps,
    )
    engine.run(list(range(args.slots)))  # compile
    t0 = time.time()
    engine.run(list(range(args.slots, 2 * args.slots)))
    wall = time.time() - t0
    evals = args.slots * args.steps * args.mini_batch * args.batch_size
    eng = evals / wall
    batch = args.slots * args.batch_size
    bare = bare_throughput(model, batch, repeats=args.steps * args.mini_batch)
    print(
        f"model: NC GTSRB, {args.slots} labels x batch {args.batch_size} = {batch} images per pass"
    )
    print(
        f"engine: {eng:,.0f} image-label gradients/s   bare fwd+bwd-to-input: {bare:,.0f} images/s"
    )
    print(f"ratio: {eng / bare:.2f} (target >= 0.9)")
    print_peak_rss()


if __name__ == "__main__":
    main()
