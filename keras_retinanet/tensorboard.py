"""TensorBoard logs of a training run on every backend (``train --tensorboard DIR``).

On TensorFlow with the ``tensorboard`` package installed this is Keras' own
``keras.callbacks.TensorBoard`` (it writes with ``tf.summary``). Elsewhere (JAX, PyTorch, or
TensorFlow without ``tensorboard``), :class:`ScalarSummaries` writes the same epoch scalars
with ``tensorboardX`` (``pip install keras3-retinanet[tensorboard]``) in the same layout, so
``tensorboard --logdir DIR`` shows runs of every backend side by side:

* ``DIR/train``: ``epoch_loss`` and ``epoch_learning_rate``, one point per epoch;
* ``DIR/validation``: each ``val_*`` entry of the epoch logs (e.g. the COCO ``val_AP``,
  ``val_AP50`` that :class:`~keras_retinanet.evaluation.CocoEvaluationCallback` adds) as
  ``epoch_<name without val_>``.

Put the callback after the evaluation callback so that its entries are in the logs it reads.
"""

import os

import keras

__all__ = ["ScalarSummaries", "tensorboard_callback"]


def tensorboard_callback(log_dir):
    """The TensorBoard callback for the current backend (see the module docstring).

    Raises:
        ValueError: ``log_dir`` is empty or an existing file.
        ImportError: on JAX or PyTorch without ``tensorboardX`` (the message says what to
            install).
    """
    log_dir = os.fspath(log_dir) if log_dir is not None else ""
    if not log_dir:
        raise ValueError("log_dir must be a folder path")
    if os.path.exists(log_dir) and not os.path.isdir(log_dir):
        raise ValueError(f"log_dir {log_dir!r} exists and is not a folder")
    if keras.backend.backend() == "tensorflow" and _has_tensorboard():
        return keras.callbacks.TensorBoard(log_dir, write_graph=False, update_freq="epoch")
    return ScalarSummaries(log_dir)


def _has_tensorboard():
    """Whether the ``tensorboard`` package, which ``tf.summary`` writers need, is installed
    (TensorFlow does not require it)."""
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def _summary_writer_class():
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise ImportError(
            f"TensorBoard logs on the {keras.backend.backend()} backend are written with "
            "tensorboardX, which is not installed: pip install tensorboardX (or "
            "keras3-retinanet[tensorboard])"
        ) from None
    return SummaryWriter


def _learning_rate(optimizer):
    """The optimizer's current learning rate as a float (``None`` when unknown)."""
    if optimizer is None:
        return None
    try:
        rate = optimizer.learning_rate
        if callable(rate):
            rate = rate(optimizer.iterations)
        return float(keras.ops.convert_to_numpy(rate))
    except (AttributeError, TypeError, ValueError):
        return None


class ScalarSummaries(keras.callbacks.Callback):
    """Epoch scalars in TensorBoard event files, written with ``tensorboardX``.

    Args:
        log_dir: the run's folder; ``train`` and ``validation`` sub-folders are made in it.
    """

    def __init__(self, log_dir):
        super().__init__()
        self.log_dir = os.fspath(log_dir)
        self._writer_class = _summary_writer_class()  # fails now, not after an epoch
        self._writers = {}

    def _writer(self, name):
        if name not in self._writers:
            self._writers[name] = self._writer_class(os.path.join(self.log_dir, name))
        return self._writers[name]

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        rate = _learning_rate(getattr(self.model, "optimizer", None))
        if rate is not None and "learning_rate" not in logs:
            logs["learning_rate"] = rate
        for key, value in sorted(logs.items()):
            try:
                value = float(value)
            except (TypeError, ValueError):
                continue  # not a scalar (e.g. a per-class table)
            if key.startswith("val_"):
                self._writer("validation").add_scalar(f"epoch_{key[4:]}", value, epoch)
            else:
                self._writer("train").add_scalar(f"epoch_{key}", value, epoch)
        for writer in self._writers.values():
            writer.flush()

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}
