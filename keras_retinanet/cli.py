"""Command-line interface: ``python -m keras_retinanet <command>`` or ``keras-retinanet``."""

import argparse
import importlib.util
import os
import subprocess
import sys

BACKENDS = ("tensorflow", "jax", "torch")


def _shapes(args):
    """Builds the default RetinaNet on the active backend and prints its output shape."""
    import keras
    import numpy as np

    from keras_retinanet import RetinaNet

    model = RetinaNet(num_classes=args.num_classes)
    images = np.zeros((args.batch, args.size, args.size, 3), "float32")
    outputs = model(images)
    anchors = model.anchor_generator.num_anchors(args.size, args.size)
    print(
        f"{keras.backend.backend():>10}: RetinaNet(num_classes={args.num_classes}) on "
        f"{images.shape} -> {tuple(outputs.shape)}, {anchors} anchors"
    )
    return 0


def _demo(args):
    """Runs ``shapes`` once per installed backend, each in its own process."""
    installed = [b for b in BACKENDS if importlib.util.find_spec(b) is not None]
    if not installed:
        print(
            "No Keras backend installed: pip install 'keras3-retinanet[jax]' (or tensorflow/torch)"
        )
        return 1
    status = 0
    for backend in installed:
        cmd = [sys.executable, "-m", "keras_retinanet", "shapes", "--size", str(args.size)]
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        status |= subprocess.run(cmd, env=env).returncode
    return status


def build_parser():
    parser = argparse.ArgumentParser(prog="keras-retinanet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    shapes = sub.add_parser("shapes", help="build the model on the active backend, print shapes")
    shapes.add_argument("--size", type=int, default=512)
    shapes.add_argument("--batch", type=int, default=2)
    shapes.add_argument("--num-classes", type=int, default=80)
    shapes.set_defaults(func=_shapes)
    demo = sub.add_parser("demo", help="build the model on every installed backend")
    demo.add_argument("--size", type=int, default=512)
    demo.set_defaults(func=_demo)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)
