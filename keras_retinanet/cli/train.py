"""``train``: fit a RetinaNet on a COCO-format dataset."""

import json
import os
import time

from keras_retinanet.cli._common import (
    DEMO_ANCHOR_AREAS,
    DEMO_IMAGE_SIZE,
    RUN_FILE,
    check_output,
    fail,
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
):
    """Trains a RetinaNet; writes ``model.keras`` and ``run.json`` into ``output`` and
    returns ``(model, run)``. The keywords are the ``train`` flags, with the same defaults."""
    import keras

    from keras_retinanet import AnchorGenerator, RetinaNet
    from keras_retinanet.data import DetectionDataset, InferenceBatches
    from keras_retinanet.evaluation import CocoEvaluationCallback
    from keras_retinanet.inference import detect_batch

    require_file(train_annotations, "--train-annotations")
    require_dir(train_images, "--train-images")
    if (val_annotations is None) != (val_images is None):
        fail("--val-annotations and --val-images must be given together")
    if val_annotations is not None:
        require_file(val_annotations, "--val-annotations")
        require_dir(val_images, "--val-images")
    check_output(output, overwrite)
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
    model_path = os.path.join(output, "model.keras")
    callbacks = []
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
    callbacks.append(keras.callbacks.ModelCheckpoint(model_path))
    start = time.time()
    model.fit(batches, epochs=epochs, callbacks=callbacks, verbose=verbose)
    print(f"trained {epochs} epochs in {time.time() - start:.0f} s -> {model_path}")
    return model, run


def train_command(args):
    options = {k: v for k, v in vars(args).items() if k not in ("command", "func")}
    run_training(**options)
    return 0
