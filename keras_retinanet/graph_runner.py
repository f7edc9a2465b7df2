"""Runs a functional ``keras.Model`` layer by layer, releasing each intermediate tensor as soon
as its last consumer has run.

Why: Keras' ``Functional.call`` keeps every intermediate output in one dictionary until the
whole graph has run. Graph compilers (``tf.function``, XLA, ``jax.jit``) plan memory
themselves, so this costs nothing there; in eager execution (PyTorch above all, also eager
TensorFlow and JAX) every activation of the backbone stays alive until the backbone returns.
For ResNet50 at batch 8 and 512x512 that is about 5 GB, and because nothing is freed, every
new activation lands in freshly mapped memory (page faults and zeroing) instead of reusing the
memory of tensors that are no longer needed. On a 2-core CPU with PyTorch the backbone's
batch-8 forward took 7.6-9.7 s with a 6.8 GB peak through ``Functional.call`` and 4.9-5.2 s
with a 1.9 GB peak with this runner (same outputs).

The runner visits the nodes in ``Functional.call``'s order (deepest first), calls the same
layer objects with the same arguments, and passes ``training`` to the layers whose ``call``
accepts it, so outputs are identical. It needs the functional graph's node structure, which
Keras does not expose publicly (``_nodes_by_depth``, ``Node.arguments``): when a model does
not have it (a subclassed backbone, or a Keras version that changed it), ``call_releasing``
falls back to ``model(inputs, training=training)``.

**Eager inference calls layers directly.** ``Layer.__call__`` costs tens of microseconds per
layer in eager execution (input conversion and casting, call contexts, name scopes, masks and,
on PyTorch, ``nn.Module`` hooks). With ``training=False`` and concrete (eager, untraced)
inputs, the runner calls ``layer.call`` directly for the Keras layers listed in
``DIRECT_CALL_TYPES`` (exactly those types, not subclasses) when the layer is built,
unquantized, with a dtype policy whose compute and variable dtypes agree, and every input
already has the layer's compute dtype: then ``__call__`` adds nothing to the arithmetic, so
outputs are bit-identical. Where the backend has one (PyTorch: ``Conv2D``,
``BatchNormalization``, ``Activation("relu")``), ``backends.inference_function`` replaces
``layer.call`` by the same operations written without ``keras.ops``' per-op dispatch.
:func:`call_layer` offers the same for the single layers that ``FeaturePyramid`` and
``PredictionHead`` call.

**Eager inference reuses dead intermediates' memory.** When a batch normalization, ReLU or
``Add`` node's input is the fresh output of a ``Conv2D``, batch normalization, ReLU or ``Add``
node and this node is its only consumer (and it is not a model output), the runner *donates*
it: ``backends.donating_function`` (PyTorch) writes the result into the input's memory instead
of a new tensor, with the same operations in the same order, so outputs stay bit-identical.
A tensor that requires grad (inference with autograd recording) is never overwritten.
"""

import inspect
import weakref

import keras

from keras_retinanet.backends import (
    donating_function,
    inference_function,
    is_concrete_tensor,
    relu_in_place,
)

#: Layer types whose ``call`` needs nothing from ``Layer.__call__`` in eager inference: their
#: inference arithmetic reads only their variables and inputs.
DIRECT_CALL_TYPES = (
    keras.layers.Activation,
    keras.layers.Add,
    keras.layers.BatchNormalization,
    keras.layers.Conv2D,
    keras.layers.MaxPooling2D,
    keras.layers.ReLU,
    keras.layers.Rescaling,
    keras.layers.ZeroPadding2D,
)

#: ``model -> _Plan`` (or ``None`` when the model cannot be run node by node).
_PLANS = weakref.WeakKeyDictionary()


class _Plan:
    """The node order of one functional model and, per node, which tensors die after it."""

    def __init__(self, model):
        nodes = []
        for depth in sorted(model._nodes_by_depth, reverse=True):
            for node in model._nodes_by_depth[depth]:
                if node.operation is not None and not node.is_input:
                    nodes.append(node)
        kept = {id(x) for x in model.outputs} | {id(x) for x in model.inputs}
        last_use = {}
        for index, node in enumerate(nodes):
            for tensor in node.input_tensors:
                last_use[id(tensor)] = index
        self.nodes = nodes
        self.input_ids = [id(x) for x in model.inputs]
        self.output_ids = [id(x) for x in model.outputs]
        self.output_struct = model._outputs_struct
        # release[i]: ids of the tensors whose last consumer is node i (model outputs are
        # never released; model inputs belong to the caller).
        self.release = [[] for _ in nodes]
        for tensor_id, index in last_use.items():
            if tensor_id not in kept:
                self.release[index].append(tensor_id)
        self.takes_training = [_takes_training(node.operation) for node in nodes]
        # donate[i]: per input tensor of node i (flattened arguments, repeats included),
        # whether node i may overwrite it (see the module docstring); None: nothing to donate.
        uses = {}
        for node in nodes:
            for tensor in node.input_tensors:
                uses[id(tensor)] = uses.get(id(tensor), 0) + 1
        fresh = {
            id(node.outputs[0])
            for node in nodes
            if len(node.outputs) == 1 and _returns_fresh_tensor(node.operation)
        }
        self.donate = []
        for node in nodes:
            flags = tuple(
                id(t) in fresh and uses[id(t)] == 1 and id(t) not in kept
                for t in node.input_tensors
            )
            takes = _takes_donations(node.operation) and any(flags)
            self.donate.append(flags if takes else None)
        # Checked once here so that a missing attribute falls back before any work is done.
        for node in nodes:
            node.arguments.fill_in  # noqa: B018


def _returns_fresh_tensor(operation):
    """Whether ``operation``'s output (in eager execution) is new memory that only its caller
    holds, never one of its inputs or a view of one: a ``Conv2D`` with a linear or ReLU
    activation, batch normalization, ``Activation("relu")`` and ``Add`` (exact types)."""
    if type(operation) is keras.layers.Conv2D:
        return operation.activation in (keras.activations.linear, keras.activations.relu)
    return _takes_donations(operation)  # their results are new tensors, in place or not


def _takes_donations(operation):
    """Whether ``operation`` has an in-place eager inference form (on PyTorch; see
    ``backends.donating_function``): batch normalization, ``Activation("relu")``, ``Add``."""
    kind = type(operation)
    if kind is keras.layers.Activation:
        return operation.activation is keras.activations.relu
    return kind in (keras.layers.BatchNormalization, keras.layers.Add)


def _call_method(layer, *args, **kwargs):
    return layer.call(*args, **kwargs)


def _direct_function(operation):
    """``(compute_dtype, function)``: ``function(operation, *args, **kwargs)`` may replace
    ``operation(*args, **kwargs)`` in eager inference when every input has ``compute_dtype``
    (see the module docstring); ``None`` when ``operation`` must go through
    ``Layer.__call__``."""
    if type(operation) not in DIRECT_CALL_TYPES or not operation.built:
        return None
    if getattr(operation, "quantization_mode", None) is not None:
        return None
    policy = operation.dtype_policy
    if policy.compute_dtype != policy.variable_dtype:
        return None  # mixed precision: __call__'s autocast scope casts the variables
    return policy.compute_dtype, inference_function(operation) or _call_method


def _run(operation, args, kwargs, eager_inference, donate=None):
    """``operation(*args, **kwargs)``, directly when ``eager_inference`` allows it, writing
    into the inputs that ``donate`` flags where the backend can."""
    if eager_inference:
        direct = _direct_function(operation)
        if direct is not None and _all_have_dtype(args, direct[0]):
            if donate is not None:
                donating = donating_function(operation)
                if donating is not None:
                    return donating(operation, donate, *args, **kwargs)  # bit-identical
            return direct[1](operation, *args, **kwargs)  # bit-identical, see above
    return operation(*args, **kwargs)


#: ``backend dtype -> standardized name`` (``keras.backend.standardize_dtype`` is slow).
_DTYPE_NAMES = {}


def _all_have_dtype(values, dtype):
    """Whether ``values`` (a tensor, or a list or tuple of them) all have ``dtype``; False for
    anything else, which ``__call__`` would convert first."""
    if isinstance(values, list | tuple):
        return all(_all_have_dtype(value, dtype) for value in values)
    backend_dtype = getattr(values, "dtype", None)
    if backend_dtype is None:
        return False
    name = _DTYPE_NAMES.get(backend_dtype)
    if name is None:
        name = _DTYPE_NAMES[backend_dtype] = keras.backend.standardize_dtype(backend_dtype)
    return name == dtype


def _eager_inference(flat_inputs, training):
    """``training=False`` and every input an eager backend tensor (arrays of other libraries
    go through ``__call__``, which converts them)."""
    return training is False and all(
        keras.ops.is_tensor(x) and is_concrete_tensor(x) for x in flat_inputs
    )


def _takes_training(operation):
    known = getattr(operation, "_call_has_training_arg", None)  # Keras records it at init
    if isinstance(known, bool):
        return known
    try:
        return "training" in inspect.signature(operation.call).parameters
    except (TypeError, ValueError):
        return False


def call_layer(layer, inputs, *, training=None):
    """``layer(inputs, training=...)``, or its direct equivalent when that is the same thing:
    eager inference (``training=False``, concrete inputs) of a layer the module docstring
    admits. ``inputs`` is one tensor.

    Why: a head's or pyramid's convolutions run through ``Layer.__call__`` dozens of times per
    image; in eager PyTorch that bookkeeping alone is several per cent of a batch-1 forward.
    """
    kwargs = {"training": training} if training is not None and _takes_training(layer) else {}
    return _run(layer, (inputs,), kwargs, _eager_inference([inputs], training))


def relu_of_fresh(x, *, training=None):
    """``ops.relu(x)`` for a tensor that only the caller holds (a layer's output it has just
    computed): in eager inference written into ``x`` where the backend can (PyTorch), with the
    same values."""
    if _eager_inference([x], training):
        return relu_in_place(x)
    return keras.ops.relu(x)


def _plan_for(model):
    try:
        return _PLANS[model]
    except KeyError:
        pass
    try:
        plan = _Plan(model)
    except (AttributeError, TypeError):
        plan = None  # not a functional model, or Keras changed its graph internals
    _PLANS[model] = plan
    return plan


def call_releasing(model, inputs, training=None):
    """``model(inputs, training=training)`` for a functional ``keras.Model``, holding each
    intermediate tensor only until its last consumer has run.

    Args:
        model: a built functional ``keras.Model`` (other models are simply called).
        inputs: what ``model`` takes: one tensor, or a flat list matching ``model.inputs``.
        training: passed to every layer whose ``call`` takes ``training``.

    Returns:
        The model's outputs, in the structure ``model(inputs)`` returns them.
    """
    plan = _plan_for(model)
    flat = keras.tree.flatten(inputs)
    symbolic = any(isinstance(x, keras.KerasTensor) for x in flat)
    if plan is None or symbolic or len(flat) != len(plan.input_ids):
        return model(inputs, training=training)
    eager_inference = _eager_inference(flat, training)
    tensors = dict(zip(plan.input_ids, flat, strict=True))
    for node, release, takes_training, donate in zip(
        plan.nodes, plan.release, plan.takes_training, plan.donate, strict=True
    ):
        args, kwargs = node.arguments.fill_in(tensors)
        if takes_training and training is not None:
            kwargs["training"] = training
        outputs = _run(node.operation, args, kwargs, eager_inference, donate)
        if len(node.outputs) == 1 and not isinstance(outputs, list | tuple | dict):
            tensors[id(node.outputs[0])] = outputs
        else:
            for reference, value in zip(node.outputs, keras.tree.flatten(outputs), strict=True):
                tensors[id(reference)] = value
        for tensor_id in release:
            tensors.pop(tensor_id, None)
    outputs = [tensors[tensor_id] for tensor_id in plan.output_ids]
    return keras.tree.pack_sequence_as(plan.output_struct, outputs)
