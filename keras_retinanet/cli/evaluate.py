"""``evaluate``: COCO AP of a trained model, overall and per class."""

import json
import math
import os

from keras_retinanet.cli._common import (
    DATASET_FORMATS,
    default_run,
    fail,
    first_line,
    load_dataset,
    load_run,
    require_file,
    sizes,
)


def add_evaluate_arguments(parser):
    """Adds the ``evaluate`` options defined here (``--dataset``, ``--classes``, ``--split``,
    ``--json``) to its ``parser``."""
    parser.add_argument(
        "--dataset",
        choices=DATASET_FORMATS,
        default="coco",
        help="format of --annotations: COCO JSON (default), CSV (+ --classes) or a VOC root",
    )
    parser.add_argument("--classes", help="CSV: the class_name,id file; VOC: optional")
    parser.add_argument("--split", default="test", help="VOC image set (default test)")
    parser.add_argument(
        "--json",
        metavar="FILE",
        help="also write the statistics (AP, AP50, AP75, ..., per_class) to this JSON file; "
        "an existing file is replaced",
    )
    return parser


def evaluate_model(model, run, dataset, annotations, batch_size):
    """COCO AP of ``model`` on ``dataset``, with the resize, ``normalization`` and
    ``decoding`` of ``run`` (as :func:`~keras_retinanet.cli.predict.draw_predictions`).

    Returns ``(stats, results)`` of :func:`~keras_retinanet.inference.evaluate_detector`;
    ``stats["per_class"]`` names the categories as the annotation file does, which for a
    trained model are its ``class_names`` and for a converted torchvision model (labels are
    COCO category ids) the COCO names."""
    from keras_retinanet.data import InferenceBatches
    from keras_retinanet.inference import evaluate_detector

    batches = InferenceBatches(
        dataset,
        batch_size=batch_size,
        normalization=run.get("normalization", "caffe"),
        **sizes(run),
    )
    category_ids = dataset.class_to_category_id
    if run.get("torchvision_version"):
        # A converted torchvision model's labels are COCO category ids already.
        category_ids = run["class_to_category_id"]
    return evaluate_detector(
        model.make_detector(**run.get("decoding", {})),
        batches,
        annotations,
        class_to_category_id=category_ids,
    )


def _jsonable(value):
    """Whether ``json.dump`` writes ``value`` as standard JSON (no NaN/Inf, str keys)."""
    if isinstance(value, bool | int | str) or value is None:
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list | tuple):
        return all(_jsonable(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _jsonable(v) for k, v in value.items())
    return False


def stats_to_json(stats):
    """The entries of ``stats`` that are plain JSON (all of :func:`evaluate_coco`'s)."""
    return {key: value for key, value in stats.items() if _jsonable(value)}


def _write_json(path, stats):
    try:
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        with open(path, "w") as f:
            json.dump(stats_to_json(stats), f, indent=2)
            f.write("\n")
    except OSError as e:
        fail(f"--json {path!r}: {first_line(e)}")


def evaluate_command(args):
    from keras_retinanet.evaluation import format_per_class_table

    json_path = getattr(args, "json", None)  # set once add_evaluate_arguments is wired in
    kind = getattr(args, "dataset", "coco")
    require_file(args.model, "--model")
    if json_path is not None and os.path.isdir(json_path):
        fail(f"--json {json_path!r} is a directory")  # before the (slow) evaluation
    dataset = load_dataset(
        kind,
        args.annotations,
        args.images,
        getattr(args, "classes", None),
        getattr(args, "split", "test"),
        "--annotations",
    )
    if len(dataset) == 0:
        fail(f"--annotations {args.annotations!r} lists no images")
    # COCO evaluation of CSV and VOC data scores against their COCO conversion.
    ground_truth = args.annotations if kind == "coco" else dataset.to_coco()
    model, run = load_run(args.model)
    run = {**default_run(), **run}
    stats, _ = evaluate_model(model, run, dataset, ground_truth, args.batch_size)
    for name in ("AP", "AP50", "AP75"):
        print(f"{name}: {stats[name]:.4f}")
    print(f"mAP@0.5: {stats['AP50']:.4f}")
    if stats.get("per_class"):
        print()
        print(format_per_class_table(stats["per_class"]))
    if json_path is not None:
        _write_json(json_path, stats)
    return 0
