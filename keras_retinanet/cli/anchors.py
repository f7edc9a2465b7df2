"""``anchors``: which ground-truth boxes no anchor matches, per size bucket.

Runs :func:`keras_retinanet.anchor_coverage.anchor_coverage` on a COCO, CSV or Pascal VOC data
set and prints the table (optionally writing it as JSON too), so anchors can be tuned before
training. Only annotations and image sizes are read, never pixels: COCO and VOC annotations
hold the sizes, CSV reads each image's header.
"""

import os

from keras_retinanet.cli._common import (
    DEMO_ANCHOR_AREAS,
    check_writable,
    fail,
    first_line,
    positive,
    require_dir,
    require_file,
    write_json_file,
)

#: The resize of ``DetectionDataset`` (docs/numerics.md, "Input preprocessing"), used unless
#: ``--image-size`` (or ``--min-side`` / ``--max-side``) is given.
DEFAULT_MIN_SIDE = 800
DEFAULT_MAX_SIDE = 1333


def add_anchors_parser(subparsers):
    """Adds the ``anchors`` command to ``subparsers`` (``ArgumentParser.add_subparsers()``)."""
    p = subparsers.add_parser(
        "anchors", help="report which ground-truth boxes no anchor matches, per size bucket"
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--annotations", help="COCO instances JSON (image sizes are read from it)")
    source.add_argument("--csv", metavar="ANNOTATIONS", help="CSV annotations (needs --classes)")
    source.add_argument("--voc", metavar="ROOT", help="Pascal VOC folder (VOC2007 or VOC2012)")
    p.add_argument(
        "--images",
        help="with --annotations: the image folder, checked to hold every listed image "
        "(optional, the sizes come from the JSON)",
    )
    p.add_argument("--classes", help="with --csv: the CSV classes file")
    p.add_argument(
        "--voc-split", help="with --voc: image-set name or file (default trainval)", default=None
    )
    p.add_argument(
        "--anchors",
        choices=("small", "paper"),
        default="paper",
        help="anchor areas 16^2..256^2 (small, train's default) or the paper's 32^2..512^2 "
        "(default paper)",
    )
    p.add_argument(
        "--min-side",
        type=positive(int),
        help=f"resize the short side to this (default {DEFAULT_MIN_SIDE}, or --image-size)",
    )
    p.add_argument(
        "--max-side",
        type=positive(int),
        help=f"cap on the long side after resizing (default {DEFAULT_MAX_SIDE}, or --image-size)",
    )
    p.add_argument(
        "--image-size",
        type=positive(int),
        metavar="SIZE",
        help="fit every image into a SIZE x SIZE input as train --image-size does (also the "
        "default --min-side and --max-side)",
    )
    p.add_argument("--worst", type=int, default=20, help="list this many lowest-IoU boxes")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON to FILE")
    p.set_defaults(func=anchors_command)
    return p


def anchors_command(args):
    """Prints the coverage table of ``args``' data set; returns 0. Bad input exits 2."""
    from keras_retinanet.anchor_coverage import anchor_coverage

    if args.worst < 0:
        fail(f"--worst must be a non-negative integer, got {args.worst}")
    if args.json:
        if os.path.isdir(args.json):
            fail(f"--json {args.json!r} is a directory")
        check_writable(args.json, "--json", folder=False)  # before reading the data set
    dataset = _load_dataset(args)
    min_side, max_side, image_size = _resize_options(args)
    try:
        report = anchor_coverage(
            dataset,
            anchor_generator=_anchor_generator(args.anchors),
            min_side=min_side,
            max_side=max_side,
            image_size=image_size,
            num_worst=args.worst,
        )
    except (ValueError, OSError) as e:
        fail(first_line(e))
    print(report.to_text())
    if args.json:
        _write_json(args.json, report.to_dict())
    return 0


def _load_dataset(args):
    """The data set named by ``--annotations``, ``--csv`` or ``--voc``; exits 2 when the
    files are missing or malformed, or the flags do not go together."""
    from keras_retinanet.data import CocoDataset, CsvDataset, VocDataset

    if args.images is not None and args.annotations is None:
        fail("--images goes with --annotations")
    if args.classes is not None and args.csv is None:
        fail("--classes goes with --csv")
    if args.voc_split is not None and args.voc is None:
        fail("--voc-split goes with --voc")
    if args.annotations is not None:
        require_file(args.annotations, "--annotations")
        if args.images is not None:
            require_dir(args.images, "--images")
        flag, make = "--annotations", lambda: CocoDataset(args.annotations, args.images)
    elif args.csv is not None:
        require_file(args.csv, "--csv")
        if args.classes is None:
            fail("--csv needs --classes")
        require_file(args.classes, "--classes")
        flag, make = "--csv", lambda: CsvDataset(args.csv, args.classes)
    else:
        require_dir(args.voc, "--voc")
        split = args.voc_split or "trainval"
        flag, make = "--voc", lambda: VocDataset(args.voc, split=split)
    try:
        dataset = make()
    except (ValueError, OSError) as e:
        fail(f"{flag}: {first_line(e)}")
    if args.images is not None:
        missing = [r["file_name"] for r in dataset.records if not os.path.isfile(r["path"])]
        if missing:
            fail(
                f"--annotations {args.annotations!r} lists {len(missing)} image(s) missing from "
                f"{args.images!r}, e.g. {missing[0]!r}"
            )
    if len(dataset.records) == 0:
        fail(f"{flag}: the data set lists no images")
    return dataset


def _resize_options(args):
    """``(min_side, max_side, image_size)``: ``--image-size N`` fits images into ``N x N``
    with ``N`` also the default sides, as ``train`` does."""
    size = args.image_size
    default_min = DEFAULT_MIN_SIDE if size is None else size
    default_max = DEFAULT_MAX_SIDE if size is None else size
    min_side = default_min if args.min_side is None else args.min_side
    max_side = default_max if args.max_side is None else args.max_side
    return min_side, max_side, None if size is None else (size, size)


def _anchor_generator(kind):
    """``train --anchors``' generator: ``small`` (``DEMO_ANCHOR_AREAS``) or ``paper``."""
    from keras_retinanet.anchors import AnchorGenerator

    return AnchorGenerator(areas=DEMO_ANCHOR_AREAS) if kind == "small" else AnchorGenerator()


def _write_json(path, data):
    write_json_file(data, path, "--json")
