"""TensorFlow data parallelism: ``tf.distribute.MirroredStrategy`` (one host) or
``MultiWorkerMirroredStrategy`` (``TF_CONFIG``)."""

import contextlib

import tensorflow as tf


def _default_type():
    for kind in ("TPU", "GPU"):
        if tf.config.list_logical_devices(kind):
            return kind
    return "CPU"


def available_devices(device_type=None):
    kind = device_type.upper() if device_type else _default_type()
    return [device.name for device in tf.config.list_logical_devices(kind)]


def device_kind(devices):
    return devices[0].rsplit("/device:", 1)[-1].split(":")[0].lower() if devices else "tf"


# One MirroredStrategy per device set per process, reused: a second strategy over the same
# devices restarts TF's collective instance keys, and its all-reduces then collide with those
# of the first one's compiled steps ("Shape mismatch in the collective instance ...", seen when
# two models were fitted one after the other with fresh strategies).
_STRATEGIES = {}


def make_data_parallel(devices):
    key = tuple(devices)
    if key not in _STRATEGIES:
        _STRATEGIES[key] = tf.distribute.MirroredStrategy(devices=list(devices))
    return _STRATEGIES[key]


def make_multi_worker():
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    return strategy, list(strategy.extended.worker_devices)


def num_replicas(engine):
    return engine.num_replicas_in_sync


@contextlib.contextmanager
def scope(engine):
    with engine.scope():
        yield
