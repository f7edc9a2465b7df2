"""``train``: fit a RetinaNet on a COCO, CSV or Pascal VOC dataset, on one or more devices."""

import contextlib
import os
import sys
import time

from keras_retinanet.cli._common import (
    RUN_FILE,
    check_images_readable,
    check_output,
    fail,
    first_line,
    load_dataset,
    make_output_dir,
    remove_if_empty,
    sizes,
    writing,
)

#: ``--mixed-precision`` values and the Keras dtype policies they set.
PRECISIONS = {"float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}
#: Environment variables torchrun sets in every process it starts.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def run_training(
    *,
    train_annotations,
    train_images=None,
    output,
    dataset="coco",
    classes=None,
    train_split="trainval",
    val_annotations=None,
    val_images=None,
    val_split="test",
    overwrite=False,
    recipe="demo",
    backbone=None,
    backbone_weights=None,
    anchors=None,
    fpn_filters=None,
    head_convs=None,
    image_size=None,
    epochs=30,
    batch_size=None,
    learning_rate=None,
    devices=1,
    workers=1,
    seed=0,
    eval_every=5,
    verbose=1,
    resume=False,
    tensorboard=None,
    mixed_precision=None,
    skip_unreadable=False,
):
    """Trains a RetinaNet; writes ``model.keras``, ``checkpoint.json`` (the completed epochs)
    and ``run.json`` into ``output`` and returns ``(model, run)``. The keywords are the
    ``train`` flags, with the same defaults; ``None`` takes the recipe's value
    (:mod:`keras_retinanet.recipes`).

    ``devices > 1`` trains data-parallel on the backend's own engine
    (:mod:`keras_retinanet.distribute`): JAX and TensorFlow in this process; PyTorch one
    process per device under ``torchrun`` (this command must then be started by torchrun
    with ``--nproc-per-node`` equal to ``devices``). ``batch_size`` is the global batch.

    The model is saved atomically after every epoch (a kill never leaves a broken file, and
    the previous one survives); ``resume=True`` continues from the last completed epoch of
    ``output`` with the saved optimizer state. A NaN or Inf loss stops training at once, keeps
    the last good checkpoint and exits with status 3.

    Every image of the training and validation sets is opened before anything is written:
    the first unreadable one exits with status 2 naming it, or with ``skip_unreadable`` the
    unreadable ones are left out, named on stderr and listed in ``run.json``
    (``"skipped_images"``). A recorded image size (COCO ``width``/``height``, VOC ``<size>``)
    that differs from the file's exits with status 2 naming the image (docs/numerics.md). A
    failed write (permissions, a full disk) exits with status 2 and a one-line message; files
    are replaced atomically, so none is left half-written."""
    created = not os.path.exists(output)
    try:
        return _run_training(
            train_annotations=train_annotations,
            train_images=train_images,
            output=output,
            dataset=dataset,
            classes=classes,
            train_split=train_split,
            val_annotations=val_annotations,
            val_images=val_images,
            val_split=val_split,
            overwrite=overwrite,
            recipe=recipe,
            backbone=backbone,
            backbone_weights=backbone_weights,
            anchors=anchors,
            fpn_filters=fpn_filters,
            head_convs=head_convs,
            image_size=image_size,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            devices=devices,
            workers=workers,
            seed=seed,
            eval_every=eval_every,
            verbose=verbose,
            resume=resume,
            tensorboard=tensorboard,
            mixed_precision=mixed_precision,
            skip_unreadable=skip_unreadable,
        )
    except SystemExit:
        if created:  # a run that failed before writing anything leaves no empty folder
            remove_if_empty(output)
        raise


def _run_training(*, train_annotations, train_images, output, dataset, classes, train_split,
                  val_annotations, val_images, val_split, overwrite, recipe, backbone,
                  backbone_weights, anchors, fpn_filters, head_convs, image_size, epochs,
                  batch_size, learning_rate, devices, workers, seed, eval_every, verbose,
                  resume, tensorboard, mixed_precision, skip_unreadable):  # fmt: skip
    import keras

    from keras_retinanet.recipes import get_recipe

    try:
        plan = get_recipe(recipe)
    except ValueError as e:
        fail(f"--recipe: {first_line(e)}")
    plan = _apply_overrides(
        plan,
        backbone=backbone,
        anchors=anchors,
        fpn_filters=fpn_filters,
        head_convs=head_convs,
        image_size=image_size,
        learning_rate=learning_rate,
    )
    if plan.needs_backbone_weights and backbone_weights is None and not resume:
        fail(
            f"--recipe {plan.name} starts from an ImageNet {plan.backbone} backbone: pass its "
            "local weights file as --backbone-weights (for resnet50, keras.applications' "
            "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5)"
        )
    if backbone_weights is not None and not os.path.isfile(backbone_weights):
        fail(f"--backbone-weights {backbone_weights!r} is not an existing file")
    if mixed_precision is not None and mixed_precision not in PRECISIONS:
        fail(f"--mixed-precision must be one of {sorted(PRECISIONS)}, got {mixed_precision!r}")
    global_batch = batch_size or plan.global_batch_size(devices)
    if global_batch % devices:
        fail(f"--batch-size {global_batch} does not split evenly over --devices {devices}")
    rank, world = _torchrun_rank(devices)
    check_output(output, overwrite or resume or rank > 0)
    train_set = load_dataset(
        dataset, train_annotations, train_images, classes, train_split, "--train-annotations"
    )
    if len(train_set) == 0:
        fail(f"--train-annotations {train_annotations!r} lists no images")
    train_set, skipped = check_images_readable(
        train_set, "--train-annotations", skip_unreadable, verbose
    )
    val_set = val_json = None
    if val_annotations is not None:
        val_set = load_dataset(
            dataset, val_annotations, val_images, classes, val_split, "--val-annotations"
        )
        val_set, val_skipped = check_images_readable(
            val_set, "--val-annotations", skip_unreadable, verbose
        )
        skipped += val_skipped
        val_json = _coco_ground_truth(dataset, val_set, val_annotations, output, rank)
    elif val_images is not None:
        fail("--val-images needs --val-annotations")
    tensorboard_callback = _tensorboard(tensorboard) if tensorboard and rank == 0 else None
    keras.utils.set_random_seed(seed)
    run = {
        "backend": keras.backend.backend(),
        **plan.run_sizes(),
        "class_names": list(train_set.class_names),
        "class_to_category_id": [int(c) for c in train_set.category_ids],
        "recipe": plan.to_dict(),
        "devices": devices,
        "global_batch_size": global_batch,
    }
    if skip_unreadable:
        run["skipped_images"] = skipped
    batches = _training_batches(train_set, plan, global_batch, seed, workers)
    engine = _distribution(devices, global_batch, world)
    with engine:
        model, initial_epoch = _model(
            plan,
            run,
            resume=resume,
            output=output,
            num_classes=train_set.num_classes,
            backbone_weights=backbone_weights,
            mixed_precision=mixed_precision,
            steps_per_epoch=len(batches),
            epochs=epochs,
            global_batch=global_batch,
            rank=rank,
        )
        if initial_epoch >= epochs:
            print(f"{output!r} already holds {initial_epoch} epochs (--epochs {epochs})")
            return model, run
        return _fit(
            model,
            run,
            batches,
            val_set,
            val_json,
            output,
            epochs,
            initial_epoch,
            global_batch,
            eval_every,
            verbose,
            tensorboard_callback,
            rank,
            world,
        )


def _apply_overrides(plan, *, backbone, anchors, fpn_filters, head_convs, image_size,
                     learning_rate):  # fmt: skip
    """``plan`` with the flags the user gave (``None`` keeps the recipe's)."""
    import dataclasses

    from keras_retinanet.recipes import DEMO_ANCHOR_AREAS

    changes = {}
    if backbone is not None:
        changes["backbone"] = backbone
    if anchors is not None:
        changes["anchor_areas"] = DEMO_ANCHOR_AREAS if anchors == "small" else None
    if fpn_filters is not None:
        changes["fpn_filters"] = fpn_filters
    if head_convs is not None:
        changes["head_convs"] = head_convs
    if image_size is not None:  # one fixed square size, no jitter
        changes.update(image_size=image_size, min_side=image_size, max_side=image_size)
        changes["jitter"] = None
    plan = dataclasses.replace(plan, **changes)
    if learning_rate is not None:
        plan = plan.with_peak_learning_rate(learning_rate)
    return plan


def _torchrun_rank(devices):
    """``(rank, world_size)``: ``(0, 1)`` unless this process was started by torchrun for a
    PyTorch multi-device run. Exits (status 2) on a mismatch of ``--devices`` and torchrun."""
    import keras

    started_by_torchrun = all(os.environ.get(v) for v in TORCHRUN_VARIABLES)
    if keras.backend.backend() != "torch":
        return 0, 1
    if devices == 1 and not started_by_torchrun:
        return 0, 1
    if not started_by_torchrun:
        fail(
            f"--devices {devices} on the torch backend runs one process per device: start "
            f"this command with `torchrun --nproc-per-node {devices} -m keras_retinanet "
            f"train --devices {devices} ...` (multi-host: add --nnodes, --node-rank and "
            "--rdzv-endpoint)"
        )
    world = int(os.environ["WORLD_SIZE"])
    if world != devices:
        fail(f"--devices {devices} but torchrun started {world} processes (WORLD_SIZE)")
    return int(os.environ["RANK"]), world


def _distribution(devices, global_batch, world):
    """A context manager: the JAX/TensorFlow data-parallel scope for ``devices > 1``, the
    torchrun process group for PyTorch, otherwise nothing."""
    import keras

    if devices == 1:
        return contextlib.nullcontext()
    if keras.backend.backend() == "torch":
        return _torch_process_group()
    from keras_retinanet.distribute import available_devices, data_parallel

    try:
        return data_parallel(devices, batch_size=global_batch)
    except ValueError as e:
        hint = ""
        if keras.backend.backend() == "jax" and len(available_devices()) < devices:
            hint = (
                " (on a CPU-only host JAX shows one device; "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={devices} makes {devices})"
            )
        fail(f"--devices {devices}: {first_line(e)}{hint}")


@contextlib.contextmanager
def _torch_process_group():
    from keras_retinanet.distribute import _torch

    try:
        _torch.init_from_torchrun()
    except ValueError as e:
        fail(f"--devices: {first_line(e)}")
    try:
        yield
    except BaseException:
        _torch.shutdown(wait_for_peers=False)
        raise
    _torch.shutdown()


def _training_batches(train_set, plan, global_batch, seed, workers):
    from keras_retinanet.data import DetectionDataset

    return DetectionDataset(
        train_set,
        batch_size=global_batch,
        training=True,
        seed=seed,
        workers=workers,
        **plan.data_kwargs(),
    )


def _coco_ground_truth(kind, dataset, annotations, output, rank):
    """The COCO JSON that scores ``dataset``: the file itself for COCO; for CSV and VOC, its
    conversion written to ``<output>/val_coco.json``."""
    if kind == "coco":
        return annotations
    path = os.path.join(output, "val_coco.json")
    if rank == 0:
        from keras_retinanet.checkpoint import write_json_atomically

        make_output_dir(output)
        with writing("--output"):
            write_json_atomically(dataset.to_coco(), path)
    return path


def _tensorboard(log_dir):
    from keras_retinanet.tensorboard import tensorboard_callback

    try:
        return tensorboard_callback(log_dir)
    except (ImportError, ValueError) as e:
        fail(f"--tensorboard: {first_line(e)}")


def _model(plan, run, *, resume, output, num_classes, backbone_weights, mixed_precision,
           steps_per_epoch, epochs, global_batch, rank):  # fmt: skip
    """The compiled model and the epoch to start at: the checkpoint of ``output`` when
    resuming, else a new model (and ``run.json`` written)."""
    from keras_retinanet import RetinaNet
    from keras_retinanet.checkpoint import CheckpointError, resume_state

    if resume:
        try:
            model, initial_epoch = resume_state(output)
        except CheckpointError as e:
            fail(f"--resume: {first_line(e)}")
        if model is None:
            fail(f"--resume: {output!r} holds no checkpoint (model.keras + checkpoint.json)")
        if model.num_classes != num_classes:
            fail(
                f"--resume: the checkpoint has {model.num_classes} classes, the training set "
                f"{num_classes}"
            )
        return model, initial_epoch
    policy = {"dtype": PRECISIONS[mixed_precision]} if mixed_precision else {}
    model = RetinaNet(
        num_classes=num_classes,
        backbone_weights=backbone_weights,
        data_format="channels_last",  # the data pipeline yields [N, H, W, 3] batches
        **plan.model_kwargs(),
        **policy,
    )
    model.compile(
        optimizer=plan.make_optimizer(
            steps_per_epoch=steps_per_epoch, epochs=epochs, global_batch_size=global_batch
        )
    )
    if rank == 0:
        from keras_retinanet.checkpoint import write_json_atomically

        make_output_dir(output)
        with writing("--output"):
            write_json_atomically(run, os.path.join(output, RUN_FILE))
    return model, 0


def _fit(
    model,
    run,
    batches,
    val_set,
    val_json,
    output,
    epochs,
    initial_epoch,
    batch_size,
    eval_every,
    verbose,
    tensorboard_callback,
    rank,
    world,
):
    """``model.fit`` (or the PyTorch DDP loop) from ``initial_epoch`` with atomic per-epoch
    checkpoints and a stop on a non-finite loss (exit status 3, last good checkpoint kept)."""
    from keras_retinanet.checkpoint import AtomicModelCheckpoint, StopOnNonFiniteLoss
    from keras_retinanet.data import InferenceBatches
    from keras_retinanet.evaluation import CocoEvaluationCallback
    from keras_retinanet.inference import detect_batch

    model_path = os.path.join(output, "model.keras")
    stopper = StopOnNonFiniteLoss()
    callbacks = [stopper]
    if val_set is not None and rank == 0:
        detector = model.make_detector()
        callbacks.append(
            CocoEvaluationCallback(
                lambda images: detect_batch(detector, images),
                InferenceBatches(val_set, batch_size=batch_size, **sizes(run)),
                val_json,
                every_n_epochs=eval_every,
                class_to_category_id=val_set.class_to_category_id,
            )
        )
    if tensorboard_callback is not None:
        callbacks.append(tensorboard_callback)
    if rank == 0:
        callbacks.append(AtomicModelCheckpoint(output, stopper=stopper))
    start = time.time()
    try:
        if world > 1:
            from keras_retinanet.distribute._torch import DDPTrainer

            if not model.built:  # DDP wraps the variables, so they must exist first
                model(batches[0][0][:1])
            # The compiled Keras optimizer applies the DDP-averaged gradients, so the
            # schedule and the state saved in model.keras are the single-process ones.
            DDPTrainer(model, optimizer="keras").fit_epochs(
                batches,
                epochs=epochs,
                initial_epoch=initial_epoch,
                callbacks=callbacks,
                verbose=verbose if rank == 0 else 0,
            )
        else:
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
        message = stopper.message
        if not os.path.exists(model_path):
            message = message.replace(
                "the last good checkpoint is kept", "no epoch completed, so no model was saved"
            )
        print(f"keras-retinanet: error: {message}", file=sys.stderr)
        raise SystemExit(3)
    done = epochs - initial_epoch
    if rank == 0:
        print(f"trained {done} epochs in {time.time() - start:.0f} s -> {model_path}")
    return model, run


def train_command(args):
    options = {k: v for k, v in vars(args).items() if k not in ("command", "func")}
    run_training(**options)
    return 0
