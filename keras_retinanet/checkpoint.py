"""Checkpoints that survive faults: atomic saves, a stop on non-finite loss, and resuming.

* :func:`save_model_atomically` writes a ``.keras`` file next to its destination, flushes and
  ``fsync``\\ s it, then renames it over the destination, so a kill, a power cut or a full disk
  during the write leaves the previous good file in place.
* :class:`AtomicModelCheckpoint` saves ``model.keras`` (weights, optimizer state and compile
  arguments) and ``checkpoint.json`` (``{"epoch": completed_epochs, "logs": {...}}``) after
  every ``save_every`` epochs, never once a loss has become NaN or infinite.
* :class:`StopOnNonFiniteLoss` stops ``fit`` at the first non-finite batch loss and keeps a
  one-line ``message`` for the caller.
* :func:`resume_state` loads both files back: ``model, initial_epoch = resume_state(folder)``
  then ``model.fit(..., initial_epoch=initial_epoch)``.
"""

import json
import math
import os
import tempfile
import warnings
import zipfile

import keras

#: The model file :class:`AtomicModelCheckpoint` writes and :func:`resume_state` reads.
MODEL_FILE = "model.keras"
#: The state file written next to it: ``{"epoch": completed_epochs, "logs": {...}}``.
STATE_FILE = "checkpoint.json"
#: Temporary files are named ``.<name>.<random><TEMP_SUFFIX>`` next to their destination.
TEMP_SUFFIX = ".tmp.keras"


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be resumed from (corrupt or inconsistent files)."""


def _fsync_dir(folder):
    """Makes a rename in ``folder`` durable, where the OS allows opening a folder."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # e.g. Windows: folders cannot be opened; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder
    finally:
        os.close(fd)


def _replace_atomically(path, write):
    """Calls ``write(tmp_path)``, fsyncs ``tmp_path`` and renames it onto ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=TEMP_SUFFIX)
        os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(folder)
    except BaseException as exc:
        if tmp is not None:
            try:
                os.remove(tmp)
            except OSError:
                pass
        if isinstance(exc, Exception):
            detail = " ".join(str(exc).split()) or type(exc).__name__
            raise OSError(f"could not save {path!r} ({detail}); the previous file is kept") from exc
        raise  # KeyboardInterrupt, SystemExit: the temporary file is gone, pass them on


def save_model_atomically(model, path):
    """Saves ``model`` (``model.save``: a ``.keras`` file, optimizer state included) to
    ``path`` through a temporary file in the same folder and ``os.replace``.

    A crash or a full disk during the write never leaves ``path`` empty or corrupt: it holds
    either the previous file or the new one. Raises ``OSError`` naming ``path`` on failure,
    after removing the temporary file.
    """
    _replace_atomically(path, model.save)


def write_json_atomically(data, path):
    """Writes ``data`` as JSON to ``path`` the same way as :func:`save_model_atomically`."""
    text = json.dumps(data, indent=2, sort_keys=True, allow_nan=False)

    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)

    _replace_atomically(path, write)


def _as_float(value):
    try:
        return float(keras.ops.convert_to_numpy(value))
    except (TypeError, ValueError):
        return None


def _nonfinite_loss(logs, key="loss"):
    """The non-finite loss value in ``logs``, or ``None`` when it is finite or absent."""
    if not logs or key not in logs:
        return None
    value = _as_float(logs[key])
    if value is None or math.isfinite(value):
        return None
    return value


def _json_logs(logs):
    """``logs`` with every finite scalar as a float (others dropped): JSON safe."""
    out = {}
    for key, value in (logs or {}).items():
        number = _as_float(value)
        if number is not None and math.isfinite(number):
            out[str(key)] = number
    return out


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training at the first batch whose loss is NaN or infinite.

    Sets ``model.stop_training``; afterwards ``nonfinite`` is ``True``, ``epoch`` and
    ``batch`` (0-based, as Keras numbers them) say where, and ``message`` is a one-line
    explanation, e.g. ``"loss became nan at epoch 3, batch 17; the last good checkpoint is
    kept"`` (epochs numbered from 1 as Keras prints them). :class:`AtomicModelCheckpoint`
    writes nothing after that, with or without this callback.
    """

    def __init__(self, monitor="loss"):
        super().__init__()
        self.monitor = monitor
        self.nonfinite = False
        self.epoch = None
        self.batch = None
        self.value = None
        self.message = None
        self._current_epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._current_epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.nonfinite:
            return
        value = _nonfinite_loss(logs, self.monitor)
        if value is None:
            return
        self.nonfinite = True
        self.epoch = self._current_epoch
        self.batch = batch
        self.value = value
        self.message = (
            f"{self.monitor} became {value} at epoch {self._current_epoch + 1}, batch {batch}; "
            "the last good checkpoint is kept"
        )
        self.model.stop_training = True


class AtomicModelCheckpoint(keras.callbacks.Callback):
    """Saves ``<folder>/model.keras`` and ``<folder>/checkpoint.json`` after every
    ``save_every`` epochs (and after the last one), both with atomic replaces.

    ``checkpoint.json`` holds ``{"epoch": completed_epochs, "logs": {...}}``: pass
    ``completed_epochs`` as ``initial_epoch`` to resume (:func:`resume_state`). Nothing is
    saved from a non-finite state: once a batch or epoch loss (``monitor``) is NaN or
    infinite, or ``stopper.nonfinite`` is set, this callback never saves again, so the last
    good checkpoint stays. ``saved_epochs`` lists the completed-epoch counts saved.
    """

    def __init__(self, folder, save_every=1, monitor="loss", stopper=None, verbose=0):
        super().__init__()
        if int(save_every) < 1:
            raise ValueError(f"save_every must be a positive integer, got {save_every!r}")
        self.folder = os.fspath(folder)
        self.save_every = int(save_every)
        self.monitor = monitor
        self.stopper = stopper
        self.verbose = verbose
        self.nonfinite = False
        self.saved_epochs = []
        self._last_epoch = None

    @property
    def model_path(self):
        return os.path.join(self.folder, MODEL_FILE)

    @property
    def state_path(self):
        return os.path.join(self.folder, STATE_FILE)

    def on_train_begin(self, logs=None):
        os.makedirs(self.folder, exist_ok=True)
        self._last_epoch = self.params.get("epochs") if self.params else None

    def on_train_batch_end(self, batch, logs=None):
        if _nonfinite_loss(logs, self.monitor) is not None:
            self.nonfinite = True

    def on_epoch_end(self, epoch, logs=None):
        if _nonfinite_loss(logs, self.monitor) is not None:
            self.nonfinite = True
        if self.nonfinite or (self.stopper is not None and self.stopper.nonfinite):
            self.nonfinite = True
            return
        completed = epoch + 1
        last = self._last_epoch is not None and completed >= self._last_epoch
        if completed % self.save_every and not last:
            return
        save_model_atomically(self.model, self.model_path)
        # The state file goes second: it never names an epoch whose model is not on disk.
        write_json_atomically({"epoch": completed, "logs": _json_logs(logs)}, self.state_path)
        self.saved_epochs.append(completed)
        if self.verbose:
            print(f"epoch {completed}: saved {self.model_path}")


def read_state(folder):
    """``checkpoint.json`` of ``folder`` as a dict, or ``None`` when there is none."""
    path = os.path.join(os.fspath(folder), STATE_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            state = json.load(f)
        epoch = state["epoch"]
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise ValueError(f"epoch {epoch!r} is not a non-negative integer")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        detail = " ".join(str(exc).split())
        raise CheckpointError(f"checkpoint state {path!r} is unreadable ({detail})") from None
    return state


def remove_temporaries(folder):
    """Removes temporary files a killed :func:`save_model_atomically` left in ``folder``."""
    folder = os.fspath(folder)
    removed = []
    for name in (MODEL_FILE, STATE_FILE):
        prefix = f".{name}."
        for entry in os.listdir(folder):
            if entry.startswith(prefix) and entry.endswith(TEMP_SUFFIX):
                try:
                    os.remove(os.path.join(folder, entry))
                    removed.append(entry)
                except OSError:
                    pass
    return removed


def resume_state(folder, custom_objects=None):
    """``(model, initial_epoch)`` from a folder :class:`AtomicModelCheckpoint` wrote.

    ``(None, 0)`` when ``folder`` holds no checkpoint (missing, or neither file present).
    Otherwise ``model`` is ``keras.saving.load_model(<folder>/model.keras)``: compiled, with
    the optimizer's iterations and slot variables (momentum, Adam moments) restored, and
    ``initial_epoch`` the completed-epoch count to pass to ``fit(initial_epoch=...)``. Raises
    :class:`CheckpointError` (a ``ValueError``) when the files are corrupt or only one of the
    two exists. Leftover temporary files of a killed save are removed.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        return None, 0
    remove_temporaries(folder)
    model_path = os.path.join(folder, MODEL_FILE)
    state = read_state(folder)
    has_model = os.path.exists(model_path)
    if state is None and not has_model:
        return None, 0
    if state is None:
        raise CheckpointError(
            f"{model_path!r} exists but {STATE_FILE!r} does not: not a resumable checkpoint "
            "(the epoch it was saved at is unknown)"
        )
    if not has_model:
        raise CheckpointError(
            f"{STATE_FILE!r} in {folder!r} names no model: {model_path!r} is missing"
        )
    try:
        with warnings.catch_warnings():
            # RetinaNet overrides compile(), so Keras' compile_from_config may skip the
            # compile (with this warning); _restore_compile below does it instead.
            warnings.filterwarnings("ignore", message=".*compile\\(\\)` was not called")
            model = keras.saving.load_model(model_path, custom_objects=custom_objects)
        if getattr(model, "optimizer", None) is None:
            _restore_compile(model, model_path, custom_objects)
    except Exception as exc:
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise CheckpointError(
            f"checkpoint {model_path!r} is corrupted or not a .keras file ({detail})"
        ) from exc
    return model, state["epoch"]


def _restore_compile(model, path, custom_objects=None):
    """Compiles ``model`` from the ``compile_config`` of the ``.keras`` file ``path`` and
    loads the optimizer state (iterations, slot variables) from it.

    ``keras.Model.compile_from_config`` skips both for a model whose class overrides
    ``compile`` (as ``RetinaNet`` does), so a loaded model would otherwise come back
    uncompiled, and a resumed run would restart momentum and the learning-rate schedule.
    """
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    compile_config = config.get("compile_config")
    if not compile_config:
        return  # saved uncompiled: nothing to restore
    with keras.saving.custom_object_scope(custom_objects or {}):
        compile_args = keras.saving.deserialize_keras_object(compile_config)
    model.compile(**compile_args)
    model.optimizer.build(model.trainable_variables)
    model.load_weights(path)  # a .keras file: the model's and the optimizer's variables
