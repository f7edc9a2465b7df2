"""Subprocess half of the cross-backend parity tests: one backend per process, the one
``KERAS_BACKEND`` selects (TensorFlow and JAX loaded in one process can crash).

``python parity_worker.py save DIR`` (TensorFlow): builds the seeded models of ``MODELS``,
writes their weights, ``.keras`` files, inputs and reference outputs to ``DIR``, then loads both
files back into fresh models, as ``load`` does.

``python parity_worker.py load DIR``: loads both files under the current backend and writes
``outputs_<backend>_<model>_weights.npy`` and ``outputs_<backend>_<model>_keras.npy``.

``python parity_worker.py nms BACKEND CASES OUT``: runs ``keras_retinanet.nms._<BACKEND>`` on
the cases listed in the JSON file ``CASES`` (``[kind, index, group]``: kind ``"edge"`` or
``"random"``, index into ``edge_cases()`` or ``generate_cases()``, and a label of the shapes
JAX compiles for; in the order given) and pickles the NumPy results, in that order, to ``OUT``.
"""

import json
import os
import pickle
import sys

import numpy as np

#: name -> (RetinaNet keyword arguments, input batch, whether a ``.keras`` file is checked).
#: The compact backbone carries most of the check (every level of 2x256x256 inputs, weights
#: and ``.keras`` files); ResNet50 is checked once more on a small input, through the weights
#: file only, for its own layers (bottleneck blocks, and max pooling: JAX's fast path). That
#: costs about 25 CPU seconds over the three backends, most of it JAX compiling each eager op
#: (and each weight initialiser) for ResNet50's shapes.
MODELS = {
    "compact": (dict(num_classes=80, backbone="compact"), (2, 256, 256, 3), True),
    "resnet50": (dict(num_classes=80, backbone="resnet50"), (1, 64, 64, 3), False),
}


def cpu_seconds():
    """CPU time (user + system) of this process's finished child processes (0 without the
    ``resource`` module)."""
    try:
        import resource
    except ImportError:  # Windows
        return 0.0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _files(directory, name):
    return (
        os.path.join(directory, f"{name}.weights.h5"),
        os.path.join(directory, f"{name}.keras"),
        os.path.join(directory, f"images_{name}.npy"),
    )


def _save(directory):
    import keras
    from keras import ops

    from keras_retinanet import RetinaNet

    for seed, (name, (kwargs, shape, keras_file)) in enumerate(MODELS.items()):
        keras.utils.set_random_seed(seed)
        rng = np.random.default_rng(seed)
        images = rng.uniform(-120.0, 150.0, shape).astype("float32")  # caffe-mode range
        model = RetinaNet(**kwargs)  # the default fast_paths setting
        model.build(shape)
        # Fresh heads output almost constants (std 0.01 kernels, prior bias); perturb them
        # by half that std so the check covers the heads with non-trivial outputs.
        for weight in model.weights:
            if "head" in weight.path:
                value = ops.convert_to_numpy(weight)
                weight.assign(value + rng.normal(0.0, 0.005, value.shape).astype("float32"))
        outputs = ops.convert_to_numpy(model(images))
        weights_path, keras_path, images_path = _files(directory, name)
        model.save_weights(weights_path)
        if keras_file:
            model.save(keras_path)
        np.save(images_path, images)
        np.save(os.path.join(directory, f"outputs_tensorflow_{name}_reference.npy"), outputs)
        print(f"{name}: fast paths {sorted(model.fast_paths_applied)}")


def _load(directory):
    import keras
    from keras import ops

    from keras_retinanet import RetinaNet

    backend = keras.backend.backend()
    for name, (kwargs, shape, keras_file) in MODELS.items():
        weights_path, keras_path, images_path = _files(directory, name)
        images = np.load(images_path)
        model = RetinaNet(**kwargs)
        model.build(shape)
        model.load_weights(weights_path)
        prefix = os.path.join(directory, f"outputs_{backend}_{name}")
        np.save(f"{prefix}_weights.npy", ops.convert_to_numpy(model(images)))
        if keras_file:
            loaded = keras.saving.load_model(keras_path)
            np.save(f"{prefix}_keras.npy", ops.convert_to_numpy(loaded(images)))
        print(f"{name}: fast paths {sorted(model.fast_paths_applied)}")


def _nms(backend, cases_path, out_path):
    import importlib

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from nms_cases import edge_cases, generate_cases

    if backend == "torch":
        import torch

        # One intra-op thread: every op here is tiny, and on a busy 2-core machine (two
        # pytest-xdist workers) spinning OpenMP threads made the run four times slower.
        # The algorithm is exact, so the thread count cannot change a result.
        torch.set_num_threads(1)
    module = importlib.import_module(f"keras_retinanet.nms._{backend}")
    with open(cases_path) as f:
        selection = json.load(f)
    pool = {"edge": edge_cases(), "random": generate_cases()}
    previous, out = None, []
    for kind, index, group in selection:
        if backend == "jax" and previous not in (None, group):
            # The cases come grouped by the shapes JAX compiles for; a group's programs are
            # not needed again (a process holding hundreds of them can run out of memory maps).
            import jax

            jax.clear_caches()
        previous = group
        case = pool[kind][index]
        result = module.combined_non_max_suppression(case.boxes, case.scores, **case.kwargs())
        out.append([np.asarray(x.cpu() if hasattr(x, "cpu") else x) for x in result])
    with open(out_path, "wb") as f:
        pickle.dump(out, f)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "save":
        _save(*args)
        _load(*args)
    else:
        {"load": _load, "nms": _nms}[mode](*args)
