"""The command line end to end (tiny sizes) and its error messages."""

import json
import os

import pytest

from keras_retinanet.cli import main


def test_demo_then_evaluate_then_predict(tmp_path, capsys):
    out = tmp_path / "demo"
    assert (
        main(
            [
                "demo",
                "--output",
                str(out),
                "--epochs",
                "1",
                "--num-train",
                "16",
                "--num-val",
                "4",
                "--verbose",
                "0",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    last = text.strip().splitlines()[-1]
    assert last.startswith("mAP@0.5: ") and 0.0 <= float(last.split()[-1]) <= 1.0
    pictures = sorted(os.listdir(out / "predictions"))
    assert "detections.json" in pictures and any(p.endswith(".png") for p in pictures)

    shapes = out / "shapes"
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(out / "model.keras"),
                "--annotations",
                str(shapes / "annotations" / "instances_val.json"),
                "--images",
                str(shapes / "val"),
            ]
        )
        == 0
    )
    assert "mAP@0.5: " in capsys.readouterr().out

    pred = tmp_path / "pred"
    assert (
        main(
            [
                "predict",
                "--model",
                str(out / "model.keras"),
                "--images",
                str(shapes / "val"),
                "--output",
                str(pred),
                "--score-threshold",
                "0.0",
            ]
        )
        == 0
    )
    detections = json.loads((pred / "detections.json").read_text())
    assert len([p for p in os.listdir(pred) if p.endswith(".png")]) == 4
    assert all(
        {"image_id", "category_id", "bbox", "score", "class_name"} <= set(d) for d in detections
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["evaluate", "--model", "m.keras", "--annotations", "a.json", "--images", "."],
            "--annotations",
        ),
        (["predict", "--model", "missing.keras", "--images", "."], "--model"),
        (["predict", "--model", "m.keras", "--images", "no/such/dir"], "--images"),
        (
            ["train", "--train-annotations", "nope.json", "--train-images", "."],
            "--train-annotations",
        ),
        (["demo", "--epochs", "0"], "--epochs"),
        (
            ["predict", "--model", "m.keras", "--images", ".", "--score-threshold", "2"],
            "--score-threshold",
        ),
    ],
)
def test_bad_arguments_exit_2_with_a_message(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.keras").write_text("")  # exists, so later arguments get checked
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
