"""``evaluate``: COCO AP of a trained model, overall and per class."""

import math
import os
import sys

from keras_retinanet.cli._common import (
    DATASET_FORMATS,
    check_writable,
    default_run,
    describe_classes,
    fail,
    load_dataset,
    load_run,
    require_file,
    sizes,
    write_json_file,
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


def evaluate_model(model, run, dataset, annotations, batch_size, class_to_category_id=None):
    """COCO AP of ``model`` on ``dataset``, with the resize, ``normalization`` and
    ``decoding`` of ``run`` (as :func:`~keras_retinanet.cli.predict.draw_predictions`).

    Returns ``(stats, results)`` of :func:`~keras_retinanet.inference.evaluate_detector`;
    ``stats["per_class"]`` names the categories as the annotation file does, which for a
    trained model are its ``class_names`` and for a converted torchvision model (labels are
    COCO category ids) the COCO names. ``class_to_category_id`` (the model's class ->
    category id; default the dataset's) overrides the mapping, e.g. from
    :func:`check_classes`."""
    from keras_retinanet.data import InferenceBatches
    from keras_retinanet.inference import evaluate_detector

    batches = InferenceBatches(
        dataset,
        batch_size=batch_size,
        normalization=run.get("normalization", "caffe"),
        **sizes(run),
    )
    category_ids = dataset.class_to_category_id
    if class_to_category_id is not None:
        category_ids = class_to_category_id
    elif run.get("torchvision_version"):
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
    from keras_retinanet.cli._common import make_output_dir

    make_output_dir(os.path.dirname(os.path.abspath(path)), "--json")
    write_json_file(stats_to_json(stats), path, "--json")


def check_classes(model, run, dataset, flag="--annotations"):
    """The model's class -> category id mapping to score ``dataset`` with (``None``: the
    dataset's own), after checking that the model's classes (``run.json``'s ``class_names``
    and ``class_to_category_id``, else ``model.num_classes``) are the dataset's; exits
    (status 2) naming both otherwise, before any inference.

    * a converted torchvision model predicts COCO category ids: every category id of the
      dataset must be one of them;
    * the same names in the same order: the dataset's ids are used (a note says so when the
      model recorded other ids);
    * the same names in another order: classes are mapped by name (a note says so).
    """
    data_names = [str(n) for n in dataset.class_names]
    data_ids = [int(i) for i in dataset.category_ids]
    described = f"{flag} has {len(data_names)} ({describe_classes(data_names)})"
    if run.get("torchvision_version"):
        known = {int(i) for i in run.get("class_to_category_id") or range(model.num_classes)}
        unknown = [i for i in data_ids if i not in known]
        if unknown:
            fail(
                f"--model (torchvision {run['torchvision_version']}) predicts COCO category ids "
                f"0..{max(known)} but {flag} has category ids it never predicts, e.g. "
                f"{unknown[:5]} (classes {describe_classes(data_names)})"
            )
        return None
    names = run.get("class_names")
    if names is None:  # no run.json: only the count can be checked
        if model.num_classes != len(data_names):
            fail(f"--model has {model.num_classes} classes but {described}")
        return None
    names = [str(n) for n in names]
    if len(names) != len(data_names):
        fail(f"--model has {len(names)} classes ({describe_classes(names)}) but {described}")
    model_ids = run.get("class_to_category_id")
    if names == data_names:
        if model_ids is not None and [int(i) for i in model_ids] != data_ids:
            _note(
                f"--model's category ids {list(model_ids)[:8]} differ from {flag}'s "
                f"{data_ids[:8]}; the classes are matched by name"
            )
        return None
    if sorted(names) == sorted(data_names):
        by_name = dict(zip(data_names, data_ids, strict=True))
        _note(f"{flag} lists the model's classes in another order; they are matched by name")
        return [by_name[n] for n in names]
    fail(
        f"--model's {len(names)} classes ({describe_classes(names)}) are not the classes of "
        f"{flag} ({describe_classes(data_names)})"
    )


def _note(message):
    print(f"keras-retinanet: note: {message}", file=sys.stderr)


def evaluate_command(args):
    from keras_retinanet.evaluation import format_per_class_table

    json_path = args.json
    kind = args.dataset
    require_file(args.model, "--model")
    if json_path is not None and os.path.isdir(json_path):
        fail(f"--json {json_path!r} is a directory")  # before the (slow) evaluation
    if json_path is not None:
        check_writable(json_path, "--json", folder=False)
    dataset = load_dataset(
        kind,
        args.annotations,
        args.images,
        args.classes,
        args.split,
        "--annotations",
    )
    if len(dataset) == 0:
        fail(f"--annotations {args.annotations!r} lists no images")
    # COCO evaluation of CSV and VOC data scores against their COCO conversion.
    ground_truth = args.annotations if kind == "coco" else dataset.to_coco()
    model, run = load_run(args.model)
    run = {**default_run(), **run}
    category_ids = check_classes(model, run, dataset)  # before any inference
    stats, _ = evaluate_model(model, run, dataset, ground_truth, args.batch_size, category_ids)
    for name in ("AP", "AP50", "AP75"):
        print(f"{name}: {stats[name]:.4f}")
    print(f"mAP@0.5: {stats['AP50']:.4f}")
    if stats.get("per_class"):
        print()
        print(format_per_class_table(stats["per_class"]))
    if json_path is not None:
        _write_json(json_path, stats)
    return 0
