"""Command-line interface: ``python -m keras_retinanet <command>`` or ``keras-retinanet``.

Commands: ``train``, ``evaluate``, ``predict``, ``demo`` (shapes dataset -> train -> mAP ->
picture, on the active ``KERAS_BACKEND``) and ``shapes`` (write the synthetic dataset).

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
import json
import os
import sys
import time

from keras_retinanet.cpu_memory import keep_freed_memory

#: Settings the demo uses (and ``train`` defaults to): a compact backbone and anchors one
#: octave smaller than the paper's, sized for 128 x 128 images whose objects are 10-64 px.
DEMO_IMAGE_SIZE = 128
DEMO_ANCHOR_AREAS = (16.0**2, 32.0**2, 64.0**2, 128.0**2, 256.0**2)
RUN_FILE = "run.json"
#: Where ``demo`` writes when ``--output`` is not given; each demo run reuses it.
DEMO_OUTPUT = os.path.join("runs", "demo")


def _fail(message):
    """Exits with status 2 and a one-line message, argparse-style, without a traceback."""
    print(f"keras-retinanet: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _require_file(path, what):
    if path is None or not os.path.isfile(path):
        _fail(f"{what} {path!r} is not an existing file")


def _require_dir(path, what):
    if path is None or not os.path.isdir(path):
        _fail(f"{what} {path!r} is not an existing directory")


def _check_output(path, overwrite):
    """Exits (status 2) unless ``path`` is new, an empty folder, or ``overwrite`` is set."""
    if os.path.exists(path) and not os.path.isdir(path):
        _fail(f"--output {path!r} exists and is not a directory")
    if not overwrite and os.path.isdir(path) and os.listdir(path):
        _fail(
            f"--output {path!r} already exists and is not empty; pass --overwrite to write "
            "into it (files of the same name are replaced) or choose another --output"
        )


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _load_coco(annotations, images, flag):
    """``CocoDataset`` whose every listed image file exists, or exit 2 naming ``flag``."""
    from keras_retinanet.data import CocoDataset

    try:
        dataset = CocoDataset(annotations, images)
    except (ValueError, OSError) as e:
        _fail(f"{flag}: {_first_line(e)}")
    missing = [r["file_name"] for r in dataset.records if not os.path.isfile(r["path"])]
    if missing:
        _fail(
            f"{flag} {annotations!r} lists {len(missing)} image(s) missing from {images!r}, "
            f"e.g. {missing[0]!r}"
        )
    return dataset


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value

    return parse


def _fraction(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def _sizes(run):
    return {
        "min_side": run["min_side"],
        "max_side": run["max_side"],
        "stride": run["stride"],
        "image_size": tuple(run["image_size"]) if run.get("image_size") else None,
    }


def _load_run(model_path):
    """The model and the ``run.json`` written beside it by ``train``."""
    import keras

    import keras_retinanet  # noqa: F401  (registers the serializable classes)

    _require_file(model_path, "--model")
    run_path = os.path.join(os.path.dirname(os.path.abspath(model_path)), RUN_FILE)
    run = {}
    if os.path.isfile(run_path):
        try:
            with open(run_path) as f:
                run = json.load(f)
        except (ValueError, OSError) as e:
            _fail(f"{run_path!r} beside --model is not readable JSON: {_first_line(e)}")
        if not isinstance(run, dict):
            _fail(f"{run_path!r} beside --model must hold a JSON object")
    try:
        model = keras.saving.load_model(model_path)
    except Exception as e:  # Keras reports a bad file as ValueError, BadZipFile, KeyError, ...
        _fail(f"--model {model_path!r} is not a loadable .keras model: {_first_line(e)}")
    return model, run


# ---------------------------------------------------------------------------------- train


def train(args):
    import keras

    from keras_retinanet import AnchorGenerator, RetinaNet
    from keras_retinanet.data import DetectionDataset, InferenceBatches
    from keras_retinanet.evaluation import CocoEvaluationCallback
    from keras_retinanet.inference import detect_batch

    _require_file(args.train_annotations, "--train-annotations")
    _require_dir(args.train_images, "--train-images")
    if (args.val_annotations is None) != (args.val_images is None):
        _fail("--val-annotations and --val-images must be given together")
    if args.val_annotations is not None:
        _require_file(args.val_annotations, "--val-annotations")
        _require_dir(args.val_images, "--val-images")
    _check_output(args.output, args.overwrite)
    train_set = _load_coco(args.train_annotations, args.train_images, "--train-annotations")
    if len(train_set) == 0:
        _fail(f"--train-annotations {args.train_annotations!r} lists no images")
    val_set = None
    if args.val_annotations is not None:
        val_set = _load_coco(args.val_annotations, args.val_images, "--val-annotations")
    keras.utils.set_random_seed(args.seed)
    size = args.image_size
    run = {
        "backend": keras.backend.backend(),
        "min_side": size,
        "max_side": size,
        "stride": 128,
        "image_size": [size, size],
        "class_names": list(train_set.class_names),
        "class_to_category_id": [int(c) for c in train_set.class_to_category_id],
    }
    batches = DetectionDataset(
        train_set,
        batch_size=args.batch_size,
        training=True,
        seed=args.seed,
        workers=args.workers,
        **_sizes(run),
    )
    areas = DEMO_ANCHOR_AREAS if args.anchors == "small" else None
    anchor_generator = AnchorGenerator(areas=areas) if areas else AnchorGenerator()
    model = RetinaNet(
        num_classes=train_set.num_classes,
        backbone=args.backbone,
        backbone_weights=args.backbone_weights,
        anchor_generator=anchor_generator,
        fpn_filters=args.fpn_filters,
        head_convs=args.head_convs,
        data_format="channels_last",  # the data pipeline yields [N, H, W, 3] batches
    )
    steps = args.epochs * len(batches)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, steps, warmup_target=args.learning_rate, warmup_steps=max(1, min(100, steps // 10))
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-4, global_clipnorm=10.0)
    )
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, RUN_FILE), "w") as f:
        json.dump(run, f, indent=2)
    model_path = os.path.join(args.output, "model.keras")
    callbacks = []
    if val_set is not None:
        detector = model.make_detector()
        callbacks.append(
            CocoEvaluationCallback(
                lambda images: detect_batch(detector, images),
                InferenceBatches(val_set, batch_size=args.batch_size, **_sizes(run)),
                args.val_annotations,
                every_n_epochs=args.eval_every,
                class_to_category_id=val_set.class_to_category_id,
            )
        )
    callbacks.append(keras.callbacks.ModelCheckpoint(model_path))
    start = time.time()
    model.fit(batches, epochs=args.epochs, callbacks=callbacks, verbose=args.verbose)
    print(f"trained {args.epochs} epochs in {time.time() - start:.0f} s -> {model_path}")
    return model, run


# ------------------------------------------------------------------------------- evaluate


def _evaluate(model, run, dataset, annotations, batch_size):
    from keras_retinanet.data import InferenceBatches
    from keras_retinanet.inference import evaluate_detector

    batches = InferenceBatches(dataset, batch_size=batch_size, **_sizes(run))
    return evaluate_detector(
        model.make_detector(),
        batches,
        annotations,
        class_to_category_id=dataset.class_to_category_id,
    )


def evaluate(args):
    _require_file(args.model, "--model")
    _require_file(args.annotations, "--annotations")
    _require_dir(args.images, "--images")
    dataset = _load_coco(args.annotations, args.images, "--annotations")
    if len(dataset) == 0:
        _fail(f"--annotations {args.annotations!r} lists no images")
    model, run = _load_run(args.model)
    run = {**_default_run(), **run}
    stats, _ = _evaluate(model, run, dataset, args.annotations, args.batch_size)
    for name in ("AP", "AP50", "AP75"):
        print(f"{name}: {stats[name]:.4f}")
    print(f"mAP@0.5: {stats['AP50']:.4f}")
    return 0


def _default_run():
    size = DEMO_IMAGE_SIZE
    return {"min_side": size, "max_side": size, "stride": 128, "image_size": [size, size]}


# -------------------------------------------------------------------------------- predict


def _image_records(image_paths):
    """``{"image_id", "path", "height", "width"}`` per image, or exit 2 on an unreadable file."""
    from keras_retinanet.data.preprocessing import load_image

    records = []
    for i, path in enumerate(image_paths):
        try:
            height, width = load_image(path).shape[:2]
        except (ValueError, OSError) as e:
            _fail(f"--images: {_first_line(e)}")
        records.append({"image_id": i, "path": path, "height": height, "width": width})
    return records


def _draw(model, run, records, output, score_threshold, batch_size):
    """Detects objects in the images of ``records`` (from :func:`_image_records`); writes
    annotated PNGs and ``detections.json`` into ``output``."""
    import keras

    from keras_retinanet.data import InferenceBatches
    from keras_retinanet.data.preprocessing import load_image
    from keras_retinanet.inference import detect_batch
    from keras_retinanet.visualization import draw_detections

    batches = InferenceBatches(records, batch_size=batch_size, **_sizes(run))
    detector = model.make_detector()
    names = run.get("class_names") or [str(i) for i in range(model.num_classes)]
    # Without run.json the classes are reported as their own (contiguous) category ids.
    category_ids = run.get("class_to_category_id") or list(range(model.num_classes))
    os.makedirs(output, exist_ok=True)
    results, written = [], []
    progress = keras.utils.Progbar(len(records), unit_name="image")
    for images, meta in batches:
        boxes, scores, classes, valid = detect_batch(detector, images)
        for row, image_id in enumerate(meta["image_id"]):
            record = records[int(image_id)]
            n = int(valid[row])
            ratio = float(meta["ratio"][row])
            h, w = record["height"], record["width"]
            b = boxes[row, :n] / ratio
            b[:, 0::2] = b[:, 0::2].clip(0, w)
            b[:, 1::2] = b[:, 1::2].clip(0, h)
            keep = scores[row, :n] >= score_threshold
            stem = os.path.splitext(os.path.basename(record["path"]))[0]
            path = os.path.join(output, f"{stem}_detections.png")
            draw_detections(
                load_image(record["path"]),
                b[keep],
                classes[row, :n][keep],
                scores[row, :n][keep],
                class_names=names,
                path=path,
            )
            written.append(path)
            for box, score, cls in zip(b, scores[row, :n], classes[row, :n], strict=True):
                results.append(
                    {
                        "file_name": os.path.basename(record["path"]),
                        "image_id": int(image_id),
                        "category_id": int(category_ids[int(cls)]),
                        "class_name": names[int(cls)],
                        "bbox": [round(float(v), 2) for v in (*box[:2], *(box[2:] - box[:2]))],
                        "score": round(float(score), 5),
                    }
                )
        progress.add(len(meta["image_id"]))
    with open(os.path.join(output, "detections.json"), "w") as f:
        json.dump(results, f, indent=1)
    return written, results


def _image_paths(inputs):
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            paths += sorted(
                os.path.join(item, name)
                for name in os.listdir(item)
                if name.lower().endswith((".png", ".jpg", ".jpeg", ".bmp"))
            )
        elif os.path.isfile(item):
            paths.append(item)
        else:
            _fail(f"--images entry {item!r} is neither a file nor a directory")
    if not paths:
        _fail("--images holds no .png/.jpg/.jpeg/.bmp images")
    return paths


def predict(args):
    _require_file(args.model, "--model")  # before the (slower) image-folder scan
    paths = _image_paths(args.images)
    _check_output(args.output, args.overwrite)
    records = _image_records(paths)  # every image decodes before the model is loaded
    model, run = _load_run(args.model)
    run = {**_default_run(), **run}
    written, results = _draw(
        model, run, records, args.output, args.score_threshold, args.batch_size
    )
    print(f"{len(results)} detections in {len(written)} images -> {args.output}")
    return 0


# ----------------------------------------------------------------------------------- demo


def demo(args):
    import keras

    from keras_retinanet.data import CocoDataset, generate_shapes_dataset

    output = DEMO_OUTPUT if args.output is None else args.output
    # The default folder is the demo's own and is reused; a folder the user names is not
    # written into when it holds anything, unless --overwrite.
    _check_output(output, args.overwrite or args.output is None)
    start = time.time()
    print(f"backend: {keras.backend.backend()}")
    paths = generate_shapes_dataset(
        os.path.join(output, "shapes"), num_train=args.num_train, num_val=args.num_val
    )
    print(f"shapes dataset: {args.num_train} train / {args.num_val} val images -> {paths.root}")
    train_args = argparse.Namespace(
        train_annotations=paths.train_annotations,
        train_images=paths.train_images,
        val_annotations=None,
        val_images=None,
        output=output,
        overwrite=True,  # the folder was checked above and now holds the dataset
        backbone="compact",
        backbone_weights=None,
        anchors="small",
        fpn_filters=64,
        head_convs=2,
        image_size=DEMO_IMAGE_SIZE,
        epochs=args.epochs,
        batch_size=16,
        learning_rate=3e-3,
        workers=1,
        seed=args.seed,
        eval_every=1,
        verbose=args.verbose,
    )
    model, run = train(train_args)
    val_set = CocoDataset(paths.val_annotations, paths.val_images)
    stats, _ = _evaluate(model, run, val_set, paths.val_annotations, 20)
    print(f"AP: {stats['AP']:.4f}  AP75: {stats['AP75']:.4f}")
    val_images = [os.path.join(paths.val_images, r["file_name"]) for r in val_set.records[:4]]
    written, _ = _draw(
        model,
        run,
        _image_records(val_images),
        os.path.join(output, "predictions"),
        0.3,
        4,
    )
    print(f"detections drawn: {written[0]} (+{len(written) - 1} more)")
    print(f"wall time: {time.time() - start:.0f} s")
    print(f"mAP@0.5: {stats['AP50']:.4f}")
    return 0


def shapes(args):
    from keras_retinanet.data import generate_shapes_dataset

    _check_output(args.output, args.overwrite)
    paths = generate_shapes_dataset(
        args.output, num_train=args.num_train, num_val=args.num_val, seed=args.seed
    )
    print(json.dumps({k: str(v) for k, v in paths._asdict().items()}, indent=2))
    return 0


# --------------------------------------------------------------------------------- parser


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

    p = sub.add_parser("train", help="train on a COCO-format dataset")
    p.add_argument("--train-annotations", required=True, help="COCO instances JSON")
    p.add_argument("--train-images", required=True, help="folder of the training images")
    p.add_argument("--val-annotations", help="COCO JSON evaluated after every --eval-every epochs")
    p.add_argument("--val-images")
    _add_output_arguments(p, "runs/train", "model.keras and run.json")
    p.add_argument("--backbone", default="compact", help="registered backbone (compact, resnet50)")
    p.add_argument("--backbone-weights", help="local weights file for the backbone")
    p.add_argument(
        "--anchors",
        choices=("small", "paper"),
        default="small",
        help="anchor areas 16^2..256^2 (small images) or the paper's 32^2..512^2",
    )
    p.add_argument("--fpn-filters", type=_positive(int), default=64)
    p.add_argument("--head-convs", type=_positive(int), default=2)
    p.add_argument("--image-size", type=_positive(int), default=DEMO_IMAGE_SIZE)
    p.add_argument("--epochs", type=_positive(int), default=30)
    p.add_argument("--batch-size", type=_positive(int), default=16)
    p.add_argument("--learning-rate", type=_positive(float), default=3e-3)
    p.add_argument("--workers", type=_positive(int), default=1)
    p.add_argument("--eval-every", type=_positive(int), default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1)
    p.set_defaults(func=lambda a: train(a) and 0)

    p = sub.add_parser("evaluate", help="COCO AP of a trained model")
    p.add_argument("--model", required=True, help="model.keras written by train")
    p.add_argument("--annotations", required=True)
    p.add_argument("--images", required=True)
    p.add_argument("--batch-size", type=_positive(int), default=8)
    p.set_defaults(func=evaluate)

    p = sub.add_parser("predict", help="draw detections and write a COCO-results JSON")
    p.add_argument("--model", required=True)
    p.add_argument("--images", required=True, nargs="+", help="image files or folders")
    _add_output_arguments(p, "runs/predict", "the pictures and detections.json")
    p.add_argument("--score-threshold", type=_fraction, default=0.3)
    p.add_argument("--batch-size", type=_positive(int), default=4)
    p.set_defaults(func=predict)

    # 800 images x 30 epochs reach mAP@0.5 ~0.85-0.9 in a few CPU minutes; 400 x 60 (the same
    # steps) overfits to ~0.82.
    p = sub.add_parser("demo", help="shapes dataset -> train -> evaluate -> picture")
    _add_output_arguments(
        p,
        None,
        f"the dataset, model and pictures (default {DEMO_OUTPUT}, the demo's own folder, which "
        "every run reuses); a folder named here",
    )
    p.add_argument("--epochs", type=_positive(int), default=30)
    p.add_argument("--num-train", type=_positive(int), default=800)
    p.add_argument("--num-val", type=_positive(int), default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", type=int, choices=(0, 1, 2), default=2)
    p.set_defaults(func=demo)

    p = sub.add_parser("shapes", help="write the synthetic shapes dataset (COCO format)")
    _add_output_arguments(p, "runs/shapes", "the dataset")
    p.add_argument("--num-train", type=_positive(int), default=400)
    p.add_argument("--num-val", type=_positive(int), default=100)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=shapes)
    return parser


#: Commands that train, and so free and reallocate their activations every step.
TRAINING_COMMANDS = ("train", "demo")


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command in TRAINING_COMMANDS:
        keep_freed_memory()
    return args.func(args) or 0
