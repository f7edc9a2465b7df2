"""``shapes``: write the synthetic shapes dataset (COCO format)."""

import json

from keras_retinanet.cli._common import check_output, writing


def shapes_command(args):
    from keras_retinanet.data import generate_shapes_dataset

    check_output(args.output, args.overwrite)
    with writing(f"--output {args.output!r}"):
        paths = generate_shapes_dataset(
            args.output, num_train=args.num_train, num_val=args.num_val, seed=args.seed
        )
    print(json.dumps({k: str(v) for k, v in paths._asdict().items()}, indent=2))
    return 0
