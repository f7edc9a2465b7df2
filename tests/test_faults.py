"""Run-time faults of the command line, each reproduced here: a NaN loss, a model whose
classes are not the data set's, an unreadable image, an output that cannot be written (a file
on the way, a read-only folder, a full disk) and a corrupted ``.keras`` file. Each ends with a
one-line ``keras-retinanet: error: ...`` (exit 2, or 3 for the NaN loss) and leaves no
half-written file. So does an annotated image size that is not the file's.

A kill (SIGKILL) during a save or mid-epoch is covered by ``tests/test_checkpoint.py``
(``test_sigkill_during_a_save_keeps_the_previous_file``,
``test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run``) and not repeated here.
Models are tiny (a 16-channel pyramid on 64 px images, one epoch of two steps)."""

import json
import os
import shutil
import subprocess
import zipfile

import keras
import numpy as np
import pytest

from keras_retinanet.cli import main
from keras_retinanet.data import generate_shapes_dataset

BACKEND = keras.backend.backend()
TINY = ["--fpn-filters", "16", "--head-convs", "1", "--image-size", "64", "--batch-size", "4"]
QUIET = ["--verbose", "0"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return generate_shapes_dataset(root, num_train=8, num_val=2, image_size=(64, 64), seed=3)


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory):
    """A folder holding a one-epoch ``model.keras``, ``checkpoint.json`` and ``run.json``."""
    output = tmp_path_factory.mktemp("trained") / "run"
    assert _train(shapes, output) == 0
    return output


def _train(shapes, output, *extra, epochs=1):
    return main(
        [
            "train",
            "--train-annotations",
            str(shapes.train_annotations),
            "--train-images",
            str(shapes.train_images),
            "--output",
            str(output),
            "--epochs",
            str(epochs),
            *TINY,
            *QUIET,
            *extra,
        ]
    )


def _exits(code, argv):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == code


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert err.startswith("keras-retinanet: error: ") and "\n" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def _no_temporaries(folder):
    leftovers = [n for n in os.listdir(folder) if n.startswith(".")]
    assert not leftovers, leftovers


# -- NaN loss ---------------------------------------------------------------------------------


def _finite_checkpoint(output, epochs):
    from keras_retinanet.checkpoint import resume_state

    model, epoch = resume_state(output)
    assert epoch == epochs
    assert all(np.isfinite(keras.ops.convert_to_numpy(w)).all() for w in model.weights)


def test_a_huge_learning_rate_exits_3_and_keeps_only_finite_checkpoints(shapes, tmp_path, capsys):
    """The demo recipe warms the learning rate up, so epoch 1 survives a peak of 1e12 and
    epoch 2 blows up: exit 3, and ``model.keras`` is the epoch-1 model, finite."""
    output = tmp_path / "nan"
    with pytest.raises(SystemExit) as exit_:
        _train(shapes, output, "--learning-rate", "1e12", epochs=3)
    assert exit_.value.code == 3
    err = _one_line_error(capsys, "loss became")
    assert "nan" in err or "inf" in err
    _no_temporaries(output)
    if (output / "model.keras").exists():
        assert "the last good checkpoint is kept" in err
        saved = json.loads((output / "checkpoint.json").read_text())["epoch"]
        assert f"at epoch {saved + 1}," in err
        _finite_checkpoint(output, saved)
    else:
        assert "no epoch completed, so no model was saved" in err


def _poison(model):
    variable = model.trainable_variables[0]
    variable.assign(keras.ops.full(variable.shape, float("nan"), variable.dtype))
    return model


def test_nan_loss_in_the_first_epoch_exits_3_and_saves_no_model(
    shapes, tmp_path, capsys, monkeypatch
):
    import keras_retinanet.cli.train as train

    real = train._model

    def poisoned(*args, **kwargs):
        model, epoch = real(*args, **kwargs)
        return _poison(model), epoch

    monkeypatch.setattr(train, "_model", poisoned)
    output = tmp_path / "nan"
    with pytest.raises(SystemExit) as exit_:
        _train(shapes, output, epochs=2)
    assert exit_.value.code == 3
    _one_line_error(capsys, "at epoch 1,", "no epoch completed, so no model was saved")
    assert not (output / "model.keras").exists() and (output / "run.json").exists()
    _no_temporaries(output)


def test_nan_loss_after_a_good_epoch_keeps_that_epochs_model(
    shapes, trained, tmp_path, capsys, monkeypatch
):
    """Epoch 2 of a resumed run starts from weights made NaN: it stops at once (exit 3) and
    ``model.keras`` stays the byte-identical epoch-1 file, which loads with finite weights."""
    import keras_retinanet.checkpoint as checkpoint

    output = tmp_path / "run"
    shutil.copytree(trained, output)
    good = (output / "model.keras").read_bytes()
    real = checkpoint.resume_state

    def poisoned(folder, *args, **kwargs):
        model, epoch = real(folder, *args, **kwargs)
        return _poison(model), epoch

    monkeypatch.setattr(checkpoint, "resume_state", poisoned)
    with pytest.raises(SystemExit) as exit_:
        _train(shapes, output, "--resume", epochs=2)
    assert exit_.value.code == 3
    _one_line_error(capsys, "at epoch 2", "the last good checkpoint is kept")
    assert (output / "model.keras").read_bytes() == good
    assert json.loads((output / "checkpoint.json").read_text())["epoch"] == 1
    monkeypatch.setattr(checkpoint, "resume_state", real)
    _finite_checkpoint(output, 1)


# -- classes of the model vs the data set -----------------------------------------------------


def _with_categories(shapes, path, edit):
    with open(shapes.val_annotations) as f:
        coco = json.load(f)
    edit(coco)
    with open(path, "w") as f:
        json.dump(coco, f)
    return str(path)


def _evaluate(trained, annotations, images):
    return [
        "evaluate",
        "--model",
        str(trained / "model.keras"),
        "--annotations",
        annotations,
        "--images",
        str(images),
    ]


def test_evaluate_refuses_a_data_set_of_other_classes_before_inference(
    shapes, trained, tmp_path, capsys, monkeypatch
):
    import keras_retinanet.cli.evaluate as evaluate

    def no_inference(*args, **kwargs):
        raise AssertionError("inference ran")

    monkeypatch.setattr(evaluate, "evaluate_model", no_inference)
    names = json.loads((trained / "run.json").read_text())["class_names"]

    def two_more(coco):
        coco["categories"] += [{"id": 90, "name": "star"}, {"id": 91, "name": "hexagon"}]

    five = _with_categories(shapes, tmp_path / "five.json", two_more)
    _exits(2, _evaluate(trained, five, shapes.val_images))
    _one_line_error(
        capsys,
        f"--model has {len(names)} classes ({', '.join(names)})",
        f"--annotations has {len(names) + 2} (",
        "star, hexagon",
    )

    def renamed(coco):
        for c in coco["categories"]:
            c["name"] = "other_" + c["name"]

    other = _with_categories(shapes, tmp_path / "renamed.json", renamed)
    _exits(2, _evaluate(trained, other, shapes.val_images))
    _one_line_error(capsys, "are not the classes of --annotations", "other_")


def test_evaluate_matches_classes_by_name_when_ids_or_order_differ(
    shapes, trained, tmp_path, capsys, monkeypatch
):
    import keras_retinanet.cli.evaluate as evaluate

    seen = {}

    def record(model, run, dataset, annotations, batch_size, class_to_category_id=None):
        seen["ids"] = class_to_category_id
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}, []

    monkeypatch.setattr(evaluate, "evaluate_model", record)
    run = json.loads((trained / "run.json").read_text())

    def shifted(coco):  # the same names, other ids
        for c in coco["categories"]:
            c["id"] += 10
        for a in coco["annotations"]:
            a["category_id"] += 10

    assert main(_evaluate(trained, _with_categories(shapes, tmp_path / "s.json", shifted),
                          shapes.val_images)) == 0  # fmt: skip
    assert seen["ids"] is None  # the data set's ids, class i = name i
    assert "matched by name" in capsys.readouterr().err

    def reversed_(coco):  # the same names, listed in another order with other ids
        ids = {c["name"]: 100 - i for i, c in enumerate(coco["categories"])}
        old = {c["id"]: c["name"] for c in coco["categories"]}
        for a in coco["annotations"]:
            a["category_id"] = ids[old[a["category_id"]]]
        coco["categories"] = [{"id": ids[n], "name": n} for n in reversed(list(ids))]

    assert main(_evaluate(trained, _with_categories(shapes, tmp_path / "r.json", reversed_),
                          shapes.val_images)) == 0  # fmt: skip
    assert seen["ids"] == [100 - i for i in range(len(run["class_names"]))]
    assert "matched by name" in capsys.readouterr().err


def test_a_run_json_of_other_classes_than_the_model_is_refused(shapes, trained, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(trained, folder)
    run = json.loads((folder / "run.json").read_text())
    run["class_names"] = run["class_names"][:1]
    (folder / "run.json").write_text(json.dumps(run))
    image = os.path.join(shapes.val_images, os.listdir(shapes.val_images)[0])
    argv = ["predict", "--model", str(folder / "model.keras"), "--images", image]
    _exits(2, [*argv, "--output", str(tmp_path / "out")])
    _one_line_error(capsys, "classes but", "lists 1 class_names")


# -- unreadable images ------------------------------------------------------------------------


@pytest.fixture
def broken(shapes, tmp_path):
    """A copy of the shapes data set whose second training image is garbage bytes."""
    root = tmp_path / "broken"
    shutil.copytree(shapes.root, root)
    annotations = root / os.path.relpath(shapes.train_annotations, shapes.root)
    images = root / os.path.relpath(shapes.train_images, shapes.root)
    records = json.loads(annotations.read_text())["images"]
    bad = images / records[1]["file_name"]
    bad.write_bytes(b"\x89PNG not really" + os.urandom(64))
    return annotations, images, bad


def _train_on(annotations, images, output, *extra):
    return main(
        [
            "train",
            "--train-annotations",
            str(annotations),
            "--train-images",
            str(images),
            "--output",
            str(output),
            "--epochs",
            "1",
            *TINY,
            *QUIET,
            *extra,
        ]
    )


def test_an_unreadable_training_image_stops_before_training(broken, tmp_path, capsys):
    annotations, images, bad = broken
    output = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        _train_on(annotations, images, output)
    assert exit_.value.code == 2
    _one_line_error(capsys, "--train-annotations", repr(str(bad)), "--skip-unreadable")
    assert not output.exists()


def test_skip_unreadable_trains_without_them_and_records_them(broken, tmp_path, capsys):
    annotations, images, bad = broken
    output = tmp_path / "out"
    assert _train_on(annotations, images, output, "--skip-unreadable") == 0
    err = capsys.readouterr().err
    assert "skipped 1 unreadable image(s)" in err and str(bad) in err
    run = json.loads((output / "run.json").read_text())
    assert run["skipped_images"] == [str(bad)]
    assert (output / "model.keras").exists()


def _with_recorded_size(shapes, tmp_path, index, width, height):
    """A copy of the training annotations whose image ``index`` records ``width`` x ``height``;
    returns the annotation path and the image's ``file_name``."""
    data = json.loads(open(shapes.train_annotations).read())
    data["images"][index].update(width=width, height=height)
    path = tmp_path / "resized.json"
    path.write_text(json.dumps(data))
    return path, data["images"][index]["file_name"]


def test_a_recorded_size_that_is_not_the_files_stops_before_training(shapes, tmp_path, capsys):
    # The shapes images are 64 x 64; the entry says 80 x 64, so boxes would be clipped to it.
    annotations, name = _with_recorded_size(shapes, tmp_path, 2, 80, 64)
    output = tmp_path / "out"
    for extra in ([], ["--skip-unreadable"]):
        with pytest.raises(SystemExit) as exit_:
            _train_on(annotations, shapes.train_images, output, *extra)
        assert exit_.value.code == 2
        _one_line_error(capsys, "--train-annotations", repr(name), "80x64", "is 64x64")
        assert not output.exists()


def test_a_swapped_recorded_size_is_named_an_exif_rotation_mismatch(shapes, tmp_path, capsys):
    from PIL import Image

    images = tmp_path / "images"
    shutil.copytree(shapes.train_images, images)
    data = json.loads(open(shapes.train_annotations).read())
    name = data["images"][0]["file_name"]
    # A 64 x 48 file (stored frame) whose EXIF orientation 6 displays it as 48 x 64, recorded
    # as the stored 64 x 48: annotations made on the unrotated pixels.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (64, 48), (90, 90, 90)).save(images / name, exif=exif.tobytes())
    data["images"][0].update(width=64, height=48)
    annotations = tmp_path / "rotated.json"
    annotations.write_text(json.dumps(data))
    with pytest.raises(SystemExit) as exit_:
        _train_on(annotations, images, tmp_path / "out")
    assert exit_.value.code == 2
    _one_line_error(capsys, repr(name), "64x48", "is 48x64", "EXIF rotation mismatch")


# -- outputs that cannot be written -----------------------------------------------------------


def _blocker(tmp_path):
    """A plain file: ``<it>/sub`` is a path through a file, unwritable even for root."""
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return path


def test_an_output_through_a_file_is_refused_by_every_command(shapes, trained, tmp_path, capsys):
    blocker = _blocker(tmp_path)
    image = os.path.join(shapes.val_images, os.listdir(shapes.val_images)[0])
    model = str(trained / "model.keras")
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"never read")
    export_format = next(
        (f for f, backends in {"tf_saved_model": ("tensorflow", "jax"), "onnx": ("torch",)}
         .items() if BACKEND in backends),
        None,
    )  # fmt: skip
    export_output = str(blocker / ("m.onnx" if export_format == "onnx" else "saved"))
    cases = [
        ["train", "--train-annotations", str(shapes.train_annotations), "--train-images",
         str(shapes.train_images), "--output", str(blocker / "sub"), *TINY, *QUIET],
        ["predict", "--model", model, "--images", image, "--output", str(blocker / "sub")],
        ["shapes", "--output", str(blocker / "sub"), "--num-train", "1", "--num-val", "1"],
        ["demo", "--output", str(blocker / "sub"), "--epochs", "1", "--num-train", "1"],
        ["convert", "--version", "v1", "--weights", str(weights), "--output",
         str(blocker / "m.keras")],
        [*_evaluate(trained, str(shapes.val_annotations), shapes.val_images),
         "--json", str(blocker / "stats.json")],
        ["anchors", "--annotations", str(shapes.train_annotations), "--json",
         str(blocker / "a.json")],
        ["export", "--model", model, "--format", export_format, "--output", export_output],
    ]  # fmt: skip
    for argv in cases:
        _exits(2, argv)
        _one_line_error(capsys, "is a file, not a folder", repr(str(blocker)))
    assert blocker.read_text() == "not a folder"


@pytest.fixture
def read_only_folder(tmp_path):
    """An empty folder this process cannot write to: without write permission for a normal
    user; for root (whom permissions do not stop) a read-only tmpfs, or a skip where mounting
    is not allowed."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    if os.name != "posix":
        pytest.skip("POSIX permissions")
    if os.geteuid() != 0:
        os.chmod(folder, 0o500)
        try:
            yield folder
        finally:
            os.chmod(folder, 0o700)
        return
    if shutil.which("mount") is None:
        pytest.skip("root ignores folder permissions and mount is not installed")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        pytest.skip(f"root ignores folder permissions and cannot mount: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_a_read_only_output_folder_is_refused(shapes, read_only_folder, capsys):
    with pytest.raises(SystemExit) as exit_:
        _train(shapes, read_only_folder / "run")
    assert exit_.value.code == 2
    _one_line_error(capsys, "permission denied (or read-only)", repr(str(read_only_folder)))
    assert os.listdir(read_only_folder) == []


@pytest.fixture
def small_disk(tmp_path, trained):
    """A tmpfs holding one checkpoint of the tiny model but not a second copy, or a skip."""
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root on Linux")
    size = os.path.getsize(trained / "model.keras")
    kib = (size * 3 // 2) // 1024 + 16
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def test_a_full_disk_keeps_the_previous_checkpoint(shapes, small_disk, capsys):
    output = small_disk / "run"
    with pytest.raises(SystemExit) as exit_:
        _train(shapes, output, epochs=2)
    assert exit_.value.code == 2
    _one_line_error(capsys, "could not save", "No space left on device", "previous file is kept")
    _no_temporaries(output)
    assert json.loads((output / "checkpoint.json").read_text())["epoch"] == 1
    from keras_retinanet.checkpoint import resume_state

    model, epoch = resume_state(output)
    assert epoch == 1 and model.optimizer is not None


# -- corrupted model files --------------------------------------------------------------------


def test_a_corrupted_model_file_is_named_as_such(shapes, trained, tmp_path, capsys):
    good = (trained / "model.keras").read_bytes()
    image = os.path.join(shapes.val_images, os.listdir(shapes.val_images)[0])
    truncated_zip = good[: len(good) // 2]
    # A zip whose entries are intact but whose model config is garbage.
    bad_config = tmp_path / "bad_config.keras"
    with zipfile.ZipFile(bad_config, "w") as archive:
        archive.writestr("config.json", "{not json")
        archive.writestr("metadata.json", "{}")
    contents = {"random": os.urandom(4096), "empty": b"", "truncated": truncated_zip}
    paths = [bad_config]
    for name, data in contents.items():
        path = tmp_path / f"{name}.keras"
        path.write_bytes(data)
        paths.append(path)
    for path in paths:
        argv = ["predict", "--model", str(path), "--images", image]
        _exits(2, [*argv, "--output", str(tmp_path / "out" / path.stem)])
        _one_line_error(capsys, repr(str(path)), "is corrupted or not a .keras file")
