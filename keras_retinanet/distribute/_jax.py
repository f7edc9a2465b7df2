"""JAX data parallelism: Keras's own ``keras.distribution.DataParallel`` (GSPMD sharding)."""

import contextlib

import keras


def available_devices(device_type=None):
    return keras.distribution.list_devices(device_type)


def device_kind(devices):
    return devices[0].split(":")[0] if devices else "jax"


def initialize_multi_host(coordinator_address, num_processes, process_id):
    """``jax.distributed.initialize`` through Keras (also reads ``KERAS_DISTRIBUTION_*``)."""
    keras.distribution.initialize(
        job_addresses=coordinator_address, num_processes=num_processes, process_id=process_id
    )


def make_data_parallel(devices):
    return keras.distribution.DataParallel(devices=list(devices))


def num_replicas(engine):
    return engine.num_model_replicas


@contextlib.contextmanager
def scope(engine):
    """Sets the Keras distribution, restoring the previous one (even ``None``) on exit."""
    previous = keras.distribution.distribution()
    keras.distribution.set_distribution(engine)
    try:
        yield
    finally:
        keras.distribution.set_distribution(previous)
