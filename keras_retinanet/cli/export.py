"""``export``: a trained or converted model, decoding and NMS included, as one artifact."""

import contextlib
import os
import shutil

from keras_retinanet.cli._common import (
    check_writable,
    fail,
    first_line,
    load_preset,
    load_run,
    os_error_message,
)


def export_command(args):
    """Writes ``--output`` (a SavedModel folder or an ``.onnx`` file) from ``--model`` (with
    the decoding recorded in ``run.json`` beside it) or ``--preset``/``--weights`` (torchvision's
    decoding)."""
    from keras_retinanet.export import check_format

    try:
        check_format(args.format)  # before loading anything
    except ValueError as e:
        fail(f"--format: {first_line(e)}")
    if args.format == "onnx" and not args.output.endswith(".onnx"):
        fail(f"--output must be a path ending in .onnx for --format onnx, got {args.output!r}")
    if os.path.exists(args.output) and not args.overwrite:
        fail(f"{args.output!r} already exists; pass --overwrite to replace it")
    check_writable(args.output, "--output", folder=False)
    if args.preset is not None:
        model, run = load_preset(args.preset, args.weights)
    else:
        if args.weights is not None:
            fail("--weights goes with --preset (a --model file holds its weights)")
        model, run = load_run(args.model)
    detector = model.make_detector(**(run.get("decoding") or {}))
    image_size = tuple(args.image_size) if args.image_size else None
    existed = os.path.exists(args.output)
    try:
        detector.export(args.output, format=args.format, image_size=image_size, verbose=False)
    except (ValueError, ImportError) as e:
        fail(first_line(e))
    except OSError as e:  # a full disk or a read-only folder: remove what was half written
        if not existed:
            if os.path.isdir(args.output):
                shutil.rmtree(args.output, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.remove(args.output)
        fail(f"--output {args.output!r}: {os_error_message(e)}")
    size = "x".join(map(str, image_size)) if image_size else "any size"
    print(f"{args.format} ({size}, any batch size) -> {args.output}")
    return 0
