"""``python -m keras_retinanet``: see ``keras_retinanet.cli``."""

from keras_retinanet.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
