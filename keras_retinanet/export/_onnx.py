"""``format="onnx"``: a ``RetinaNetDetector`` as one ONNX file (PyTorch backend).

The file holds the whole detector in standard ONNX operators and runs with
``onnxruntime.InferenceSession(path).run(None, {"images": x})``; it needs neither Keras, torch
nor this package.

It is written in two parts:

1. The network and the decoding before NMS, exported with torch's TorchScript exporter
   (``torch.onnx.export(..., dynamo=False)``, opset 17) from a ``torch.nn.Module`` that runs
   a plain copy of the model (``RetinaNet.from_config`` with ``fast_paths=False`` and the
   same weights: the fast paths' replaced methods and in-place operations are not
   traceable; the user's detector is never modified), decodes the boxes against the
   anchors, applies the sigmoid, drops non-finite boxes and NaN scores, clips the boxes
   (``clip_boxes``) and selects the per-level candidates (``pre_nms_top_k_per_level``),
   exactly as ``DecodePredictions.call`` does before its NMS.
2. The NMS, appended with the ``onnx`` API (:mod:`keras_retinanet.export._onnx_nms`):
   ``NonMaxSuppression`` and the merge of ``tf.image.combined_non_max_suppression``.

The batch size is dynamic; the image size is fixed at export (``image_size=(H, W)``,
required): the tracer records the model for one input size (the "same" padding of strided
convolutions, the pyramid's crops and the anchors are computed in Python from the size), so
a graph traced at one size silently computes wrong outputs at another. onnxruntime rejects
images of another size.

Outputs agree with ``detector.predict`` to float rounding (the convolutions run in
onnxruntime), except that the order of exactly equal scores may differ (docs/numerics.md,
"Non-max suppression").
"""

import os
import tempfile
import warnings

import keras
import numpy as np

from keras_retinanet.export import OUTPUT_NAMES, check_format
from keras_retinanet.export._onnx_nms import OPSET, nms_nodes

#: Names of the intermediate (pre-NMS) tensors in the written graph.
_DECODED = ("decoded_boxes", "decoded_scores")


def export_onnx(detector, filepath, *, image_size=None, verbose=True):
    """Writes ``detector`` to the ONNX file ``filepath`` (see the module docstring).

    Args:
        detector: a built ``RetinaNetDetector`` on the PyTorch backend.
        filepath: the ``.onnx`` file to write.
        image_size: ``(H, W)`` of the (padded, preprocessed) network input, required.
        verbose: print what was written.

    Returns:
        ``filepath``.

    Raises:
        TypeError: ``detector`` is not a ``RetinaNetDetector``.
        ValueError: not the PyTorch backend, ``image_size`` missing or bad, or the model
            not built (all before any tracing).
        ImportError: ``onnx`` is not installed.
    """
    from keras_retinanet.decoder import RetinaNetDetector

    check_format("onnx")
    if not isinstance(detector, RetinaNetDetector):
        raise TypeError(
            "export_onnx needs a RetinaNetDetector (model.make_detector()), got "
            f"{type(detector).__name__}"
        )
    if image_size is None:
        raise ValueError(
            "format='onnx' needs a fixed image_size=(height, width): the traced graph computes "
            "the convolution padding, the pyramid's crops and the anchors for one input size "
            "(the batch size stays dynamic)"
        )
    image_size = _check_image_size(image_size)
    if not detector.model.built:
        raise ValueError(
            "the detector's model is not built: call it (or the detector) on a batch of images "
            "before exporting"
        )
    try:
        import onnx
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("format='onnx' needs the onnx package (pip install onnx)") from error
    import torch

    model = _plain_copy(detector.model, image_size)
    module = _PreNMS(model, detector.decoder, image_size).eval()
    height, width = image_size
    if model.data_format == "channels_first":
        shape = (1, 3, height, width)
    else:
        shape = (1, height, width, 3)
    example = keras.ops.convert_to_tensor(np.zeros(shape, "float32"))
    with tempfile.TemporaryDirectory() as folder:
        traced_path = os.path.join(folder, "pre_nms.onnx")
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TracerWarnings: the size is fixed on purpose
            torch.onnx.export(
                module,
                (example,),
                traced_path,
                dynamo=False,
                opset_version=OPSET,
                input_names=["images"],
                output_names=list(_DECODED),
                dynamic_axes={"images": {0: "batch"}},
                do_constant_folding=True,
            )
        graph_model = onnx.load(traced_path)
    _append_nms(graph_model, detector.decoder)
    onnx.checker.check_model(graph_model)
    onnx.save(graph_model, os.fspath(filepath))
    if verbose:
        d = detector.decoder
        print(
            f"Wrote {os.fspath(filepath)}: ONNX opset {OPSET}, input 'images' "
            f"{['batch', *shape[1:]]} float32, outputs boxes [batch, {d.max_detections}, 4], "
            f"scores, classes, num_detections (NMS included)"
        )
    return filepath


def _check_image_size(image_size):
    try:
        size = tuple(int(s) for s in image_size)
    except (TypeError, ValueError):
        size = ()
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_size must be (height, width), got {image_size!r}")
    return size


def _plain_copy(model, image_size):
    """A ``RetinaNet`` like ``model`` without fast paths, holding copies of its weights."""
    config = model.get_config()
    config["fast_paths"] = False
    copy = type(model).from_config(config)
    height, width = image_size
    shape = (
        (1, 3, height, width) if model.data_format == "channels_first" else (1, height, width, 3)
    )
    copy.build(shape)
    copy.set_weights(model.get_weights())
    return copy


def _module_base():
    import torch

    return torch.nn.Module


class _PreNMS(_module_base()):
    """images -> ``(boxes [N, M, 4], scores [N, M, C])``, the NMS inputs of
    ``DecodePredictions.call`` (``M = A`` anchors, or the per-level candidates with
    ``pre_nms_top_k_per_level``)."""

    def __init__(self, model, decoder, image_size):
        super().__init__()
        self.model = model
        self.decoder = decoder
        self.height, self.width = image_size

    def forward(self, images):
        from keras import ops

        from keras_retinanet.decoder import _clip_to_image

        decoder = self.decoder
        predictions = ops.cast(self.model(images, training=False), "float32")
        anchors = decoder.anchor_generator(self.height, self.width)  # [A, 4], constant
        boxes = decoder.box_coder.decode(predictions[..., :4], anchors)  # [N, A, 4]
        # As DecodePredictions.call: NaN scores and non-finite boxes become score 0 (never
        # above the threshold, which is >= 0), checked before clipping.
        finite_box = ops.all(ops.isfinite(boxes), axis=-1, keepdims=True)
        scores = ops.sigmoid(predictions[..., 4:])
        scores = ops.where(ops.isnan(scores), 0.0, scores)
        scores = ops.where(finite_box, scores, 0.0)
        boxes = ops.where(finite_box, boxes, 0.0)
        if decoder.clip_boxes:
            boxes = _clip_to_image(boxes, self.height, self.width)
        if decoder.pre_nms_top_k_per_level is not None:
            boxes, scores = self._top_k_per_level(boxes, scores)
        return boxes, scores

    def _top_k_per_level(self, boxes, scores):
        """``DecodePredictions._top_k_per_level`` for the fixed input size, with
        ``torch.gather`` for its ``take_along_axis`` (``aten::take_along_dim`` has no ONNX
        export): per level, the best ``min(k, A_l * C)`` ``(anchor, class)`` pairs scoring
        above the threshold, each a candidate whose score is in its class's column (0
        elsewhere). Returns ``(boxes [N, K, 4], scores [N, K, C])``."""
        import torch

        decoder = self.decoder
        k = decoder.pre_nms_top_k_per_level
        num_classes = decoder.num_classes
        threshold = decoder.confidence_threshold
        per_location = decoder.anchor_generator.num_anchors_per_location
        grids = decoder.anchor_generator.grid_sizes(self.height, self.width)
        level_boxes, level_scores = [], []
        start = 0
        for grid_h, grid_w in grids:
            size = grid_h * grid_w * per_location
            stop = start + size
            flat = scores[:, start:stop, :].reshape(-1, size * num_classes)
            flat = torch.where(flat > threshold, flat, torch.full_like(flat, -1.0))
            values, index = torch.topk(flat, min(k, size * num_classes), dim=1)
            anchor = torch.div(index, num_classes, rounding_mode="floor")
            classes = index - anchor * num_classes
            values = torch.where(values > threshold, values, torch.zeros_like(values))
            one_hot = torch.nn.functional.one_hot(classes, num_classes).to(values.dtype)
            level_scores.append(values[:, :, None] * one_hot)
            gather = anchor[:, :, None].expand(-1, -1, 4)
            level_boxes.append(torch.gather(boxes[:, start:stop, :], 1, gather))
            start = stop
        return torch.cat(level_boxes, dim=1), torch.cat(level_scores, dim=1)


def _append_nms(graph_model, decoder):
    """Appends the NMS to the pre-NMS graph and makes its four outputs the graph's."""
    from keras_retinanet.export._onnx_nms import output_value_infos

    graph = graph_model.graph
    nodes, initializers = nms_nodes(
        _DECODED[0],
        _DECODED[1],
        num_classes=decoder.num_classes,
        max_output_size_per_class=decoder.max_detections_per_class,
        max_total_size=decoder.max_detections,
        iou_threshold=decoder.nms_iou_threshold,
        score_threshold=decoder.confidence_threshold,
        outputs=OUTPUT_NAMES,
    )
    graph.node.extend(nodes)
    graph.initializer.extend(initializers)
    batch = graph.input[0].type.tensor_type.shape.dim[0].dim_param or "batch"
    del graph.output[:]
    graph.output.extend(output_value_infos(decoder.max_detections, batch))
