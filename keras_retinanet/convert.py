"""torchvision RetinaNet checkpoints -> ``keras_retinanet.RetinaNet`` on any backend.

:func:`from_torchvision` reads a state dict of ``retinanet_resnet50_fpn`` (v1) or
``retinanet_resnet50_fpn_v2`` (v2), builds the matching configuration
(:func:`keras_retinanet.variants.torchvision_retinanet`) and copies every tensor into it. The
converted model's raw outputs are torchvision's ``head(backbone(x))`` outputs, concatenated
in torchvision's anchor order; the layout is in docs/numerics.md, "torchvision variants".
"""

import os
import re

import keras
import numpy as np

from keras_retinanet.variants import check_torchvision_version, torchvision_retinanet

#: Keras weight name -> torchvision tensor name suffix, per layer kind.
_CONV = (("kernel", "weight"), ("bias", "bias"))
_NORM = (("gamma", "weight"), ("beta", "bias"))
_BATCH_NORM = _NORM + (("moving_mean", "running_mean"), ("moving_variance", "running_var"))
#: torchvision state-dict entries that hold no weight (``BatchNorm2d``'s step counter).
_IGNORED_SUFFIXES = (".num_batches_tracked",)


def _read_state(source):
    """``source`` (see :func:`load_state_dict`) -> its mapping of names to tensors."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise ValueError(f"source must be an existing .pth or .safetensors file, got {path!r}")
        if path.endswith(".safetensors"):
            try:
                from safetensors.numpy import load_file
            except ImportError as err:
                raise ImportError(
                    "reading a .safetensors file needs the safetensors package: "
                    "pip install safetensors"
                ) from err
            state = load_file(path)
        elif path.endswith((".pth", ".pt", ".bin")):
            try:
                import torch
            except ImportError as err:
                raise ImportError(
                    "reading a .pth file needs PyTorch (pip install torch); or save the state "
                    "dict as .safetensors elsewhere and convert that"
                ) from err
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise ValueError(f"source must be a .pth or .safetensors file, got {path!r}")
    else:
        state = source
    if hasattr(state, "keys") and "model" in state and hasattr(state["model"], "keys"):
        state = state["model"]
    if not hasattr(state, "items"):
        raise ValueError(
            f"source must hold a mapping of tensor names to tensors, got {type(state).__name__}"
        )
    return state


def load_state_dict(source):
    """Reads a torchvision state dict into ``{name: float32 NumPy array}``, with the names of
    older torchvision releases renamed to today's and ``num_batches_tracked`` left out.

    ``source`` is as for :func:`from_torchvision`: a ``.pth``/``.pt`` file as torchvision
    saves and publishes it (needs PyTorch; read with ``torch.load(weights_only=True)``, so no
    code in the file runs), a ``.safetensors`` file (needs only the ``safetensors``
    package), or a mapping of names to arrays or tensors. A training checkpoint holding the
    state dict under ``"model"`` (torchvision's reference scripts) and names prefixed
    ``module.`` (``DataParallel``) are accepted too.

    Raises:
        ValueError: for a path that does not exist or has another extension, or a file
            that does not hold a mapping of names to tensors.
        ImportError: when the library needed to read the file is not installed (the message
            says which).
    """
    return _to_arrays(_read_state(source))


def _to_arrays(state):
    arrays = {}
    for name, value in state.items():
        name = str(name)
        if name.startswith("module."):
            name = name[len("module.") :]
        if name.endswith(_IGNORED_SUFFIXES):
            continue
        if hasattr(value, "detach"):  # a torch tensor (bfloat16 has no NumPy type)
            value = value.detach().cpu().float().numpy()
        arrays[name] = np.asarray(value, dtype="float32")
    return _rename_old_keys(arrays)


def _rename_old_keys(state):
    """Names of checkpoints saved before torchvision 0.13 (among them the published v1 COCO
    file) -> today's: FPN ``inner_blocks.i.weight`` -> ``inner_blocks.i.0.weight`` and head
    ``conv.{2i}.weight`` -> ``conv.i.0.weight``, as torchvision's own loaders rename them."""
    renamed = {}
    for name, value in state.items():
        name = re.sub(
            r"^(backbone\.fpn\.(?:inner|layer)_blocks\.\d+)\.(weight|bias)$", r"\1.0.\2", name
        )
        match = re.match(r"^(head\.\w+_head\.conv)\.(\d+)\.(weight|bias)$", name)
        if match:
            name = f"{match.group(1)}.{int(match.group(2)) // 2}.0.{match.group(3)}"
        renamed[name] = value
    return renamed


def torchvision_names(model):
    """``{torchvision tensor name: (Keras variable, kind)}`` for a model built by
    :func:`keras_retinanet.variants.torchvision_retinanet` (``kind``: ``"conv"`` kernels are
    transposed from ``[out, in, kh, kw]`` to ``[kh, kw, in, out]``, the rest copy as they are)."""
    names = {}

    def add(prefix, layer, pairs, kind="copy"):
        for keras_name, torch_name in pairs:
            variable = getattr(layer, keras_name, None)
            if variable is not None:
                names[f"{prefix}.{torch_name}"] = (
                    variable,
                    "conv" if kind == "conv" and keras_name == "kernel" else "copy",
                )

    for layer in model.backbone.layers:
        prefix = "backbone.body." + layer.name.replace("_", ".")
        if hasattr(layer, "moving_variance"):
            add(prefix, layer, _BATCH_NORM)
        elif hasattr(layer, "kernel"):
            add(prefix, layer, _CONV, "conv")
    fpn = model.fpn
    for i, level in enumerate(("c3", "c4", "c5")):
        add(f"backbone.fpn.inner_blocks.{i}.0", getattr(fpn, f"conv_{level}_1x1"), _CONV, "conv")
        add(f"backbone.fpn.layer_blocks.{i}.0", getattr(fpn, f"conv_{level}_3x3"), _CONV, "conv")
    add("backbone.fpn.extra_blocks.p6", fpn.conv_c6_3x3, _CONV, "conv")
    add("backbone.fpn.extra_blocks.p7", fpn.conv_c7_3x3, _CONV, "conv")
    for head, torch_head, output in (
        (model.cls_head, "classification_head", "cls_logits"),
        (model.box_head, "regression_head", "bbox_reg"),
    ):
        for i, conv in enumerate(head.hidden):
            add(f"head.{torch_head}.conv.{i}.0", conv, _CONV, "conv")
            if head.norms:
                add(f"head.{torch_head}.conv.{i}.1", head.norms[i], _NORM)
        add(f"head.{torch_head}.{output}", head.output_conv, _CONV, "conv")
    return names


def _num_classes(state, anchors_per_location):
    key = "head.classification_head.cls_logits.weight"
    if key not in state:
        raise ValueError(f"source is not a torchvision RetinaNet state dict: it has no {key!r}")
    channels = state[key].shape[0]
    if channels % anchors_per_location:
        raise ValueError(
            f"{key} has {channels} output channels, not a multiple of the "
            f"{anchors_per_location} anchors per location"
        )
    return channels // anchors_per_location


def _listing(names, limit=8):
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def from_torchvision(
    source,
    *,
    version="v1",
    data_format=None,
    batch_norm_epsilon="auto",
    **kwargs,
):
    """A ``RetinaNet`` holding a torchvision RetinaNet checkpoint.

    Args:
        source: a ``.pth`` or ``.safetensors`` state dict, or a mapping of names to arrays
            (see :func:`load_state_dict`).
        version: ``"v1"`` (``retinanet_resnet50_fpn``) or ``"v2"``
            (``retinanet_resnet50_fpn_v2``).
        data_format: layout of the images the model takes (``None``:
            ``keras.config.image_data_format()``); the weights are the same in both.
        batch_norm_epsilon: the backbone's batch-norm epsilon. ``"auto"``: what torchvision
            runs the checkpoint with: 0 for a v1 checkpoint saved from frozen batch norm
            (no ``num_batches_tracked`` entries, as the published COCO file; torchvision
            sets 0 when it loads it), else PyTorch's 1e-5.
        **kwargs: other ``RetinaNet`` arguments (``fast_paths``, ``name``).

    Returns:
        A built ``RetinaNet``. ``model(x)`` on ``[N, H, W, 3]`` torchvision-normalised images
        returns ``[N, A, 4 + num_classes]``: ``[..., :4]`` is torchvision's
        ``bbox_regression`` and ``[..., 4:]`` its ``cls_logits`` (91 COCO slots for the
        published models), in torchvision's anchor order; ``model.box_coder.decode(deltas,
        model.anchor_generator(H, W))`` is its ``box_coder.decode_single`` on its anchors.

    Raises:
        ValueError: for a wrong ``version``; when the checkpoint lacks tensors the model needs
            or has tensors it does not use (both named; a v1/v2 mix-up says so); when a
            tensor's shape does not match.
    """
    check_torchvision_version(version)
    state = _read_state(source)
    raw = _to_arrays(state)
    if batch_norm_epsilon == "auto":
        # torchvision runs its published v1 COCO weights, saved from frozen batch norm (no
        # step counters), with eps=0 (overwrite_eps); everything else with 1e-5.
        counters = any(str(name).endswith(_IGNORED_SUFFIXES) for name in state.keys())
        batch_norm_epsilon = 0.0 if version == "v1" and not counters else 1e-5
    model = torchvision_retinanet(
        version=version,
        num_classes=_num_classes(raw, 9),
        data_format=data_format,
        batch_norm_epsilon=batch_norm_epsilon,
        **kwargs,
    )
    channels_last = model.data_format == "channels_last"
    model.build((None, None, None, 3) if channels_last else (None, 3, None, None))
    expected = torchvision_names(model)
    missing = set(expected) - set(raw)
    extra = set(raw) - set(expected)
    if missing or extra:
        message = "source does not match torchvision's RetinaNet " + version
        if missing:
            message += f"; missing: {_listing(missing)}"
        if extra:
            message += f"; unexpected: {_listing(extra)}"
        other = "v2" if version == "v1" else "v1"
        if _looks_like(raw, other):
            message += f" (it looks like a {other} checkpoint: pass version={other!r})"
        raise ValueError(message)
    values = []
    for name, (variable, kind) in expected.items():
        value = raw[name]
        if kind == "conv":
            if value.ndim != 4:
                raise ValueError(f"{name} must be a 4-D conv weight, got shape {value.shape}")
            value = value.transpose(2, 3, 1, 0)  # [out, in, kh, kw] -> [kh, kw, in, out]
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(
                f"{name} has shape {tuple(raw[name].shape)}, which does not fit "
                f"{variable.path} {tuple(variable.shape)}"
            )
        values.append((variable, value))
    for variable, value in values:
        variable.assign(value)
    return model


def _looks_like(state, version):
    """Whether ``state`` has the head layout of torchvision's ``version``."""
    group_norm = "head.classification_head.conv.0.1.weight" in state
    return group_norm == (version == "v2")


def to_torchvision(model):
    """The inverse of :func:`from_torchvision`: ``{torchvision name: float32 array}`` for a
    model laid out as torchvision's (``variants.torchvision_retinanet``, built), ready for
    ``torchvision``'s ``load_state_dict`` after ``torch.from_numpy`` (or for
    ``safetensors.numpy.save_file``). Batch-norm step counters are not included: load with
    ``strict=False`` into a model with ``BatchNorm2d``, or into one with frozen batch norm.
    """
    if not model.built:
        raise ValueError("model must be built (call it once, or convert a checkpoint) first")
    state = {}
    for name, (variable, kind) in torchvision_names(model).items():
        value = keras.ops.convert_to_numpy(variable)
        if kind == "conv":
            value = value.transpose(3, 2, 0, 1)  # [kh, kw, in, out] -> [out, in, kh, kw]
        state[name] = np.ascontiguousarray(value, dtype="float32")
    return state
