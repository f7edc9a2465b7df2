"""``train``: fit a RetinaNet on a COCO-format dataset."""

import json
import os
import sys
import time

from keras_retinanet.cli._common import (
    DEMO_ANCHOR_AREAS,
    DEMO_IMAGE_SIZE,
    RUN_FILE,
    check_output,
    fail,
    first_line,
    load_coco,
    require_dir,
    require_file,
    sizes,
)


def run_training(
    *,
    train_annotations,
    train_images,
    output,
    val_annotations=None,
    val_images=None,
    overwrite=False,
    backbone="compact",
    backbone_weights=None,
    anchors="small",
    fpn_filters=64,
    head_convs=2,
    image_size=DEMO_IMAGE_SIZE,
    epochs=30,
    batch_size=16,
    learning_rate=3e-3,
    workers=1,
    seed=0,
    eval_every=5,
    verbose=1,
    resume=False,
):
    """Trains a RetinaNet; writes ``model.keras``, ``checkpoint.json`` (the completed epochs)
    and ``run.json`` into ``output`` and returns ``(model, run)``. The keywords are the
    ``train`` flags, with the same defaults.

    The model is saved atomically after every epoch (a kill never leaves a broken file, and
    the previous one survives); ``resume=True`` continues from the last completed epoch of
    ``output`` with the saved optimizer state. A NaN or Inf loss stops training at once, keeps
    the last good checkpoint and exits with status 3."""
    import keras

    from keras_retinanet import AnchorGenerator, RetinaNet
    from keras_retinanet.checkpoint import CheckpointError, resume_state
    from keras_retinanet.data import DetectionDataset

    require_file(train_annotations, "--train-annotations")
    require_dir(train_images, "--train-images")
    if (val_annotations is None) != (val_images is None):
        fail("--val-annotations and --val-images must be given together")
    if val_annotations is not None:
        require_file(val_annotations, "--val-annotations")
        require_dir(val_images, "--val-images")
    check_output(output, overwrite or resume)
    train_set = load_coco(train_annotations, train_images, "--train-annotations")
    if len(train_set) == 0:
        fail(f"--train-annotations {train_annotations!r} lists no images")
    val_set = None
    if val_annotations is not None:
        val_set = load_coco(val_annotations, val_images, "--val-annotations")
    keras.utils.set_random_seed(seed)
    size = image_size
    run = {
        "backend": keras.backend.backend(),
        "min_side": size,
        "max_side": size,
        "stride": 128,
        "image_size": [size, size],
        "class_names": list(train_set.class_names),
        "class_to_category_id": [int(c) for c in train_set.category_ids],
    }
    batches = DetectionDataset(
        train_set,
        batch_size=batch_size,
        training=True,
        seed=seed,
        workers=workers,
        **sizes(run),
    )
    areas = DEMO_ANCHOR_AREAS if anchors == "small" else None
    anchor_generator = AnchorGenerator(areas=areas) if areas else AnchorGenerator()
    initial_epoch = 0
    if resume:
        try:
            model, initial_epoch = resume_state(output)
        except CheckpointError as e:
            fail(f"--resume: {first_line(e)}")
        if model is None:
            fail(f"--resume: {output!r} holds no checkpoint (model.keras + checkpoint.json)")
        if model.num_classes != train_set.num_classes:
            fail(
                f"--resume: the checkpoint has {model.num_classes} classes, the training set "
                f"{train_set.num_classes}"
            )
        if initial_epoch >= epochs:
            print(f"{output!r} already holds {initial_epoch} epochs (--epochs {epochs})")
            return model, run
    if not resume:  # a new model (a resumed one comes compiled, with its optimizer state)
        model = RetinaNet(
            num_classes=train_set.num_classes,
            backbone=backbone,
            backbone_weights=backbone_weights,
            anchor_generator=anchor_generator,
            fpn_filters=fpn_filters,
            head_convs=head_convs,
            data_format="channels_last",  # the data pipeline yields [N, H, W, 3] batches
        )
        steps = epochs * len(batches)
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0, steps, warmup_target=learning_rate, warmup_steps=max(1, min(100, steps // 10))
        )
        model.compile(
            optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-4, global_clipnorm=10.0)
        )
        os.makedirs(output, exist_ok=True)
        with open(os.path.join(output, RUN_FILE), "w") as f:
            json.dump(run, f, indent=2)
    return _fit(
        model,
        run,
        batches,
        val_set,
        val_annotations,
        output,
        epochs,
        initial_epoch,
        batch_size,
        eval_every,
        verbose,
    )


def _fit(
    model,
    run,
    batches,
    val_set,
    val_annotations,
    output,
    epochs,
    initial_epoch,
    batch_size,
    eval_every,
    verbose,
):
    """``model.fit`` from ``initial_epoch`` with atomic per-epoch checkpoints and a stop on a
    non-finite loss (exit status 3, last good checkpoint kept)."""
    from keras_retinanet.checkpoint import AtomicModelCheckpoint, StopOnNonFiniteLoss
    from keras_retinanet.data import InferenceBatches
    from keras_retinanet.evaluation import CocoEvaluationCallback
    from keras_retinanet.inference import detect_batch

    model_path = os.path.join(output, "model.keras")
    stopper = StopOnNonFiniteLoss()
    callbacks = [stopper]
    if val_set is not None:
        detector = model.make_detector()
        callbacks.append(
            CocoEvaluationCallback(
                lambda images: detect_batch(detector, images),
                InferenceBatches(val_set, batch_size=batch_size, **sizes(run)),
                val_annotations,
                every_n_epochs=eval_every,
                class_to_category_id=val_set.class_to_category_id,
            )
        )
    callbacks.append(AtomicModelCheckpoint(output, stopper=stopper))
    start = time.time()
    try:
        model.fit(
            batches,
            epochs=epochs,
            initial_epoch=initial_epoch,
            callbacks=callbacks,
            verbose=verbose,
        )
    except OSError as e:  # a checkpoint could not be written (disk full, permissions)
        fail(first_line(e))
    if stopper.nonfinite:
        print(f"keras-retinanet: error: {stopper.message}", file=sys.stderr)
        raise SystemExit(3)
    done = epochs - initial_epoch
    print(f"trained {done} epochs in {time.time() - start:.0f} s -> {model_path}")
    return model, run


def train_command(args):
    options = {k: v for k, v in vars(args).items() if k not in ("command", "func")}
    run_training(**options)
    return 0
