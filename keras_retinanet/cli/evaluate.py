"""``evaluate``: COCO AP of a trained model."""

from keras_retinanet.cli._common import (
    default_run,
    fail,
    load_coco,
    load_run,
    require_dir,
    require_file,
    sizes,
)


def evaluate_model(model, run, dataset, annotations, batch_size):
    """COCO AP of ``model`` on ``dataset``, with the resize, ``normalization`` and
    ``decoding`` of ``run`` (as :func:`~keras_retinanet.cli.predict.draw_predictions`)."""
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


def evaluate_command(args):
    require_file(args.model, "--model")
    require_file(args.annotations, "--annotations")
    require_dir(args.images, "--images")
    dataset = load_coco(args.annotations, args.images, "--annotations")
    if len(dataset) == 0:
        fail(f"--annotations {args.annotations!r} lists no images")
    model, run = load_run(args.model)
    run = {**default_run(), **run}
    stats, _ = evaluate_model(model, run, dataset, args.annotations, args.batch_size)
    for name in ("AP", "AP50", "AP75"):
        print(f"{name}: {stats[name]:.4f}")
    print(f"mAP@0.5: {stats['AP50']:.4f}")
    return 0
