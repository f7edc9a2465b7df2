"""The one place where the library reads private Keras attributes.

Everything here is used by the fast paths (:mod:`keras_retinanet.fast`) only; the model code
uses public Keras. Each function checks that the attribute it needs exists and behaves as
expected and otherwise returns a plain-Keras answer (the fast path is then skipped), so a
Keras release that changes an internal makes the library slower, never wrong.

:data:`TESTED_KERAS` is the range of Keras versions the test suite runs on (``pyproject.toml``
pins the same range; ``nox -s oldest_keras`` runs the suite on the lower end).
"""

import dataclasses
import inspect

import keras

#: ``(oldest, newest)`` ``(major, minor)`` Keras versions the suite is run on.
TESTED_KERAS = ((3, 10), (3, 15))


def keras_version():
    """``(major, minor)`` of the installed Keras."""
    major, minor = keras.__version__.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def sublayers(layer):
    """``layer`` and every layer nested in it (recursively), each once, parents first.

    Keras' ``Layer._flatten_layers`` when it exists; otherwise a walk over the public
    ``layers`` list of models and the layer-valued attributes of other layers.
    """
    flatten = getattr(layer, "_flatten_layers", None)
    if callable(flatten):
        try:
            return list(flatten(include_self=True, recursive=True))
        except TypeError:
            pass
    seen, order, stack = set(), [], [layer]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        order.append(current)
        children = list(getattr(current, "layers", None) or [])
        for value in vars(current).values():
            values = value if isinstance(value, list | tuple) else [value]
            children.extend(v for v in values if isinstance(v, keras.layers.Layer))
        stack.extend(reversed(children))
    return order


def call_has_training_arg(layer):
    """Whether ``layer.call`` takes ``training`` (Keras records it at construction)."""
    known = getattr(layer, "_call_has_training_arg", None)
    if isinstance(known, bool):
        return known
    try:
        return "training" in inspect.signature(layer.call).parameters
    except (TypeError, ValueError):
        return False


def training_in_call_context():
    """Whether the Keras layer call in progress runs with ``training=True``, given to it or
    inherited from an outer layer's call (``Layer.__call__`` keeps the value in its call
    context, for layers such as ``Conv2D`` whose ``call`` takes no ``training``).

    ``False`` outside any layer call, and where this Keras keeps its call context elsewhere:
    callers then take their inference path, which is always correct.
    """
    try:
        from keras.src.backend.common import global_state

        context = global_state.get_global_attribute("current_call_ctx")
    except Exception:  # noqa: BLE001 - any change of the internal: the inference path
        return False
    return getattr(context, "training", None) is True


def is_quantized(layer):
    """Whether ``layer`` runs a quantized kernel (its ``call`` is then not what runs)."""
    policy = getattr(layer, "dtype_policy", None)
    return getattr(policy, "quantization_mode", None) is not None


def has_lora(layer):
    """Whether ``layer``'s kernel is computed per call from LoRA factors."""
    return bool(getattr(layer, "lora_enabled", False))


def batch_normalization_is_standard(layer):
    """A ``BatchNormalization`` without renormalisation or synchronised statistics (options
    whose attributes not every Keras version has: missing means off)."""
    return not getattr(layer, "renorm", False) and not getattr(layer, "synchronized", False)


#: Layer methods the fast paths may give an instance of their own.
REPLACEABLE = ("call", "convolution_op")


def replace_method(layer, name, function):
    """Gives ``layer`` (one the library built) an instance attribute ``name`` that shadows its
    class's method. ``object.__setattr__`` keeps Keras' attribute tracking out of it: the
    replacement is neither a sublayer nor state, and is not saved."""
    if name not in REPLACEABLE:
        raise ValueError(f"name must be one of {REPLACEABLE}, got {name!r}")
    object.__setattr__(layer, name, function)


def replaced_methods(layer):
    """The names in :data:`REPLACEABLE` that ``layer`` overrides on the instance."""
    return tuple(name for name in REPLACEABLE if name in vars(layer))


def restore_method(layer, name):
    """Removes an instance replacement made by :func:`replace_method` (no-op if none)."""
    vars(layer).pop(name, None)


@dataclasses.dataclass(frozen=True)
class GraphNode:
    """One call of a functional model's graph: ``operation(*args, **kwargs)`` where
    ``fill_in({id(symbolic input): value})`` gives ``(args, kwargs)``."""

    operation: object
    input_ids: tuple
    output_ids: tuple
    fill_in: object


@dataclasses.dataclass(frozen=True)
class FunctionalGraph:
    """A functional model's nodes in ``Functional.call``'s order (deepest first)."""

    nodes: tuple
    input_ids: tuple
    output_ids: tuple
    output_struct: object


def functional_graph(model):
    """The :class:`FunctionalGraph` of a functional ``keras.Model``, or ``None`` when
    ``model`` is not functional or this Keras version stores its graph differently
    (``Functional._nodes_by_depth``, ``Node.arguments.fill_in``, ``_outputs_struct``)."""
    try:
        nodes_by_depth = model._nodes_by_depth
        output_struct = model._outputs_struct
        nodes = []
        for depth in sorted(nodes_by_depth, reverse=True):
            for node in nodes_by_depth[depth]:
                if node.operation is None or node.is_input:
                    continue
                fill_in = node.arguments.fill_in
                if not callable(fill_in):
                    return None
                nodes.append(
                    GraphNode(
                        operation=node.operation,
                        input_ids=tuple(id(t) for t in node.input_tensors),
                        output_ids=tuple(id(t) for t in node.outputs),
                        fill_in=fill_in,
                    )
                )
        return FunctionalGraph(
            nodes=tuple(nodes),
            input_ids=tuple(id(x) for x in model.inputs),
            output_ids=tuple(id(x) for x in model.outputs),
            output_struct=output_struct,
        )
    except (AttributeError, TypeError):
        return None
