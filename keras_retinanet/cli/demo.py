"""``demo``: shapes dataset -> train -> evaluate -> picture."""

import os
import time

from keras_retinanet.cli._common import DEMO_OUTPUT, check_output, writing
from keras_retinanet.cli.evaluate import evaluate_model
from keras_retinanet.cli.predict import draw_predictions, image_records
from keras_retinanet.cli.train import run_training


def demo_command(args):
    import keras

    from keras_retinanet.data import CocoDataset, generate_shapes_dataset

    output = DEMO_OUTPUT if args.output is None else args.output
    # The default folder is the demo's own and is reused; a folder the user names is not
    # written into when it holds anything, unless --overwrite.
    check_output(output, args.overwrite or args.output is None)
    start = time.time()
    print(f"backend: {keras.backend.backend()}")
    with writing(f"--output {output!r}"):
        paths = generate_shapes_dataset(
            os.path.join(output, "shapes"), num_train=args.num_train, num_val=args.num_val
        )
    print(f"shapes dataset: {args.num_train} train / {args.num_val} val images -> {paths.root}")
    model, run = run_training(
        train_annotations=paths.train_annotations,
        train_images=paths.train_images,
        val_annotations=None,
        val_images=None,
        output=output,
        overwrite=True,  # the folder was checked above and now holds the dataset
        recipe="demo",  # compact backbone, 128 x 128, batch 16, AdamW 3e-3
        epochs=args.epochs,
        workers=1,
        seed=args.seed,
        eval_every=1,
        resume=False,
        verbose=args.verbose,
    )
    val_set = CocoDataset(paths.val_annotations, paths.val_images)
    stats, _ = evaluate_model(model, run, val_set, paths.val_annotations, 20)
    print(f"AP: {stats['AP']:.4f}  AP75: {stats['AP75']:.4f}")
    val_images = [os.path.join(paths.val_images, r["file_name"]) for r in val_set.records[:4]]
    written, _ = draw_predictions(
        model,
        run,
        image_records(val_images),
        os.path.join(output, "predictions"),
        0.3,
        4,
    )
    print(f"detections drawn: {written[0]} (+{len(written) - 1} more)")
    print(f"wall time: {time.time() - start:.0f} s")
    print(f"mAP@0.5: {stats['AP50']:.4f}")
    return 0
