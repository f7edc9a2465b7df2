"""``convert``: a torchvision RetinaNet checkpoint -> a ``.keras`` model and its ``run.json``."""

import contextlib
import os

from keras_retinanet.cli._common import (
    RUN_FILE,
    check_writable,
    fail,
    first_line,
    load_preset,
    make_output_dir,
    require_file,
    write_json_file,
    writing,
)


def convert_command(args):
    """Writes ``--output`` (a ``.keras`` file any backend loads) and ``run.json`` beside it,
    which makes ``predict``/``evaluate --model`` preprocess, decode and name the classes as
    torchvision does (see :func:`keras_retinanet.presets.torchvision_run_config`)."""
    import keras

    output = args.output
    if not output.endswith(".keras"):
        fail(f"--output must be a path ending in .keras, got {output!r}")
    if args.preset is None and args.weights is None:
        fail("--version needs --weights (the checkpoint to convert)")
    if args.weights is not None:
        require_file(args.weights, "--weights")
    run_path = os.path.join(os.path.dirname(os.path.abspath(output)), RUN_FILE)
    if os.path.isdir(output):
        fail(f"--output {output!r} is a directory, not a .keras file path")
    for path in (output, run_path):
        if os.path.exists(path) and not args.overwrite:
            fail(
                f"{path!r} already exists; pass --overwrite to replace it, or choose another "
                "--output (run.json is written beside the model: one model per folder)"
            )
    check_writable(output, "--output", folder=False)
    check_writable(run_path, "--output", folder=False)
    if args.preset is not None:
        model, run = load_preset(args.preset, args.weights)
        source = args.weights or model.preset
    else:
        from keras_retinanet.convert import from_torchvision
        from keras_retinanet.presets import torchvision_run_config

        try:
            model = from_torchvision(
                args.weights, version=args.version, data_format="channels_last"
            )
        except Exception as e:  # also the readers' own errors (a truncated .pth or .safetensors)
            fail(f"--weights {args.weights!r}: {first_line(e)}")
        run = torchvision_run_config(args.version, model.num_classes)
        source = args.weights
    run = {"backend": keras.backend.backend(), "source": os.path.basename(source), **run}
    from keras_retinanet.checkpoint import save_model_atomically

    make_output_dir(os.path.dirname(os.path.abspath(output)))
    existed = os.path.exists(output)
    with writing("--output"):  # atomic: a full disk leaves no half-written model
        save_model_atomically(model, output)
    try:
        write_json_file(run, run_path, "--output")
    except SystemExit:
        if not existed:  # no model without the run.json that runs it
            with contextlib.suppress(OSError):
                os.remove(output)
        raise
    print(f"torchvision {run['torchvision_version']} checkpoint -> {output} (+ {run_path})")
    return 0
