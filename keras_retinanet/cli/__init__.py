"""Command-line interface: ``python -m keras_retinanet <command>`` or ``keras-retinanet``.

Commands: ``train``, ``evaluate``, ``predict``, ``demo`` (shapes dataset -> train -> mAP ->
picture, on the active ``KERAS_BACKEND``), ``shapes`` (write the synthetic dataset) and
``convert`` (a torchvision checkpoint -> ``.keras``), ``anchors`` (which ground-truth boxes
no anchor matches, per size bucket, before training), ``export`` (the detector with its NMS as a
TF SavedModel or an ONNX file). ``predict --preset NAME`` runs one of
torchvision's published COCO models (:mod:`keras_retinanet.presets`) directly.

Bad input (missing or unreadable files, malformed COCO JSON, bad numbers) ends the command
with exit status 2 and a one-line ``keras-retinanet: error: ...`` message, like argparse's.
``train``, ``predict``, ``demo`` and ``shapes`` refuse to write into an existing non-empty
``--output`` folder unless ``--overwrite`` is given; the demo's default folder
(:data:`DEMO_OUTPUT`, used when ``--output`` is left out) is its own scratch space and is
reused by every run.

``train`` and ``demo`` first call :func:`keras_retinanet.cpu_memory.keep_freed_memory`, so a
long training run reuses its freed memory instead of faulting it in again every step.
"""

import argparse

from keras_retinanet.cli._common import (
    DATASET_FORMATS,
    DEMO_ANCHOR_AREAS,
    DEMO_IMAGE_SIZE,
    DEMO_OUTPUT,
    RUN_FILE,
    fraction,
    positive,
)
from keras_retinanet.cli.anchors import add_anchors_parser
from keras_retinanet.cli.convert import convert_command
from keras_retinanet.cli.demo import demo_command
from keras_retinanet.cli.evaluate import add_evaluate_arguments, evaluate_command
from keras_retinanet.cli.export import export_command
from keras_retinanet.cli.predict import predict_command
from keras_retinanet.cli.shapes import shapes_command
from keras_retinanet.cli.train import run_training, train_command
from keras_retinanet.cpu_memory import keep_freed_memory
from keras_retinanet.presets import list_presets
from keras_retinanet.recipes import list_recipes
from keras_retinanet.variants import TORCHVISION_VERSIONS

__all__ = [
    "DEMO_ANCHOR_AREAS",
    "DEMO_IMAGE_SIZE",
    "DEMO_OUTPUT",
    "RUN_FILE",
    "TRAINING_COMMANDS",
    "build_parser",
    "main",
    "run_training",
]


def _add_output_arguments(parser, default, what):
    parser.add_argument(
        "--output",
        default=default,
        help=f"folder for {what} must be new or empty unless --overwrite"
        if default is None
        else f"folder for {what} (default {default}); must be new or empty unless --overwrite",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty --output: files of the same name are replaced, other "
        "files are left in place",
    )


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-retinanet",
        description="RetinaNet for Keras 3; the backend is taken from KERAS_BACKEND.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "train",
        help="train on a COCO, CSV or Pascal VOC dataset, on one or more devices",
        description="Train a RetinaNet. A --recipe sets the model, input pipeline and "
        "optimizer (demo: the compact CPU model for small images; kerasio: the keras.io COCO "
        "recipe, ResNet50 from local ImageNet weights); the other flags override it. Several "
        "devices: --devices N (JAX, TensorFlow: in this process; PyTorch: start the command "
        "with torchrun --nproc-per-node N -m keras_retinanet train --devices N ...).",
    )
    p.add_argument(
        "--dataset",
        choices=DATASET_FORMATS,
        default="coco",
        help="format of the annotations: COCO JSON (default), CSV (path,x1,y1,x2,y2,class "
        "+ --classes) or a Pascal VOC root",
    )
    p.add_argument(
        "--train-annotations",
        required=True,
        help="COCO instances JSON, CSV annotations file, or VOC root (Annotations/, "
        "JPEGImages/, ImageSets/Main/)",
    )
    p.add_argument(
        "--train-images",
        help="COCO: folder of the training images; CSV: folder the image paths are relative "
        "to (default the CSV's)",
    )
    p.add_argument(
        "--classes", help="CSV: the class_name,id file; VOC: optional, replaces the 20 classes"
    )
    p.add_argument("--train-split", default="trainval", help="VOC image set (default trainval)")
    p.add_argument(
        "--val-annotations", help="evaluated after every --eval-every epochs (same --dataset)"
    )
    p.add_argument("--val-images")
    p.add_argument("--val-split", default="test", help="VOC image set (default test)")
    _add_output_arguments(p, "runs/train", "model.keras and run.json")
    p.add_argument(
        "--recipe",
        choices=list_recipes(),
        default="demo",
        help="named configuration (default demo); flags below left unset take its values",
    )
    p.add_argument("--backbone", help="registered backbone (compact, resnet50)")
    p.add_argument(
        "--backbone-weights", help="local weights file for the backbone (kerasio: required)"
    )
    p.add_argument(
        "--anchors",
        choices=("small", "paper"),
        help="anchor areas 16^2..256^2 (small images; demo) or the paper's 32^2..512^2",
    )
    p.add_argument("--fpn-filters", type=positive(int))
    p.add_argument("--head-convs", type=positive(int))
    p.add_argument(
        "--image-size",
        type=positive(int),
        help="train on square images of this size (no scale jitter)",
    )
    p.add_argument("--epochs", type=positive(int), default=30)
    p.add_argument(
        "--batch-size",
        type=positive(int),
        help="GLOBAL batch over all devices (default: the recipe's per-device batch x --devices)",
    )
    p.add_argument(
        "--learning-rate",
        type=positive(float),
        help="peak learning rate; the recipe's schedule is scaled to it",
    )
    p.add_argument(
        "--devices",
        type=positive(int),
        default=1,
        help="data-parallel devices (default 1); --batch-size is split over them",
    )
    p.add_argument("--workers", type=positive(int), default=1)
    p.add_argument("--eval-every", type=positive(int), default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the last completed epoch in --output (optimizer state included)",
    )
    p.add_argument(
        "--tensorboard",
        metavar="DIR",
        help="write TensorBoard logs (loss, learning rate, validation AP) into DIR",
    )
    p.add_argument(
        "--mixed-precision",
        nargs="?",
        const="float16",
        choices=("float16", "bfloat16"),
        help="compute in float16 (default when given; GPUs) or bfloat16 (CPUs, TPUs), "
        "variables and outputs in float32",
    )
    p.add_argument(
        "--skip-unreadable",
        action="store_true",
        help="leave out the images that do not open (named on stderr, listed in run.json as "
        "skipped_images) instead of stopping before training",
    )
    p.set_defaults(func=train_command)

    p = sub.add_parser("evaluate", help="COCO AP of a trained model")
    p.add_argument("--model", required=True, help="model.keras written by train")
    p.add_argument("--annotations", required=True, help="COCO JSON, CSV annotations or VOC root")
    p.add_argument("--images", help="COCO: the image folder; CSV: folder paths start from")
    p.add_argument("--batch-size", type=positive(int), default=8)
    add_evaluate_arguments(p)
    p.set_defaults(func=evaluate_command)

    p = sub.add_parser("predict", help="draw detections and write a COCO-results JSON")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--model", help="model.keras written by train or convert (run.json beside it is used)"
    )
    source.add_argument(
        "--preset",
        choices=list_presets(),
        help="a torchvision COCO model, converted on the fly (labels are COCO category ids)",
    )
    p.add_argument(
        "--weights",
        help="with --preset: a local copy of its .pth (or .safetensors); without it the file "
        "is downloaded into $KERAS_HOME/keras_retinanet",
    )
    p.add_argument("--images", required=True, nargs="+", help="image files or folders")
    _add_output_arguments(p, "runs/predict", "the pictures and detections.json")
    p.add_argument("--score-threshold", type=fraction, default=0.3)
    p.add_argument("--batch-size", type=positive(int), default=4)
    p.add_argument(
        "--min-side",
        type=positive(int),
        help="resize the short side to this (default: the model's, 800 for presets)",
    )
    p.add_argument(
        "--max-side",
        type=positive(int),
        help="cap on the long side after resizing (default: the model's, 1333 for presets)",
    )
    p.set_defaults(func=predict_command)

    p = sub.add_parser(
        "convert", help="a torchvision RetinaNet checkpoint -> .keras (+ run.json beside it)"
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", choices=list_presets(), help="a published COCO checkpoint")
    source.add_argument(
        "--version",
        choices=TORCHVISION_VERSIONS,
        help="a checkpoint of your own: v1 retinanet_resnet50_fpn, v2 retinanet_resnet50_fpn_v2",
    )
    p.add_argument(
        "--weights",
        help="the .pth or .safetensors state dict (needed with --version; with --preset, "
        "default: download the published file into $KERAS_HOME/keras_retinanet)",
    )
    p.add_argument("--output", required=True, help="the .keras file to write")
    p.add_argument(
        "--overwrite", action="store_true", help="replace --output and run.json beside it"
    )
    p.set_defaults(func=convert_command)

    p = sub.add_parser(
        "export",
        help="the detector, NMS included, as a TF SavedModel (TF, JAX) or ONNX file (PyTorch)",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="model.keras written by train or convert")
    source.add_argument("--preset", choices=list_presets(), help="a published COCO checkpoint")
    p.add_argument("--weights", help="with --preset: a local copy of its .pth")
    p.add_argument(
        "--format",
        required=True,
        choices=("tf_saved_model", "onnx"),
        help="tf_saved_model from the TensorFlow or JAX backend, onnx from PyTorch",
    )
    p.add_argument("--output", required=True, help="the SavedModel folder or .onnx file")
    p.add_argument(
        "--image-size",
        type=positive(int),
        nargs=2,
        metavar=("HEIGHT", "WIDTH"),
        help="fix the input size (needed for onnx and for JAX; TensorFlow takes any size)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace --output")
    p.set_defaults(func=export_command)

    # 800 images x 30 epochs reach mAP@0.5 ~0.85-0.9 in a few CPU minutes; 400 x 60 (the same
    # steps) overfits to ~0.82.
    p = sub.add_parser("demo", help="shapes dataset -> train -> evaluate -> picture")
    _add_output_arguments(
        p,
        None,
        f"the dataset, model and pictures (default {DEMO_OUTPUT}, the demo's own folder, which "
        "every run reuses); a folder named here",
    )
    p.add_argument("--epochs", type=positive(int), default=30)
    p.add_argument("--num-train", type=positive(int), default=800)
    p.add_argument("--num-val", type=positive(int), default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", type=int, choices=(0, 1, 2), default=2)
    p.set_defaults(func=demo_command)

    p = sub.add_parser("shapes", help="write the synthetic shapes dataset (COCO format)")
    _add_output_arguments(p, "runs/shapes", "the dataset")
    p.add_argument("--num-train", type=positive(int), default=400)
    p.add_argument("--num-val", type=positive(int), default=100)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=shapes_command)

    add_anchors_parser(sub)
    return parser


#: Commands that train, and so free and reallocate their activations every step.
TRAINING_COMMANDS = ("train", "demo")


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command in TRAINING_COMMANDS:
        keep_freed_memory()
    return args.func(args) or 0
