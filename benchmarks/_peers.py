"""Peer RetinaNets that ``benchmarks/model.py`` times next to ``keras_retinanet``.

Two independent implementations of the same network (ResNet50, FPN P3-P7, 9 anchors per
location, 256-filter heads with 4 hidden convs, sigmoid focal loss):

* **KerasHub** (``keras_hub.models.RetinaNetObjectDetector``): another Keras 3 model, so it runs
  on the same three backends as ours and isolates the cost of the implementation choices from
  the cost of the framework. Install it without letting pip touch TensorFlow, Keras, JAX or
  PyTorch (see ``KERAS_HUB_INSTALL``): ``tensorflow-text``, a hard requirement in its metadata,
  pins its own TensorFlow and is needed only by the text tokenizers.
* **torchvision** (``torchvision.models.detection.retinanet_resnet50_fpn``): the reference
  PyTorch implementation, timed in eager mode. With the pinned CPU torch its C++ extension
  cannot load (see ``_declare_torchvision_op_schemas``); the network, matching and losses that
  are timed are plain torch code and run all the same.

Both are built with **random weights**: pretrained checkpoints (KerasHub presets on Kaggle,
torchvision's on download.pytorch.org) cannot be downloaded here, and timings do not depend
on the weight values. Inputs are assumed to be already normalised float images (neither peer's
own preprocessing runs in the forward functions returned here); with random weights the
normalisation convention does not matter.

Every framework is imported inside the function that needs it, so this module imports with any
one backend installed. A peer that cannot run raises ``PeerUnavailable`` with a one-line reason.
"""

import numpy as np

#: How the benchmark environment installs KerasHub: ``--no-deps`` keeps pip from replacing
#: TensorFlow/Keras (``tensorflow-text``) and from pulling Kaggle/Hugging Face download clients;
#: ``regex`` and ``tokenizers`` are the only requirements that ``import keras_hub`` needs on top
#: of Keras 3 (absl-py, numpy, packaging and rich come with Keras).
KERAS_HUB_INSTALL = 'pip install --no-deps "keras-hub==0.32.0" regex tokenizers'

#: KerasHub's ResNet50 (v1, bottleneck blocks, post-activation), as in its ``resnet_50_imagenet``
#: preset, given as constructor arguments so no preset has to be downloaded.
RESNET50_ARGS = dict(
    input_conv_filters=[64],
    input_conv_kernel_sizes=[7],
    stackwise_num_filters=[64, 128, 256, 512],
    stackwise_num_blocks=[3, 4, 6, 3],
    stackwise_num_strides=[1, 2, 2, 2],
    block_type="bottleneck_block",
    use_pre_activation=False,
)

#: Boxes per image in the random training batches of both peers.
BOXES_PER_IMAGE = 4


class PeerUnavailable(RuntimeError):
    """Raised with a one-line reason when a peer cannot run here."""


def _one_line(error, limit=160):
    """``"Type: first line of the message"``, shortened to ``limit`` characters."""
    text = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _random_boxes(rng, batch_size, image_size):
    """``[batch_size, BOXES_PER_IMAGE, 4]`` float32 ``(x1, y1, x2, y2)`` pixel boxes that lie
    inside the image, with sides between 10% and 50% of ``image_size``."""
    extent = rng.uniform(0.1, 0.5, (batch_size, BOXES_PER_IMAGE, 2)) * image_size
    corner = rng.uniform(0.0, 1.0, (batch_size, BOXES_PER_IMAGE, 2)) * (image_size - extent)
    return np.concatenate([corner, corner + extent], axis=-1).astype("float32")


# --- KerasHub -----------------------------------------------------------------------------


def _paper_head_init(keras, model, prior_probability):
    """Re-initialises KerasHub's two prediction heads as the RetinaNet paper (and torchvision,
    and ``keras_retinanet``) do: every kernel ``N(0, 0.01)``, the class logits' bias
    ``-log((1 - prior) / prior)``, all other biases zero.

    KerasHub 0.32.0's from-scratch defaults (``random_normal`` kernels, stddev 0.05, and the
    prior bias on the *box* head instead of the class head) are meant to be overwritten by
    preset weights; trained from scratch with ``SGD(0.01)`` they diverge to NaN within about
    four steps (on the torch backend the focal loss then raises). Only values change, so the
    cost of every call is unaffected.
    """
    kernel_init = keras.initializers.RandomNormal(0.0, 0.01)
    prior_bias = -float(np.log((1.0 - prior_probability) / prior_probability))
    for head, logits_bias in (
        (model.classification_head, prior_bias),
        (model.box_head, 0.0),
    ):
        try:
            convs = [*head.conv_layers, head.prediction_layer]
        except AttributeError as error:
            raise PeerUnavailable(
                f"keras_hub's RetinaNet PredictionHead changed ({_one_line(error)}); "
                f"install the tested version with: {KERAS_HUB_INSTALL}"
            ) from error
        for conv in convs:
            conv.kernel.assign(kernel_init(conv.kernel.shape, conv.kernel.dtype))
            if conv.bias is not None:
                value = logits_bias if conv is head.prediction_layer else 0.0
                conv.bias.assign(keras.ops.full(conv.bias.shape, value, conv.bias.dtype))


def keras_hub_retinanet(*, num_classes=80, image_size=512):
    """KerasHub's ``RetinaNetObjectDetector`` (ResNet50, P3-P7, 9 anchors, 256 filters, 4 head
    convs) with random weights, for the current ``KERAS_BACKEND``.

    Architecture choices (constructor arguments; the ResNet50 ones are ``RESNET50_ARGS``):
    ``RetinaNetBackbone(min_level=3, max_level=7, use_p5=True, use_fpn_batch_norm=False)``
    (``use_p5=True`` makes KerasHub compute P6 from the backbone's C5, as ours and the paper do)
    and ``RetinaNetObjectDetector(bounding_box_format="yxyx", use_prediction_head_norm=False,
    pre_logits_num_conv_layers=4, preprocessor=None)``, whose default ``AnchorGenerator`` has 3
    scales x 3 aspect ratios. The input shape is fixed to ``image_size x image_size``. The two
    heads are then re-initialised as in the paper (``_paper_head_init``): KerasHub's own
    from-scratch initialisation diverges under ``SGD(0.01)``.

    Returns:
        ``(model, forward_model, make_train_batch)``:

        * ``model``: the detector, compiled with ``SGD(0.01)`` and KerasHub's default losses
          (``Huber`` box loss and ``BinaryFocalCrossentropy`` on logits, both summed and
          normalised by the positive anchor count inside ``compute_loss``; the focal loss is
          also averaged over the classes, as Keras losses reduce the last axis by its mean).
          Its ``predict`` decodes and runs NMS; its ``__call__`` returns the raw outputs.
        * ``forward_model``: a plain functional ``keras.Model`` sharing the detector's layers,
          mapping ``[B, image_size, image_size, 3]`` float32 images (channels last, already
          normalised: no preprocessing layer runs) to ``{"bbox_regression": [B, A, 4],
          "cls_logits": [B, A, num_classes]}``; its ``predict`` does not decode either.
        * ``make_train_batch(batch_size, seed)``: ``(x, y)`` for ``model.train_on_batch``:
          ``x`` float32 ``[B, image_size, image_size, 3]`` standard-normal images and
          ``y = {"boxes": float32 [B, 4, 4] yxyx pixels, "labels": int32 [B, 4]}`` (4 boxes per
          image with sides of 10-50% of the image, class ids in ``[0, num_classes)``).

    Raises:
        PeerUnavailable: when ``keras_hub`` cannot be imported (the message says how to install
            it) or does not provide the RetinaNet classes.
    """
    try:
        import keras
        import keras_hub
    except Exception as error:  # missing package, or a missing/broken dependency of it
        raise PeerUnavailable(
            f"keras_hub is not importable ({_one_line(error)}); install it with: "
            f"{KERAS_HUB_INSTALL}"
        ) from error
    models = keras_hub.models
    missing = [
        name
        for name in ("ResNetBackbone", "RetinaNetBackbone", "RetinaNetObjectDetector")
        if not hasattr(models, name)
    ]
    if missing:
        raise PeerUnavailable(
            f"keras_hub {keras_hub.__version__} has no {', '.join(missing)}; "
            f"install the tested version with: {KERAS_HUB_INSTALL}"
        )

    image_shape = (image_size, image_size, 3)
    image_encoder = models.ResNetBackbone(**RESNET50_ARGS, image_shape=image_shape)
    backbone = models.RetinaNetBackbone(
        image_encoder=image_encoder,
        min_level=3,
        max_level=7,
        use_p5=True,
        use_fpn_batch_norm=False,
        image_shape=image_shape,
    )
    model = models.RetinaNetObjectDetector(
        backbone=backbone,
        num_classes=num_classes,
        bounding_box_format="yxyx",
        use_prediction_head_norm=False,
        classification_head_prior_probability=0.01,
        pre_logits_num_conv_layers=4,
        preprocessor=None,
        compile=False,
    )
    _paper_head_init(keras, model, prior_probability=0.01)
    # Only the optimizer is ours: box_loss/classification_loss keep KerasHub's "auto" defaults.
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    # KerasHub's ``PipelineModel.train_on_batch`` (0.32.0) runs ``ops.convert_to_tensor(y)``,
    # which rejects the ``{"boxes", "labels"}`` dict that its own RetinaNet loss requires. With
    # ``preprocessor=None`` its only other work is an identity ``preprocess_samples``, so the
    # instance uses Keras' ``train_on_batch`` (same train step, same ``compute_loss``).
    model.train_on_batch = keras.Model.train_on_batch.__get__(model)
    forward_model = keras.Model(model.input, model.output, name="keras_hub_retinanet_forward")

    def make_train_batch(batch_size, seed):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((batch_size, *image_shape)).astype("float32")
        xyxy = _random_boxes(rng, batch_size, image_size)
        y = {
            "boxes": xyxy[..., [1, 0, 3, 2]],  # the detector's bounding_box_format, "yxyx"
            "labels": rng.integers(0, num_classes, (batch_size, BOXES_PER_IMAGE), dtype="int32"),
        }
        return x, y

    return model, forward_model, make_train_batch


# --- torchvision --------------------------------------------------------------------------


#: The torchvision release built for torch 2.13.0, the torch that ``constraints.txt`` pins.
TORCHVISION_INSTALL = 'pip install -c constraints.txt "torchvision==0.28.0"'

#: Schemas of the compiled ops that ``import torchvision`` registers Python fake kernels for
#: unconditionally (``torchvision/_meta_registrations.py``); every other op it registers only
#: when its C++ extension has loaded.
_TORCHVISION_OP_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)

#: Keeps the ``torch.library.Library`` that declares those schemas alive (a library's
#: definitions are removed when the object is collected).
_DECLARED_TORCHVISION_OPS = []


def _declare_torchvision_op_schemas(torch):
    """Declares ``torchvision::nms`` and ``torchvision::qnms`` without any kernel.

    The only torchvision wheel for torch 2.13.0 (0.28.0) links its C++ extension (``_C.so``)
    against the CUDA build of libtorch, which the pinned CPU torch cannot load. torchvision
    then goes on without its ops, except that ``_meta_registrations`` registers fake kernels
    for these two ops and fails with "operator torchvision::nms does not exist". With the
    schemas declared, the pure-Python model code imports and runs: the RetinaNet network, its
    anchors, matching and losses use only core torch ops. What needs the compiled ops
    (``torchvision.ops.nms`` in the eval-mode postprocess, RoI ops) still raises torchvision's
    own "Couldn't load custom C++ ops" error, so nothing silently runs a substitute.
    """
    library = torch.library.Library("torchvision", "DEF")
    for schema in _TORCHVISION_OP_SCHEMAS:
        library.define(schema)
    _DECLARED_TORCHVISION_OPS.append(library)


def _import_torchvision_detection():
    """``(torch, torchvision.models.detection, compiled_ops)``, or ``PeerUnavailable``.

    ``compiled_ops`` is False when torchvision runs without its C++ extension (see
    ``_declare_torchvision_op_schemas``); the benchmarked forward and train step never call it.
    """
    import sys

    try:
        import torch
    except Exception as error:
        raise PeerUnavailable(f"torch is not importable ({_one_line(error)})") from error
    torch_release = torch.__version__.split("+")[0]
    for attempt in range(2):
        try:
            import torchvision.extension
            import torchvision.models.detection as detection
        except ModuleNotFoundError as error:
            if error.name != "torchvision":
                raise PeerUnavailable(f"torchvision import failed ({_one_line(error)})") from error
            raise PeerUnavailable(
                f"torchvision is not installed (for torch {torch_release}: {TORCHVISION_INSTALL})"
            ) from error
        except RuntimeError as error:
            missing_op = "operator torchvision::" in str(error) and "does not exist" in str(error)
            if attempt or not missing_op:
                raise PeerUnavailable(
                    f"torchvision import failed ({_one_line(error)}); it must match torch "
                    f"{torch.__version__}"
                ) from error
            # Drop the half-imported package, declare the two schemas and import it again.
            for name in list(sys.modules):
                if name == "torchvision" or name.startswith("torchvision."):
                    del sys.modules[name]
            _declare_torchvision_op_schemas(torch)
            continue
        return torch, detection, torchvision.extension._has_ops()
    raise AssertionError("unreachable")


def torchvision_retinanet(*, num_classes=91, image_size=512):
    """torchvision's ``retinanet_resnet50_fpn`` (v1) with random weights, in eval mode.

    Built with ``weights=None, weights_backbone=None`` (so the backbone uses trainable
    ``BatchNorm2d`` and all its layers train), ``num_classes`` (torchvision counts the COCO
    background slot: 91) and ``min_size=max_size=image_size``.

    Returns:
        ``(model, forward, train_step)``:

        * ``model``: the ``torchvision.models.detection.RetinaNet`` module, in eval mode.
        * ``forward(images)``: ``images`` float32 ``[B, 3, H, W]`` (already normalised) ->
          ``{"cls_logits": [B, A, num_classes], "bbox_regression": [B, A, 4]}`` from
          ``model.backbone`` (ResNet50 + FPN) and ``model.head`` only: no ``model.transform``
          (normalisation, resizing, padding), no anchors, no decoding or NMS. Runs under
          ``torch.no_grad()`` in whatever mode the model is in (eval unless changed).
        * ``train_step(batch_size, seed)``: a zero-argument callable running one SGD step
          (``lr=0.01``, no momentum, as ``keras.optimizers.SGD(0.01)``) on fixed random data:
          ``model(images, targets)`` in train mode, which includes torchvision's own transform
          (normalisation and a resize to ``image_size``), anchor matching and the focal and
          L1 losses; the sum of the losses is back-propagated. The model's previous train/eval
          mode is restored afterwards. The callable returns the detached total loss.

    Raises:
        PeerUnavailable: when torch or torchvision cannot be imported.
    """
    torch, detection, _ = _import_torchvision_detection()
    model = detection.retinanet_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=num_classes,
        min_size=image_size,
        max_size=image_size,
    )
    model.eval()

    def forward(images):
        with torch.no_grad():
            features = list(model.backbone(images).values())  # P3..P7
            return model.head(features)

    def train_step(batch_size, seed):
        rng = np.random.default_rng(seed)
        shape = (batch_size, 3, image_size, image_size)
        images = list(torch.from_numpy(rng.standard_normal(shape).astype("float32")))
        boxes = _random_boxes(rng, batch_size, image_size)  # xyxy, torchvision's format
        labels = rng.integers(0, num_classes, (batch_size, BOXES_PER_IMAGE))
        targets = [
            {"boxes": torch.from_numpy(b), "labels": torch.from_numpy(c).long()}
            for b, c in zip(boxes, labels, strict=True)
        ]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

        def step():
            was_training = model.training
            model.train()
            try:
                optimizer.zero_grad(set_to_none=True)
                losses = model(images, targets)
                loss = sum(losses.values())
                loss.backward()
                optimizer.step()
            finally:
                model.train(was_training)
            return loss.detach()

        return step

    return model, forward, train_step
