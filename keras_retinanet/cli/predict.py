"""``predict``: draw detections and write a COCO-results JSON."""

import contextlib
import os

from keras_retinanet.cli._common import (
    check_output,
    default_run,
    fail,
    first_line,
    load_preset,
    load_run,
    make_output_dir,
    os_error_message,
    require_file,
    sizes,
    with_sizes,
    write_json_file,
)


def image_records(image_paths):
    """``{"image_id", "path", "height", "width"}`` per image, or exit 2 on an unreadable file."""
    from keras_retinanet.data.preprocessing import load_image

    records = []
    for i, path in enumerate(image_paths):
        try:
            height, width = load_image(path).shape[:2]
        except (ValueError, OSError) as e:
            fail(f"--images: {first_line(e)}")
        records.append({"image_id": i, "path": path, "height": height, "width": width})
    return records


def draw_predictions(model, run, records, output, score_threshold, batch_size):
    """Detects objects in the images of ``records`` (from :func:`image_records`); writes
    annotated PNGs and ``detections.json`` into ``output``.

    ``run`` (``run.json``) gives the resize (``min_side``, ``max_side``, ``stride``,
    ``image_size``), the input ``normalization`` (``"caffe"`` unless given), the
    ``make_detector`` arguments (``decoding``; the keras.io defaults unless given), the
    ``class_names`` and the ``class_to_category_id`` written to ``detections.json``."""
    import keras

    from keras_retinanet.data import InferenceBatches
    from keras_retinanet.data.preprocessing import load_image
    from keras_retinanet.inference import detect_batch
    from keras_retinanet.visualization import draw_detections

    batches = InferenceBatches(
        records,
        batch_size=batch_size,
        normalization=run.get("normalization", "caffe"),
        **sizes(run),
    )
    detector = model.make_detector(**run.get("decoding", {}))
    names = run.get("class_names") or [str(i) for i in range(model.num_classes)]
    # Without run.json the classes are reported as their own (contiguous) category ids.
    category_ids = run.get("class_to_category_id") or list(range(model.num_classes))
    make_output_dir(output)
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
            pixels = load_image(record["path"])
            try:
                draw_detections(
                    pixels,
                    b[keep],
                    classes[row, :n][keep],
                    scores[row, :n][keep],
                    class_names=names,
                    path=path,
                )
            except OSError as e:  # a full disk or a read-only folder: no half-written PNG
                with contextlib.suppress(OSError):
                    os.remove(path)
                fail(f"--output {output!r}: {os_error_message(e)}")
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
    write_json_file(results, os.path.join(output, "detections.json"), "--output", indent=1)
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
            fail(f"--images entry {item!r} is neither a file nor a directory")
    if not paths:
        fail("--images holds no .png/.jpg/.jpeg/.bmp images")
    return paths


def predict_command(args):
    if args.weights is not None and args.preset is None:
        fail("--weights goes with --preset (a --model .keras file holds its own weights)")
    if args.model is not None:
        require_file(args.model, "--model")  # before the (slower) image-folder scan
    if args.weights is not None:
        require_file(args.weights, "--weights")
    paths = _image_paths(args.images)
    check_output(args.output, args.overwrite)
    records = image_records(paths)  # every image decodes before the model is loaded
    if args.preset is not None:
        model, run = load_preset(args.preset, args.weights)
    else:
        model, run = load_run(args.model)
    run = with_sizes({**default_run(), **run}, args.min_side, args.max_side)
    written, results = draw_predictions(
        model, run, records, args.output, args.score_threshold, args.batch_size
    )
    print(f"{len(results)} detections in {len(written)} images -> {args.output}")
    return 0
