"""Settings and input checks shared by the commands."""

import argparse
import contextlib
import copy
import json
import os
import sys
import zipfile

# Settings the demo uses (and ``train`` defaults to): a compact backbone and anchors one
# octave smaller than the paper's, sized for 128 x 128 images whose objects are 10-64 px.
from keras_retinanet.recipes import DEMO_ANCHOR_AREAS, DEMO_IMAGE_SIZE  # noqa: F401

#: ``--dataset`` formats.
DATASET_FORMATS = ("coco", "csv", "voc")
RUN_FILE = "run.json"
#: Where ``demo`` writes when ``--output`` is not given; each demo run reuses it.
DEMO_OUTPUT = os.path.join("runs", "demo")


def fail(message):
    """Exits with status 2 and a one-line message, argparse-style, without a traceback."""
    print(f"keras-retinanet: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def require_file(path, what):
    if path is None or not os.path.isfile(path):
        fail(f"{what} {path!r} is not an existing file")


def require_dir(path, what):
    if path is None or not os.path.isdir(path):
        fail(f"{what} {path!r} is not an existing directory")


def check_output(path, overwrite, flag="--output"):
    """Exits (status 2) unless ``path`` is new, an empty folder, or ``overwrite`` is set, and
    the folder can be created and written to (no file on the way, write permission)."""
    if os.path.exists(path) and not os.path.isdir(path):
        fail(f"{flag} {path!r} exists and is not a directory")
    if not overwrite and os.path.isdir(path) and os.listdir(path):
        fail(
            f"{flag} {path!r} already exists and is not empty; pass --overwrite to write "
            f"into it (files of the same name are replaced) or choose another {flag}"
        )
    check_writable(path, flag)


def check_writable(path, flag, *, folder=True):
    """Exits (status 2) when ``path`` (a folder, or with ``folder=False`` a file) cannot be
    written: a file on its way (``some_file/sub``), or its nearest existing folder read-only or
    not writable by this user. Nothing is created."""
    path = os.path.abspath(os.fspath(path))
    target = path if folder else os.path.dirname(path)
    existing = target
    while not os.path.exists(existing):
        parent = os.path.dirname(existing)
        if parent == existing:
            break
        existing = parent
    if not os.path.isdir(existing):
        fail(f"{flag} {path!r} cannot be written: {existing!r} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        fail(f"{flag} {path!r} cannot be written: permission denied (or read-only) on {existing!r}")
    if not folder and os.path.exists(path) and not os.access(path, os.W_OK):
        fail(f"{flag} {path!r} cannot be written: permission denied")


def os_error_message(error):
    """One line for an ``OSError``: the reason and the file, without the errno prefix."""
    if isinstance(error, OSError) and error.strerror:
        name = error.filename
        return f"{error.strerror}: {name!r}" if name is not None else error.strerror
    return first_line(error)


@contextlib.contextmanager
def writing(what):
    """Turns an ``OSError`` of the block (permission denied, read-only or full disk, a file on
    the way) into ``keras-retinanet: error: <what>: <reason>``, exit 2."""
    try:
        yield
    except OSError as e:
        fail(f"{what}: {os_error_message(e)}")


def make_output_dir(path, flag="--output"):
    """``os.makedirs(path, exist_ok=True)``, or exit 2 with the reason."""
    with writing(f"{flag} {path!r}"):
        os.makedirs(path, exist_ok=True)


def write_json_file(data, path, flag, *, indent=2):
    """Writes ``data`` as JSON (``indent``, a final newline) to ``path`` through a temporary
    file and a rename, so a full disk never leaves half a file; exit 2 on any ``OSError``."""
    import tempfile

    text = json.dumps(data, indent=indent) + "\n"
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    with writing(f"{flag} {path!r}"):
        try:
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            tmp = None
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.remove(tmp)


def remove_if_empty(path):
    """Removes the folder ``path`` when it exists and is empty (a run that wrote nothing)."""
    with contextlib.suppress(OSError):
        os.rmdir(path)


def _image_problem(path):
    """``None`` when ``path`` opens as an image (its header and, for PNG, chunk checksums);
    otherwise the one-line reason."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.verify()
    except Exception as e:  # UnidentifiedImageError, SyntaxError (bad PNG chunks), ...
        return first_line(e)
    return None


#: Datasets larger than this show a progress bar while their images are checked.
PROGRESS_OVER = 1000
#: How many skipped images the ``--skip-unreadable`` message names.
NAMED_SKIPPED = 5


def check_images_readable(dataset, flag, skip=False, verbose=1):
    """``(dataset, skipped)``: checks that every image of ``dataset.records`` opens, and that
    the size its annotations give (COCO ``width``/``height``, VOC ``<size>``) is the file's,
    before any training. On the first unreadable one exits (status 2) naming it and ``flag``,
    unless ``skip``: then the returned dataset is a copy without the unreadable records,
    ``skipped`` their paths (a message says how many and which). A size mismatch always exits
    (status 2) naming the image and both sizes: boxes clipped to the wrong size are wrong
    labels, not a missing image, so ``skip`` does not drop them."""
    records = list(dataset.records)
    progress = None
    if verbose and len(records) > PROGRESS_OVER:
        import keras

        print(f"checking the {len(records)} images of {flag}")
        progress = keras.utils.Progbar(len(records), unit_name="image")
    keep, skipped = [], []
    for i, record in enumerate(records):
        problem = _image_problem(record["path"])
        if problem is None:  # readable: the size it records (COCO, VOC) must be the file's
            from keras_retinanet.data.verify import check_record

            mismatch = check_record(record, flag)
            if mismatch is not None:
                fail(mismatch)
        if problem is not None:
            if not skip:
                fail(
                    f"{flag}: image {record['path']!r} is unreadable ({problem}); pass "
                    "--skip-unreadable to train without it"
                )
            skipped.append(record["path"])
        else:
            keep.append(record)
        if progress is not None and (i + 1) % 100 == 0:
            progress.update(i + 1)
    if progress is not None:
        progress.update(len(records), finalize=True)
    if not skipped:
        return dataset, []
    if not keep:
        fail(f"{flag}: none of its {len(records)} images is readable")
    named = ", ".join(repr(p) for p in skipped[:NAMED_SKIPPED])
    more = f" and {len(skipped) - NAMED_SKIPPED} more" if len(skipped) > NAMED_SKIPPED else ""
    print(f"{flag}: skipped {len(skipped)} unreadable image(s): {named}{more}", file=sys.stderr)
    filtered = copy.copy(dataset)
    filtered.records = keep
    return filtered, skipped


def first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_coco(annotations, images, flag):
    """``CocoDataset`` whose every listed image file exists, or exit 2 naming ``flag``."""
    from keras_retinanet.data import CocoDataset

    try:
        dataset = CocoDataset(annotations, images)
    except (ValueError, OSError) as e:
        fail(f"{flag}: {first_line(e)}")
    missing = [r["file_name"] for r in dataset.records if not os.path.isfile(r["path"])]
    if missing:
        fail(
            f"{flag} {annotations!r} lists {len(missing)} image(s) missing from {images!r}, "
            f"e.g. {missing[0]!r}"
        )
    return dataset


def load_dataset(kind, annotations, images, classes, split, flag):
    """The dataset of format ``kind`` (``"coco"``, ``"csv"``, ``"voc"``), every listed image
    existing, or exit 2 with a one-line message naming ``flag`` (and the file and line the
    readers name).

    * coco: ``annotations`` the instances JSON, ``images`` its image folder.
    * csv: ``annotations`` the ``path,x1,y1,x2,y2,class`` file, ``classes`` the
      ``class,id`` file, ``images`` the folder relative paths start from (default: the CSV's).
    * voc: ``annotations`` the ``VOC2007``-style root (``Annotations/``, ``JPEGImages/``,
      ``ImageSets/Main/``), ``split`` an image-set name or file, ``classes`` an optional
      ``class,id`` file replacing the 20 VOC classes.
    """
    from keras_retinanet.data import CsvDataset, VocDataset, read_csv_classes

    if kind not in DATASET_FORMATS:
        fail(f"--dataset must be one of {', '.join(DATASET_FORMATS)}, got {kind!r}")
    if kind == "coco":
        require_file(annotations, flag)
        if images is None:
            fail(f"{flag} (COCO) needs its image folder: --{flag[2:].split('-')[0]}-images")
        require_dir(images, flag.replace("annotations", "images"))
        return load_coco(annotations, images, flag)
    try:
        if kind == "csv":
            require_file(annotations, flag)
            if classes is None:
                fail(f"{flag} (CSV) needs its classes file: --classes")
            require_file(classes, "--classes")
            if images is not None:
                require_dir(images, flag.replace("annotations", "images"))
            dataset = CsvDataset(annotations, classes, base_dir=images)
        else:
            require_dir(annotations, flag)
            names = {} if classes is None else {"classes": read_csv_classes(classes)}
            dataset = VocDataset(annotations, split=split, **names)
    except (ValueError, OSError) as e:
        fail(f"{flag}: {first_line(e)}")
    missing = [r["path"] for r in dataset.records if not os.path.isfile(r["path"])]
    if missing:
        fail(f"{flag} {annotations!r} lists {len(missing)} missing image(s), e.g. {missing[0]!r}")
    return dataset


def positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value

    return parse


def fraction(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def sizes(run):
    """The resize options of ``run`` (``InferenceBatches``/``DetectionDataset`` keywords)."""
    return {
        "min_side": run["min_side"],
        "max_side": run["max_side"],
        "stride": run["stride"],
        "image_size": tuple(run["image_size"]) if run.get("image_size") else None,
    }


def with_sizes(run, min_side=None, max_side=None):
    """``run`` with ``--min-side``/``--max-side`` overrides; either one drops a fixed
    ``image_size``, so the resize follows the sides given."""
    if min_side is None and max_side is None:
        return run
    run = {**run, "image_size": None}
    if min_side is not None:
        run["min_side"] = min_side
    if max_side is not None:
        run["max_side"] = max_side
    return run


def default_run():
    size = DEMO_IMAGE_SIZE
    return {"min_side": size, "max_side": size, "stride": 128, "image_size": [size, size]}


def load_run(model_path):
    """The model and the ``run.json`` written beside it by ``train``."""
    import keras

    import keras_retinanet  # noqa: F401  (registers the serializable classes)

    require_file(model_path, "--model")
    run_path = os.path.join(os.path.dirname(os.path.abspath(model_path)), RUN_FILE)
    run = {}
    if os.path.isfile(run_path):
        try:
            with open(run_path) as f:
                run = json.load(f)
        except (ValueError, OSError) as e:
            fail(f"{run_path!r} beside --model is not readable JSON: {first_line(e)}")
        if not isinstance(run, dict):
            fail(f"{run_path!r} beside --model must hold a JSON object")
    # Keras says "File not found" of a file that is not a zip archive (random bytes, empty,
    # truncated); say what it is.
    if not zipfile.is_zipfile(model_path):
        fail(f"--model {model_path!r} is corrupted or not a .keras file (not a zip archive)")
    try:
        model = keras.saving.load_model(model_path)
    except Exception as e:  # Keras reports a bad file as ValueError, BadZipFile, KeyError, ...
        fail(f"--model {model_path!r} is corrupted or not a .keras file: {first_line(e)}")
    names = run.get("class_names")
    num_classes = getattr(model, "num_classes", None)
    if names is not None and num_classes is not None and len(names) != num_classes:
        fail(
            f"--model {model_path!r} has {num_classes} classes but {run_path!r} beside it "
            f"lists {len(names)} class_names ({describe_classes(names)})"
        )
    return model, run


def describe_classes(names, limit=8):
    """``"circle, square, triangle"``; the first ``limit`` names and a count beyond."""
    names = [str(n) for n in names]
    text = ", ".join(names[:limit])
    return text + (f", ... {len(names) - limit} more" if len(names) > limit else "")


def load_preset(name, weights, flag="--preset"):
    """A model converted from preset ``name``'s checkpoint (``weights``: a local file, or
    ``None`` to download it) and the ``run.json`` entries that run it as torchvision does.
    Exits (status 2) with the reason when the file is missing, corrupt or unreadable, or the
    download fails."""
    from keras_retinanet.presets import from_preset, get_preset

    try:
        preset = get_preset(name)
    except ValueError as e:
        fail(f"{flag}: {first_line(e)}")
    if weights is not None:
        require_file(weights, "--weights")
    try:
        # The command line's pipelines yield [N, H, W, 3] batches.
        model = from_preset(preset, weights=weights, data_format="channels_last")
    except Exception as e:  # also the readers' own errors (a truncated .pth or .safetensors)
        fail(f"{flag} {preset.name}: {first_line(e)}")
    return model, preset.run_config()
