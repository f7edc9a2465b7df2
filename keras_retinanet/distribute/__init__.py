"""Multi-device data-parallel training on each backend's own engine.

``data_parallel(num_devices)`` returns a :class:`DataParallel` whose ``scope()`` (or the object
itself, as a context manager) is where a model is built, compiled and fitted on ``num_devices``
devices of the current Keras backend. Nothing here splits batches or averages gradients by
hand: each backend's own distribution engine does it::

    import keras

    from keras_retinanet import RetinaNet
    from keras_retinanet.distribute import data_parallel

    with data_parallel(num_devices=2, batch_size=8) as dp:   # 8 images a step, 4 per device
        model = RetinaNet(num_classes=80)
        model.compile(optimizer=keras.optimizers.SGD(0.01))
        model.fit(dataset, epochs=12)                        # batches of the GLOBAL size

The batch size given to ``fit`` (or produced by a dataset) is the global one; each device
computes ``batch_size / num_replicas`` images, so it must divide evenly
(``DataParallel.check_batch_size``; ``data_parallel(batch_size=...)`` checks it up front).

Backends
--------
JAX
    ``keras.distribution.DataParallel(devices=...)`` made current with
    ``keras.distribution.set_distribution`` for the duration of the scope (the previous
    distribution is restored on exit). Variables are replicated and every batch is sharded
    along its first axis; the train step stays ONE jitted XLA computation over the global batch
    (GSPMD inserts the all-reduces). Multi-host: start one process per host with
    ``data_parallel(multi_host=True, coordinator_address="10.0.0.1:1234", num_processes=2,
    process_id=i)`` (or the ``KERAS_DISTRIBUTION_JOB_ADDRESSES``,
    ``KERAS_DISTRIBUTION_NUM_PROCESSES`` and ``KERAS_DISTRIBUTION_PROCESS_ID`` environment
    variables, or none of them on Cloud TPU): it calls ``keras.distribution.initialize``, i.e.
    ``jax.distributed.initialize``, before anything else touches JAX's devices; devices are
    then the global ones and Keras shards ``tf.data`` inputs per process. Not tested here (one
    host only).

    Batch normalisation: statistics are GLOBAL. The sharded computation takes the mean and
    variance over the whole global batch, exactly as on one device (measured: a
    ``BatchNormalization`` layer's moving statistics after one training step on 2 devices equal
    the global batch's to ~1e-7 relative, and the next layer's update equals 1 device's).

TensorFlow
    ``tf.distribute.MirroredStrategy(devices)``; the model must be built AND compiled inside
    the scope (variables become mirrored variables, the optimizer's slots too); ``fit`` then
    runs the step on every replica and all-reduces the gradients (Keras scales each replica's
    loss by ``1 / num_replicas_in_sync``, so the update equals the global-batch mean).
    Devices: the GPUs if any, else the CPUs (logical devices: to try it on one CPU, call
    ``tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()]
    * 2)`` before TensorFlow initialises). Multi-worker: set ``TF_CONFIG`` on every worker
    (``{"cluster": {"worker": [...]}, "task": {"type": "worker", "index": i}}``) and use
    ``data_parallel(multi_worker=True)``, which makes a
    ``tf.distribute.MultiWorkerMirroredStrategy`` (all of each worker's GPUs; not tested here).

    Batch normalisation: statistics are PER REPLICA. Keras's ``BatchNormalization`` with
    ``synchronized=False`` (the default) normalises each replica's ``batch_size /
    num_replicas`` images with their own mean and variance, so a 2-replica step differs from
    a 1-device step of the same global batch. Its moving statistics are variables with
    aggregation ``"none"``: each replica updates its own copy from its own images and the copies
    are never averaged (measured on 2 logical CPUs: the two copies differ after one step;
    ``get_weights()`` and saved files hold replica 0's copy, the statistics of replica 0's
    half batch alone). ``BatchNormalization(synchronized=True)`` all-reduces the statistics
    over the replicas instead. Without batch normalisation (or with it frozen), a 2-replica
    step equals the 1-device step to float32 rounding.

PyTorch
    Not a context manager: PyTorch data parallelism (DistributedDataParallel) needs one
    process per device, started by ``torchrun --nproc_per_node=N train.py``.
    ``data_parallel`` raises ``ValueError`` on this backend and points to the PyTorch helper,
    ``keras_retinanet.distribute._torch`` (documented there; launched with torchrun).

Backend-specific imports live only in ``_jax.py`` and ``_tensorflow.py`` (and ``_torch.py``).
"""

import contextlib
import importlib

import keras

__all__ = ["DataParallel", "available_devices", "data_parallel"]

_MODULES = {"tensorflow": "_tensorflow", "jax": "_jax"}

_TORCH_MESSAGE = (
    "data_parallel() has no in-process multi-device mode on the torch backend: PyTorch data "
    "parallelism runs one process per device, launched with `torchrun --nproc_per_node=N "
    "train.py`. Use the PyTorch helper in keras_retinanet.distribute._torch instead."
)


def _backend_module():
    backend = keras.backend.backend()
    if backend == "torch":
        raise ValueError(_TORCH_MESSAGE)
    name = _MODULES.get(backend)
    if name is None:
        raise ValueError(f"data parallelism is not supported on the {backend!r} backend")
    return importlib.import_module(f"{__name__}.{name}")


def available_devices(device_type=None):
    """Names of the devices data parallelism can use on the current backend.

    ``device_type`` is ``"cpu"``, ``"gpu"`` or ``"tpu"``; ``None`` means the accelerators if
    there are any, else the CPUs. JAX: ``"cpu:0"``-style names (all hosts' devices after
    multi-host initialisation); TensorFlow: logical device names such as
    ``"/device:CPU:0"``. Torch: whatever ``keras_retinanet.distribute._torch.available_devices``
    returns once that helper exists, else ``ValueError``.
    """
    if keras.backend.backend() == "torch":
        # The PyTorch helper (keras_retinanet/distribute/_torch.py, torchrun) may list them.
        try:
            torch_module = importlib.import_module(f"{__name__}._torch")
        except ImportError:
            torch_module = None
        if torch_module is not None and hasattr(torch_module, "available_devices"):
            return list(torch_module.available_devices(device_type))
    return list(_backend_module().available_devices(device_type))


class DataParallel:
    """Data parallelism over ``devices`` on the current backend (see the module docstring).

    Use ``with dp.scope():`` or ``with dp:``; build, compile and fit the model inside. Made by
    :func:`data_parallel`.
    """

    def __init__(self, engine, devices, backend):
        self._engine = engine  # the backend's own object: keras DataParallel or tf strategy
        self.devices = list(devices)
        self.backend = backend
        self._scopes = []

    @property
    def num_replicas(self):
        """How many copies of the model run (each on its share of the global batch)."""
        return _backend_module().num_replicas(self._engine)

    @property
    def engine(self):
        """The backend's object: ``keras.distribution.DataParallel`` (JAX) or the
        ``tf.distribute`` strategy (TensorFlow)."""
        return self._engine

    def check_batch_size(self, batch_size):
        """``ValueError`` unless the global ``batch_size`` splits evenly over the replicas;
        returns the per-replica batch size."""
        replicas = self.num_replicas
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if batch_size % replicas:
            raise ValueError(
                f"the global batch size {batch_size} is not divisible by the number of "
                f"replicas {replicas}: use a multiple of {replicas}"
            )
        return batch_size // replicas

    @contextlib.contextmanager
    def scope(self):
        """Context manager under which models are built, compiled and fitted data-parallel."""
        with _backend_module().scope(self._engine):
            yield self

    def __enter__(self):
        scope = self.scope()
        value = scope.__enter__()
        self._scopes.append(scope)
        return value

    def __exit__(self, *exc_info):
        return self._scopes.pop().__exit__(*exc_info)

    def __repr__(self):
        return (
            f"DataParallel(backend={self.backend!r}, num_replicas={self.num_replicas}, "
            f"devices={self.devices!r})"
        )


def data_parallel(
    num_devices=None,
    *,
    devices=None,
    device_type=None,
    batch_size=None,
    multi_host=False,
    multi_worker=False,
    coordinator_address=None,
    num_processes=None,
    process_id=None,
):
    """A :class:`DataParallel` over ``num_devices`` devices of the current backend.

    Args:
        num_devices: how many devices (the first ones of ``available_devices(device_type)``);
            ``None``: all of them. ``ValueError`` when more are asked than exist.
        devices: explicit device names (from ``available_devices``) instead of
            ``num_devices``.
        device_type: ``"cpu"``, ``"gpu"`` or ``"tpu"``; ``None``: accelerators if any.
        batch_size: the global batch size, if known: ``ValueError`` unless the number of
            replicas divides it.
        multi_host: JAX only: call ``keras.distribution.initialize`` (that is,
            ``jax.distributed.initialize``) with ``coordinator_address``, ``num_processes``
            and ``process_id`` (or the ``KERAS_DISTRIBUTION_*`` environment variables) first.
            Must happen before anything else uses JAX. ``num_devices`` then counts global
            devices.
        multi_worker: TensorFlow only: a ``MultiWorkerMirroredStrategy`` configured by
            ``TF_CONFIG`` (``num_devices`` and ``devices`` must stay ``None``).

    On the torch backend: ``ValueError`` (use torchrun and ``keras_retinanet.distribute._torch``).
    """
    backend = keras.backend.backend()
    module = _backend_module()
    if multi_host and backend != "jax":
        raise ValueError(
            f"multi_host=True is for the JAX backend; on {backend!r} use "
            + ("multi_worker=True and TF_CONFIG" if backend == "tensorflow" else "torchrun")
        )
    if multi_worker and backend != "tensorflow":
        raise ValueError(
            f"multi_worker=True is for the TensorFlow backend; on {backend!r} use "
            "multi_host=True (jax.distributed.initialize)"
        )
    if not multi_host and any(v is not None for v in (coordinator_address, num_processes)):
        raise ValueError("coordinator_address and num_processes need multi_host=True")
    if num_devices is not None and devices is not None:
        raise ValueError("give num_devices or devices, not both")
    if multi_host:
        module.initialize_multi_host(coordinator_address, num_processes, process_id)
    if multi_worker:
        if num_devices is not None or devices is not None:
            raise ValueError(
                "multi_worker=True uses every GPU of every TF_CONFIG worker: leave num_devices "
                "and devices unset"
            )
        engine, devices = module.make_multi_worker()
    else:
        existing = module.available_devices(device_type)
        if devices is None:
            if num_devices is not None:
                if isinstance(num_devices, bool) or not isinstance(num_devices, int):
                    raise ValueError(f"num_devices must be an integer, got {num_devices!r}")
                if num_devices < 1:
                    raise ValueError(f"num_devices must be at least 1, got {num_devices}")
                if num_devices > len(existing):
                    raise ValueError(
                        f"num_devices={num_devices} but only {len(existing)} "
                        f"{module.device_kind(existing)} device(s) exist on the {backend} "
                        f"backend: {existing}"
                    )
                devices = existing[:num_devices]
            else:
                devices = existing
        else:
            devices = list(devices)
            unknown = [d for d in devices if d not in existing]
            if not devices or unknown:
                raise ValueError(f"unknown devices {unknown or devices}; available: {existing}")
        engine = module.make_data_parallel(devices)
    result = DataParallel(engine, devices, backend)
    if batch_size is not None:
        result.check_batch_size(batch_size)
    return result
