"""Checking a data set's image files against its annotations before training.

:func:`verify_images` opens every image of a list of records and reports files that are
missing or unreadable and stored sizes that differ from the file's. Only headers are read
(``PIL.Image.open`` is lazy and :func:`~keras_retinanet.data.preprocessing.image_size` never
calls ``load()``), so a check costs one small file read per image, typically well under a
millisecond from a local disk; it is *not* run by the data set constructors, so that
opening a large annotation file stays fast. A truncated file whose header is intact passes
this check and still fails, with a ``ValueError`` naming it, when its pixels are loaded.

Sizes are compared in the displayed (EXIF-rotated) frame, the frame annotations refer to
(see :mod:`keras_retinanet.data.preprocessing`). A file whose size is the stored size with
width and height exchanged is reported as an EXIF-rotation mismatch: the annotations were
most likely made on the stored, unrotated pixels (or the stored size was copied from them),
and boxes would land in the wrong frame.
"""

import os

from keras_retinanet.data.preprocessing import image_size


def verify_images(records, *, what="data set", raise_errors=True, progress=None):
    """Check that every record's image file is readable and has the recorded size.

    Args:
        records: iterable of dicts with ``path`` (records with ``path`` ``None`` are skipped)
            and optionally ``width`` / ``height`` (the size the annotations assume) and
            ``file_name`` (used in messages; ``path`` otherwise).
        what: name of the data set in messages, e.g. the annotation file.
        raise_errors: raise a ``ValueError`` at the first problem (default); otherwise check
            every record and return all problems.
        progress: optional callable ``progress(done, total)`` called after each record
            (``total`` is ``None`` for a plain iterator).

    Returns:
        A list of one-line problem descriptions (empty when all is well; only non-empty with
        ``raise_errors=False``).

    Raises:
        ValueError: with ``raise_errors``, naming ``what``, the image, and for a size
            mismatch the recorded size, the file's size and whether they are the same
            size swapped (an EXIF rotation mismatch).
    """
    try:
        total = len(records)
    except TypeError:
        total = None
    problems = []
    for done, rec in enumerate(records, start=1):
        problem = check_record(rec, what)
        if problem is not None:
            if raise_errors:
                raise ValueError(problem)
            problems.append(problem)
        if progress is not None:
            progress(done, total)
    return problems


def check_record(rec, what="data set"):
    """``None`` when ``rec``'s image file reads and has the recorded size (if any); otherwise
    the one-line problem, naming ``what`` and the image (header read only)."""
    path = rec.get("path")
    if path is None:
        return None
    path = os.fspath(path)
    name = rec.get("file_name") or path
    try:
        width, height = image_size(path)
    except FileNotFoundError:
        return f"{what}: image {name!r}: file not found: {path}"
    except ValueError as e:
        return f"{what}: image {name!r}: unreadable: {e}"
    return size_problem(rec, width, height, what)


def size_problem(rec, width, height, what="data set"):
    """``None`` when ``rec`` records no size or the size ``width`` x ``height`` of its file (in
    the displayed, EXIF-oriented frame); otherwise the one-line description of the mismatch,
    naming ``what``, the image and both sizes, and saying when they are the same size swapped
    (an EXIF rotation mismatch)."""
    path = os.fspath(rec.get("path"))
    name = rec.get("file_name") or path
    expected_w, expected_h = rec.get("width"), rec.get("height")
    if expected_w is None or expected_h is None:
        return None
    expected_w, expected_h = int(expected_w), int(expected_h)
    if (width, height) == (expected_w, expected_h):
        return None
    message = (
        f"{what}: image {name!r}: annotations give width x height {expected_w}x{expected_h} "
        f"but the file ({path}) is {width}x{height} in its displayed (EXIF-oriented) frame"
    )
    if (width, height) == (expected_h, expected_w):
        message += (
            "; that is the annotated size swapped: an EXIF rotation mismatch (the size, and "
            "maybe the boxes, were taken from the stored, unrotated pixels; if the boxes are "
            "in the stored frame, remove the file's EXIF orientation tag, otherwise correct "
            "the recorded width/height)"
        )
    else:
        message += "; boxes would be clipped or dropped against the wrong size"
    return message
