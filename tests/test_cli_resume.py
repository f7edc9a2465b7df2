"""``train --resume``: continue from the last completed epoch with the saved optimizer state."""

import json

import keras
import pytest

from keras_retinanet.cli import main
from keras_retinanet.data import generate_shapes_dataset


def _train(paths, output, epochs, *extra):
    argv = [
        "train",
        "--train-annotations",
        str(paths.train_annotations),
        "--train-images",
        str(paths.train_images),
        "--output",
        str(output),
        "--epochs",
        str(epochs),
        "--batch-size",
        "4",
        "--fpn-filters",
        "16",
        "--head-convs",
        "1",
        "--image-size",
        "64",
        "--verbose",
        "0",
    ]
    return main([*argv, *extra])


def test_resume_continues_from_the_last_completed_epoch(tmp_path, capsys):
    paths = generate_shapes_dataset(
        tmp_path / "shapes", num_train=8, num_val=1, image_size=(64, 64), max_object_size=32
    )
    out = tmp_path / "run"
    assert _train(paths, out, 1) == 0
    assert json.loads((out / "checkpoint.json").read_text())["epoch"] == 1
    assert _train(paths, out, 2, "--resume") == 0
    assert json.loads((out / "checkpoint.json").read_text())["epoch"] == 2
    model = keras.saving.load_model(out / "model.keras")
    # 8 images in batches of 4: 2 steps per epoch, and the step count went on from 2.
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 4
    assert _train(paths, out, 2, "--resume") == 0
    assert "already holds 2 epochs" in capsys.readouterr().out


def test_resume_without_a_checkpoint_exits_2(tmp_path, capsys):
    paths = generate_shapes_dataset(
        tmp_path / "shapes", num_train=2, num_val=1, image_size=(64, 64), max_object_size=32
    )
    with pytest.raises(SystemExit) as exit_:
        _train(paths, tmp_path / "empty", 1, "--resume")
    assert exit_.value.code == 2
    assert "holds no checkpoint" in capsys.readouterr().err
