"""The command line end to end (tiny sizes) and its error messages."""

import inspect
import json
import os

import pytest

from keras_retinanet import cli
from keras_retinanet.cli import main


@pytest.fixture(autouse=True)
def memory_calls(monkeypatch):
    """Records ``keep_freed_memory`` calls instead of changing the test process's malloc."""
    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(True) or True)
    return calls


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


# ------------------------------------------------------------------------ --overwrite


def _one_line_error(capsys, *fragments):
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("keras-retinanet: error: "), err
    for fragment in fragments:
        assert fragment in err, err


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--train-annotations", "a.json", "--train-images", "images"],
        ["predict", "--model", "m.keras", "--images", "images"],
        ["demo", "--epochs", "1", "--num-train", "2", "--num-val", "1"],
        ["shapes", "--num-train", "2", "--num-val", "1"],
    ],
    ids=lambda argv: argv[0],
)
def test_non_empty_output_is_refused_without_overwrite(tmp_path, monkeypatch, capsys, argv):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.json").write_text("{}")  # inputs exist, so the output check is reached
    (tmp_path / "m.keras").write_text("")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "x.png").write_bytes(b"")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--output", "out"])
    assert exc.value.code == 2
    _one_line_error(capsys, "--output 'out'", "--overwrite")
    assert sorted(os.listdir(tmp_path / "out")) == ["keep.txt"]
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_overwrite_writes_into_a_non_empty_output(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    argv = ["shapes", "--output", str(out), "--num-train", "2", "--num-val", "1"]
    assert main([*argv, "--overwrite"]) == 0
    assert (out / "annotations" / "instances_train.json").is_file()
    assert (out / "keep.txt").read_text() == "mine"  # other files are left alone
    # A second run replaces its own files; an empty or new folder needs no --overwrite.
    assert main([*argv, "--overwrite"]) == 0
    (tmp_path / "empty").mkdir()
    assert main(["shapes", "--output", str(tmp_path / "empty"), "--num-train", "1"]) == 0
    assert main(["shapes", "--output", str(tmp_path / "new" / "dir"), "--num-val", "1"]) == 0
    capsys.readouterr()


def test_output_that_is_a_file_is_refused_even_with_overwrite(tmp_path, capsys):
    (tmp_path / "out").write_text("not a folder")
    with pytest.raises(SystemExit) as exc:
        main(["shapes", "--output", str(tmp_path / "out"), "--overwrite"])
    assert exc.value.code == 2
    _one_line_error(capsys, "is not a directory")
    assert (tmp_path / "out").read_text() == "not a folder"


def test_demo_reuses_its_default_output_but_not_a_named_one(tmp_path, monkeypatch, capsys):
    """The README's ``python -m keras_retinanet demo`` runs twice in a row; the training is
    replaced by a stub here (the end-to-end test above runs the real one)."""
    from keras_retinanet.cli import demo

    outputs = []

    def fake_train(**options):
        assert options["overwrite"]  # the demo's own folder already holds the dataset
        outputs.append(options["output"])
        os.makedirs(options["output"], exist_ok=True)
        (tmp_path / options["output"] / "model.keras").write_text("stub")
        return None, {}

    monkeypatch.setattr(demo, "run_training", fake_train)
    monkeypatch.setattr(
        demo, "evaluate_model", lambda *a: ({"AP": 0.0, "AP75": 0.0, "AP50": 0.5}, [])
    )
    monkeypatch.setattr(
        demo, "draw_predictions", lambda model, run, records, output, *a: ([output], [])
    )
    monkeypatch.chdir(tmp_path)
    argv = ["demo", "--epochs", "1", "--num-train", "2", "--num-val", "1", "--verbose", "0"]
    assert main(argv) == 0
    assert main(argv) == 0
    assert outputs == [cli.DEMO_OUTPUT, cli.DEMO_OUTPUT]
    assert (tmp_path / "runs" / "demo" / "shapes" / "annotations").is_dir()
    assert capsys.readouterr().out.strip().endswith("mAP@0.5: 0.5000")
    # Naming the same folder explicitly is the user's choice of location: it must be empty.
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--output", cli.DEMO_OUTPUT])
    assert exc.value.code == 2
    _one_line_error(capsys, "--overwrite")
    assert main([*argv, "--output", cli.DEMO_OUTPUT, "--overwrite"]) == 0


def test_training_commands_keep_freed_memory_and_others_do_not(tmp_path, memory_calls):
    with pytest.raises(SystemExit):  # fails on the missing file, after the memory setting
        main(["train", "--train-annotations", str(tmp_path / "no.json"), "--train-images", "x"])
    assert memory_calls == [True]
    assert main(["shapes", "--output", str(tmp_path / "s"), "--num-train", "1"]) == 0
    assert memory_calls == [True]


def test_train_and_demo_go_through_the_same_training_function(tmp_path, monkeypatch, capsys):
    """``train`` hands all its flags to :func:`run_training` (whose defaults are the flags'),
    and the demo calls that same function with its own settings; training is a stub here."""
    from keras_retinanet.cli import demo, train

    assert demo.run_training is train.run_training is cli.run_training
    signature = inspect.signature(cli.run_training).parameters.values()
    defaults = {p.name: p.default for p in signature if p.default is not p.empty}
    calls = []

    def fake_train(**options):
        calls.append(options)
        return None, {}

    monkeypatch.setattr(train, "run_training", fake_train)
    monkeypatch.setattr(demo, "run_training", fake_train)
    monkeypatch.setattr(
        demo, "evaluate_model", lambda *a: ({"AP": 0.0, "AP75": 0.0, "AP50": 0.5}, [])
    )
    monkeypatch.setattr(
        demo, "draw_predictions", lambda model, run, records, output, *a: ([output], [])
    )
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--train-annotations", "a.json", "--train-images", "images"]) == 0
    assert calls[0] == {
        **defaults,
        "train_annotations": "a.json",
        "train_images": "images",
        "output": "runs/train",
    }
    argv = ["demo", "--epochs", "3", "--num-train", "2", "--num-val", "1", "--seed", "7"]
    assert main([*argv, "--verbose", "0"]) == 0
    options = calls[1]
    assert os.path.isfile(options.pop("train_annotations"))
    assert os.path.isdir(options.pop("train_images"))
    # The demo names what it sets; everything else is run_training's default.
    assert {**defaults, **options} == {
        **defaults,
        "recipe": "demo",
        "output": cli.DEMO_OUTPUT,
        "overwrite": True,
        "epochs": 3,
        "seed": 7,
        "eval_every": 1,
        "verbose": 0,
    }
    assert len(calls) == 2
    capsys.readouterr()
