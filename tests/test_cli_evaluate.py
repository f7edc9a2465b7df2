"""``python -m keras_retinanet evaluate``: the summary lines, the per-class table and ``--json``,
on a tiny untrained model saved with its ``run.json`` (no training, a few seconds)."""

import argparse
import json
import os

import keras
import pytest

pytest.importorskip("pycocotools")

from keras_retinanet import RetinaNet, compact_backbone  # noqa: E402
from keras_retinanet.cli import RUN_FILE, build_parser  # noqa: E402
from keras_retinanet.cli.evaluate import add_evaluate_arguments, evaluate_command  # noqa: E402
from keras_retinanet.data import generate_shapes_dataset  # noqa: E402
from keras_retinanet.data.shapes import SHAPE_CLASSES  # noqa: E402

SIZE = 64


def _save(folder, num_classes, run):
    """A tiny RetinaNet whose class prior (0.3) is above the decoder's score threshold, so an
    untrained model still reports detections; ``run`` is written beside it as ``run.json``."""
    keras.utils.set_random_seed(0)
    model = RetinaNet(
        num_classes,
        backbone=compact_backbone(widths=(8, 16, 16, 16)),
        fpn_filters=8,
        head_convs=1,
        prior_probability=0.3,
        data_format="channels_last",
    )
    model(keras.ops.zeros((1, SIZE, SIZE, 3)))
    os.makedirs(folder, exist_ok=True)
    model.save(os.path.join(folder, "model.keras"))
    sizes = {"min_side": SIZE, "max_side": SIZE, "stride": 128, "image_size": [SIZE, SIZE]}
    with open(os.path.join(folder, RUN_FILE), "w") as f:
        json.dump({**sizes, **run}, f)
    return os.path.join(folder, "model.keras")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes_dataset(root, num_train=1, num_val=3, image_size=(SIZE, SIZE), seed=1)
    annotations = root / "annotations" / "instances_val.json"
    return str(annotations), str(root / "val"), json.loads(annotations.read_text())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model as ``train`` leaves it: class index i is category ``i + 1``."""
    run = {
        "class_names": list(SHAPE_CLASSES),
        "class_to_category_id": list(range(1, len(SHAPE_CLASSES) + 1)),
    }
    return _save(tmp_path_factory.mktemp("trained"), len(SHAPE_CLASSES), run)


def _args(model, annotations, images, json_path=None):
    """The parsed ``evaluate`` command line (with ``--json json_path`` when given)."""
    argv = ["evaluate", "--model", model, "--annotations", annotations, "--images", images]
    return build_parser().parse_args(argv + (["--json", json_path] if json_path else []))


def _summary_and_table(out):
    lines = out.strip().splitlines()
    summary = dict(line.split(": ") for line in lines[:4])
    assert list(summary) == ["AP", "AP50", "AP75", "mAP@0.5"]
    assert lines[4] == ""
    return summary, lines[5:]


def test_evaluate_prints_a_per_class_table_and_writes_json(trained, shapes, tmp_path, capsys):
    annotations, images, truth = shapes
    json_path = tmp_path / "metrics" / "eval.json"  # the folder is created
    assert evaluate_command(_args(trained, annotations, images, str(json_path))) == 0
    summary, table = _summary_and_table(capsys.readouterr().out)
    stats = json.loads(json_path.read_text())

    for name in ("AP", "AP50", "AP75"):
        assert summary[name] == f"{stats[name]:.4f}"
    assert summary["mAP@0.5"] == f"{stats['AP50']:.4f}"
    assert {"AP", "AP50", "AP75", "APs", "AR100", "per_class"} <= set(stats)

    per_class = stats["per_class"]
    assert [row["name"] for row in per_class] == list(SHAPE_CLASSES)
    assert [row["category_id"] for row in per_class] == [1, 2, 3]
    for row in per_class:
        expected = [a for a in truth["annotations"] if a["category_id"] == row["category_id"]]
        assert row["num_gt"] == len(expected)
    assert sum(row["num_detections"] for row in per_class) > 0  # the raised prior

    assert table[0].split() == ["id", "category", "AP", "AP50", "AP75", "#gt", "#det"]
    rows = [line.split() for line in table[2:-2]]
    assert [r[1] for r in rows] == list(SHAPE_CLASSES)
    assert table[-1].split()[:4] == ["all", summary["AP"], summary["AP50"], summary["AP75"]]
    assert len({len(line) for line in table}) == 1  # aligned


def test_converted_torchvision_model_is_named_from_the_annotation_file(shapes, tmp_path, capsys):
    """A converted model's labels are category ids (``class_to_category_id`` of run.json is
    the identity); label 0 is no category of this file and is not scored."""
    annotations, images, _ = shapes
    model = _save(
        tmp_path / "converted",
        4,
        {"torchvision_version": "v1", "class_to_category_id": [0, 1, 2, 3]},
    )
    assert evaluate_command(_args(model, annotations, images)) == 0
    _, table = _summary_and_table(capsys.readouterr().out)
    assert [line.split()[1] for line in table[2:-2]] == list(SHAPE_CLASSES)


def test_json_into_a_directory_exits_2_before_evaluating(trained, shapes, tmp_path, capsys):
    annotations, images, _ = shapes
    with pytest.raises(SystemExit) as exc:
        evaluate_command(_args(trained, annotations, images, str(tmp_path)))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--json" in err and "is a directory" in err and "Traceback" not in err


def test_add_evaluate_arguments():
    parser = add_evaluate_arguments(argparse.ArgumentParser())
    assert parser.parse_args([]).json is None
    assert parser.parse_args(["--json", "out.json"]).json == "out.json"


def test_the_evaluate_command_line_takes_json():
    argv = ["evaluate", "--model", "m", "--annotations", "a", "--images", "i"]
    args = build_parser().parse_args([*argv, "--json", "x.json"])
    assert args.json == "x.json"
    assert build_parser().parse_args(argv).json is None
