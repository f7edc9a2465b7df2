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
"""

import inspect
import weakref

import keras

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
        # Checked once here so that a missing attribute falls back before any work is done.
        for node in nodes:
            node.arguments.fill_in  # noqa: B018


def _takes_training(operation):
    try:
        return "training" in inspect.signature(operation.call).parameters
    except (TypeError, ValueError):
        return False


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
    tensors = dict(zip(plan.input_ids, flat, strict=True))
    for node, release, takes_training in zip(
        plan.nodes, plan.release, plan.takes_training, strict=True
    ):
        args, kwargs = node.arguments.fill_in(tensors)
        if takes_training and training is not None:
            kwargs["training"] = training
        outputs = node.operation(*args, **kwargs)
        for reference, value in zip(node.outputs, keras.tree.flatten(outputs), strict=True):
            tensors[id(reference)] = value
        for tensor_id in release:
            tensors.pop(tensor_id, None)
    outputs = [tensors[tensor_id] for tensor_id in plan.output_ids]
    return keras.tree.pack_sequence_as(plan.output_struct, outputs)
