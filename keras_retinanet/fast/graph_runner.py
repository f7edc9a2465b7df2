"""Runs a functional ``keras.Model`` layer by layer, releasing each intermediate tensor as soon
as its last consumer has run.

Why: Keras' ``Functional.call`` keeps every intermediate output in one dictionary until the
whole graph has run. Graph compilers (``tf.function``, XLA, ``jax.jit``) plan memory
themselves, so this costs nothing there; in eager execution (PyTorch above all, also eager
TensorFlow and JAX) every activation of the backbone stays alive until the backbone returns,
and every new activation lands in freshly mapped memory instead of reusing the memory of
tensors that are no longer needed.

:class:`ReleasingCall` is the replacement ``call`` that :mod:`keras_retinanet.fast` gives a
functional backbone the library built. It visits the nodes in ``Functional.call``'s order
(deepest first), calls the same layer objects with the same arguments, and passes
``training`` to the layers whose ``call`` accepts it, so outputs are identical. It needs the
functional graph's node structure, which Keras does not expose publicly
(:func:`keras_retinanet._keras_internals.functional_graph`): without it, and for masks or
inputs it does not recognise, it runs Keras' own ``Functional.call``.

**Eager inference calls layers directly.** ``Layer.__call__`` costs tens of microseconds per
layer in eager execution (input conversion and casting, call contexts, name scopes, masks).
With ``training=False`` and concrete (eager, untraced) inputs, the runner calls ``layer.call``
directly for the Keras layers listed in ``DIRECT_CALL_TYPES`` (exactly those types, not
subclasses) when the layer is built, unquantized, with a dtype policy whose compute and
variable dtypes agree, every input already has the layer's compute dtype, and the backend has
nothing attached to the call (on PyTorch: no module hooks, no autocast): then ``__call__``
adds nothing to the arithmetic, so outputs are bit-identical.

**Eager training on PyTorch calls the same layers directly** (with ``training=True`` and
the same checks, and not a layer with an activity regulariser, whose loss ``__call__`` adds):
the layers' own ``call``, so batch normalization and convolutions run their training paths
(:mod:`keras_retinanet.fast._torch`).

**Eager inference reuses dead intermediates' memory.** When a batch normalization, ReLU or
``Add`` node's input is the fresh output of a ``Conv2D``, batch normalization, ReLU or ``Add``
node and this node is its only consumer (and it is not a model output), the runner *donates*
it: the backend's donating function (PyTorch) writes the result into the input's memory
instead of a new tensor, with the same operations in the same order, so outputs stay
bit-identical. A tensor that requires grad is never overwritten in inference. In eager
training (PyTorch) a ReLU or ``Add`` node overwrites such an input only when no gradient
formula reads it back: the output of a batch normalization, an ``Add`` or a ``Conv2D``
without activation (a ReLU's gradient reads the ReLU's output, so those are never
overwritten); ``relu_`` and ``add_`` record the same gradients, and autograd's version
counters would raise, never silently differ, if a saved tensor were overwritten.
"""

import weakref

import keras

from keras_retinanet import _keras_internals as internals
from keras_retinanet.backends import is_concrete_tensor

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


def _backend_module():
    """The active backend's fast module when it has eager-inference functions (PyTorch)."""
    if keras.backend.backend() == "torch":
        from keras_retinanet.fast import _torch

        return _torch
    return None


class _Plan:
    """The node order of one functional model and, per node, which tensors die after it."""

    def __init__(self, graph):
        nodes = graph.nodes
        kept = set(graph.output_ids) | set(graph.input_ids)
        last_use, uses = {}, {}
        for index, node in enumerate(nodes):
            for tensor_id in node.input_ids:
                last_use[tensor_id] = index
                uses[tensor_id] = uses.get(tensor_id, 0) + 1
        self.nodes = nodes
        self.input_ids = graph.input_ids
        self.output_ids = graph.output_ids
        self.output_struct = graph.output_struct
        # release[i]: ids of the tensors whose last consumer is node i (model outputs are
        # never released; model inputs belong to the caller).
        self.release = [[] for _ in nodes]
        for tensor_id, index in last_use.items():
            if tensor_id not in kept:
                self.release[index].append(tensor_id)
        self.takes_training = [internals.call_has_training_arg(n.operation) for n in nodes]
        # donate[i]: per input tensor of node i (flattened arguments, repeats included),
        # whether node i may overwrite it (see the module docstring); None: nothing to donate.
        fresh = {
            node.output_ids[0]
            for node in nodes
            if len(node.output_ids) == 1 and _returns_fresh_tensor(node.operation)
        }
        self.donate = _donations(nodes, fresh, uses, kept, _takes_donations)
        # The same for eager training, where autograd may have saved a tensor for the
        # backward pass: only outputs that no backward formula reads are donated.
        fresh_unsaved = {
            node.output_ids[0]
            for node in nodes
            if len(node.output_ids) == 1 and _output_unsaved_for_gradient(node.operation)
        }
        self.donate_training = _donations(
            nodes, fresh_unsaved, uses, kept, _takes_training_donations
        )


def _donations(nodes, fresh, uses, kept, takes_donations):
    """Per node, one flag per input tensor: whether the node may overwrite it (a ``fresh``
    tensor with that node as its only consumer, not a model input or output); ``None`` for
    a node that takes no donation."""
    donate = []
    for node in nodes:
        flags = tuple(t in fresh and uses[t] == 1 and t not in kept for t in node.input_ids)
        takes = takes_donations(node.operation) and any(flags)
        donate.append(flags if takes else None)
    return donate


def _output_unsaved_for_gradient(operation):
    """Whether ``operation``'s output is a fresh tensor (in eager execution) that no gradient
    formula reads back: batch normalization (its gradient reads its input), ``Add`` and a
    ``Conv2D`` without activation. A ReLU's gradient reads its output, so a ReLU's output (and
    a ``Conv2D`` with ReLU activation's) is never overwritten in training."""
    kind = type(operation)
    if kind is keras.layers.Conv2D:
        return operation.activation is keras.activations.linear
    return kind in (keras.layers.BatchNormalization, keras.layers.Add)


def _takes_training_donations(operation):
    """Whether ``operation`` has an in-place eager training form: ``Activation("relu")`` and
    ``Add`` (an in-place ReLU or sum records the same gradient)."""
    kind = type(operation)
    if kind is keras.layers.Activation:
        return operation.activation is keras.activations.relu
    return kind is keras.layers.Add


def _returns_fresh_tensor(operation):
    """Whether ``operation``'s output (in eager execution) is new memory that only its caller
    holds, never one of its inputs or a view of one: a ``Conv2D`` with a linear or ReLU
    activation, batch normalization, ``Activation("relu")`` and ``Add`` (exact types)."""
    if type(operation) is keras.layers.Conv2D:
        return operation.activation in (keras.activations.linear, keras.activations.relu)
    return _takes_donations(operation)  # their results are new tensors, in place or not


def _takes_donations(operation):
    """Whether ``operation`` has an in-place eager inference form (on PyTorch):
    batch normalization, ``Activation("relu")``, ``Add``."""
    kind = type(operation)
    if kind is keras.layers.Activation:
        return operation.activation is keras.activations.relu
    return kind in (keras.layers.BatchNormalization, keras.layers.Add)


def _call_method(layer, *args, **kwargs):
    return layer.call(*args, **kwargs)


def _direct_function(operation, backend, training=False):
    """``(compute_dtype, function, donating)``: ``function(operation, *args, **kwargs)`` may
    replace ``operation(*args, **kwargs)`` in eager inference (or, with ``training``, eager
    training) when every input has ``compute_dtype`` (see the module docstring); ``None`` when
    ``operation`` must go through ``Layer.__call__``."""
    if type(operation) not in DIRECT_CALL_TYPES or not operation.built:
        return None
    if training:
        # Training calls go directly only on a backend with in-place training forms, and
        # only to the layer's own ``call``; ``__call__`` would add an activity regulariser's
        # loss.
        if backend is None or getattr(operation, "activity_regularizer", None) is not None:
            return None
    if internals.is_quantized(operation):
        return None
    policy = operation.dtype_policy
    if policy.compute_dtype != policy.variable_dtype:
        return None  # mixed precision: __call__'s autocast scope casts the variables
    if backend is None:
        return policy.compute_dtype, _call_method, None
    if not backend.direct_calls_allowed(operation):
        return None
    if training:
        return policy.compute_dtype, _call_method, backend.training_donating_function(operation)
    function = backend.inference_function(operation) or _call_method
    return policy.compute_dtype, function, backend.donating_function(operation)


def _run(operation, args, kwargs, backend, eager, donate=None):
    """``operation(*args, **kwargs)``, directly when ``eager`` (``"inference"`` or
    ``"training"``, see :func:`_eager_mode`) allows it, writing into the inputs that
    ``donate`` flags where the backend can."""
    if eager is not None:
        direct = _direct_function(operation, backend, training=eager == "training")
        if direct is not None and _all_have_dtype(args, direct[0]):
            if donate is not None and direct[2] is not None:
                return direct[2](operation, donate, *args, **kwargs)  # bit-identical
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


def _eager_mode(flat_inputs, training):
    """``"inference"`` (``training`` false) or ``"training"`` when every input is an eager
    backend tensor; ``None`` otherwise (traced inputs, or arrays of other libraries, which
    ``__call__`` converts)."""
    if not all(keras.ops.is_tensor(x) and is_concrete_tensor(x) for x in flat_inputs):
        return None
    return "training" if training else "inference"


#: ``model -> _Plan`` (or ``None`` when the model cannot be run node by node).
_PLANS = weakref.WeakKeyDictionary()


def plan_for(model):
    """The cached :class:`_Plan` of a functional ``model``, or ``None`` when its graph cannot
    be read (see :func:`keras_retinanet._keras_internals.functional_graph`)."""
    try:
        return _PLANS[model]
    except KeyError:
        pass
    graph = internals.functional_graph(model)
    plan = None if graph is None else _Plan(graph)
    _PLANS[model] = plan
    return plan


def run_releasing(model, inputs, training=None):
    """``Functional.call(model, inputs, training)``, holding each intermediate tensor only
    until its last consumer has run. ``None`` when ``model`` or ``inputs`` are not a case it
    handles (the caller then runs Keras' own ``call``).

    Args:
        model: a built functional ``keras.Model``.
        inputs: what ``model`` takes: one tensor, or a flat list matching ``model.inputs``.
        training: passed to every layer whose ``call`` takes ``training``.
    """
    plan = plan_for(model)
    flat = keras.tree.flatten(inputs)
    symbolic = any(isinstance(x, keras.KerasTensor) for x in flat)
    if plan is None or symbolic or len(flat) != len(plan.input_ids):
        return None
    backend = _backend_module()
    eager = _eager_mode(flat, training)
    donations = plan.donate_training if eager == "training" else plan.donate
    tensors = dict(zip(plan.input_ids, flat, strict=True))
    for node, release, takes_training, donate in zip(
        plan.nodes, plan.release, plan.takes_training, donations, strict=True
    ):
        args, kwargs = node.fill_in(tensors)
        if takes_training and training is not None:
            kwargs["training"] = training
        outputs = _run(node.operation, args, kwargs, backend, eager, donate)
        if len(node.output_ids) == 1 and not isinstance(outputs, list | tuple | dict):
            tensors[node.output_ids[0]] = outputs
        else:
            for tensor_id, value in zip(node.output_ids, keras.tree.flatten(outputs), strict=True):
                tensors[tensor_id] = value
        for tensor_id in release:
            tensors.pop(tensor_id, None)
    outputs = [tensors[tensor_id] for tensor_id in plan.output_ids]
    return keras.tree.pack_sequence_as(plan.output_struct, outputs)


class ReleasingCall:
    """Replacement ``call`` of a functional model the library built: :func:`run_releasing`,
    or Keras' ``Functional.call`` for what it does not handle (masks, structured inputs)."""

    def __init__(self, model):
        self._model = weakref.ref(model)
        self._keras_call = type(model).call

    def __call__(self, inputs, training=None, mask=None, **kwargs):
        model = self._model()
        if mask is None and not kwargs:
            outputs = run_releasing(model, inputs, training=training)
            if outputs is not None:
                return outputs
        return self._keras_call(model, inputs, training=training, mask=mask, **kwargs)


def call_releasing(model, inputs, training=None):
    """``model(inputs, training=training)``, run by :func:`run_releasing` where it applies
    (a functional model with a readable graph and plain inputs), else by ``model`` itself."""
    outputs = run_releasing(model, inputs, training=training)
    return model(inputs, training=training) if outputs is None else outputs
