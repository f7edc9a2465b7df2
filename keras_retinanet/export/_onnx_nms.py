"""``combined_non_max_suppression`` as standard ONNX operators (opset 17), built with the
``onnx`` helper API. Needs ``onnx`` only; nothing here imports a Keras backend.

The graph (``nms_nodes``) is ``tf.image.combined_non_max_suppression`` (docs/numerics.md,
"Non-max suppression") on ``boxes [N, A, 4]`` (one box per anchor, shared by every class) or
``[N, A, C, 4]`` (a box per class) and ``scores [N, A, C]``:

1. ``NonMaxSuppression`` (``center_point_box=0``) on the boxes and the ``[N, C, A]`` scores
   (for per-class boxes: each ``(image, class)`` pair one ONNX "batch" of ``A`` boxes and one
   class), with ``max_output_boxes_per_class``, ``iou_threshold`` and ``score_threshold``.
   onnxruntime's CPU kernel (``non_max_suppression.cc`` and ``non_max_suppression_helper.h``)
   has the semantics of the library's reference: a candidate scores strictly above
   ``score_threshold`` (NaN never does; the threshold is always passed, since without it
   every box, NaN scores included, would be a candidate); boxes are normalised with
   min/max per axis, so ``[x1, y1, x2, y2]`` works as well as the spec's ``[y1, x1, y2,
   x2]`` (IoU is symmetric in the two axes); IoU is the same float32 ``inter / (area_1 +
   area_2 - inter)`` (the kept box first, as the reference) and suppresses when strictly
   above ``iou_threshold``; a zero-area box never suppresses and is never suppressed. Only
   the visit order of exactly equal scores differs (onnxruntime's priority queue leaves it
   unspecified; the reference visits them by ascending box index).
2. The merge: the kept scores are scattered into a ``[N, C * A]`` tensor filled with
   ``-inf`` (class-major, ``index = c * A + a``), padded with ``K`` more ``-inf`` columns (so
   that ``TopK`` is defined when ``C * A < K``), and ``TopK(K)`` gives the best ``K`` per
   image in descending score (ties by lower index, i.e. class then anchor; the reference
   orders ties by anchor then class). A row is valid when its score is strictly above
   ``score_threshold`` (every kept score is, ``-inf`` and NaN thresholds included, and the
   fill never is); invalid rows are zeros.

Subnormal values (rule 6 of ``keras_retinanet/nms/reference.py``): the graph flushes the
scores, the box coordinates and the thresholds to zero before ``NonMaxSuppression``, as
TensorFlow's CPU kernel treats them, so subnormal scores are no candidates above a threshold
of 0 and subnormal coordinates are 0. What the ONNX kernel computes from normal coordinates is
not flushed (onnxruntime runs in the host's default floating-point mode): boxes whose area or
intersection is subnormal, i.e. sides below about ``1e-19`` in the coordinates' units, may be
suppressed where TensorFlow keeps them. Returned scores and coordinates are the flushed ones
(a subnormal value reads 0, where TensorFlow returns it unchanged unless clipped).
"""

import numpy as np

from keras_retinanet.nms._subnormal import FLT_MIN, flush_scalar

#: The ONNX opset of the NMS subgraph (``GatherND`` batch_dims, ``ReduceSum`` axes input).
OPSET = 17


class _Builder:
    """Collects nodes and constant initializers under a name prefix."""

    def __init__(self, prefix):
        from onnx import helper, numpy_helper

        self.helper = helper
        self.numpy_helper = numpy_helper
        self.prefix = prefix
        self.nodes = []
        self.initializers = []
        self._count = 0

    def name(self, hint):
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def const(self, value, dtype, hint="const"):
        name = self.name(hint)
        self.initializers.append(self.numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op_type, inputs, hint=None, outputs=1, **attributes):
        names = [self.name(hint or op_type.lower()) for _ in range(outputs)]
        self.nodes.append(
            self.helper.make_node(
                op_type, list(inputs), names, name=self.name(op_type), **attributes
            )
        )
        return names[0] if outputs == 1 else names

    def op_to(self, op_type, inputs, output, **attributes):
        """A node writing the graph output ``output``."""
        self.nodes.append(
            self.helper.make_node(
                op_type, list(inputs), [output], name=self.name(op_type), **attributes
            )
        )
        return output


def nms_nodes(
    boxes,
    scores,
    *,
    num_classes,
    max_output_size_per_class,
    max_total_size,
    iou_threshold,
    score_threshold,
    per_class_boxes=False,
    clip_boxes=False,
    outputs=("boxes", "scores", "classes", "num_detections"),
    prefix="nms/",
):
    """ONNX nodes computing ``combined_non_max_suppression`` (``pad_per_class=False``).

    Args:
        boxes: name of the ``[N, A, 4]`` float32 corner boxes (``[N, A, C, 4]`` with
            ``per_class_boxes``), any diagonal corner pair.
        scores: name of the ``[N, A, C]`` float32 scores.
        num_classes: ``C`` (static).
        max_output_size_per_class: positive int, boxes kept per class and image.
        max_total_size: positive int, ``K``, rows per image (pass ``min(K, per_class * C)``
            for ``pad_per_class``).
        iou_threshold: in ``[0, 1]``; a box is suppressed when its IoU is strictly greater.
        score_threshold: a box is a candidate when its score is strictly greater (any float,
            ``-inf`` and NaN included).
        per_class_boxes: whether ``boxes`` holds one box per class (``q = C``).
        clip_boxes: clamp the returned coordinates to ``[0, 1]``.
        outputs: names of the four outputs, ``boxes [N, K, 4]`` float32, ``scores [N, K]``
            float32, ``classes [N, K]`` int32 and ``num_detections [N]`` int32.
        prefix: prefix of every intermediate name.

    Returns:
        ``(nodes, initializers)`` to add to a graph holding ``boxes`` and ``scores``.
    """
    g = _Builder(prefix)
    c = int(num_classes)
    k = int(max_total_size)
    out_boxes, out_scores, out_classes, out_num = outputs
    neg_inf = g.const(-np.inf, np.float32, "neg_inf")
    threshold = g.const(flush_scalar(score_threshold), np.float32, "score_threshold")
    flt_min = g.const(FLT_MIN, np.float32, "flt_min")
    zero = g.const(0.0, np.float32)

    def flush(name, hint):
        """Subnormal values of ``name`` -> 0 (NaN kept: its comparison is false)."""
        return g.op("Where", [g.op("Less", [g.op("Abs", [name]), flt_min]), zero, name], hint)

    scores = flush(scores, "scores_flushed")
    boxes = flush(boxes, "boxes_flushed")

    scores_shape = g.op("Shape", [scores], "scores_shape")  # [N, A, C]
    batch = g.op("Slice", [scores_shape, g.const([0], np.int64), g.const([1], np.int64)])
    anchors = g.op("Slice", [scores_shape, g.const([1], np.int64), g.const([2], np.int64)])
    cells = g.op("Mul", [anchors, g.const([c], np.int64)], "cells")  # [C * A]
    scores_t = g.op("Transpose", [scores], "scores_t", perm=[0, 2, 1])  # [N, C, A]
    if per_class_boxes:
        # Each (image, class) is one ONNX batch entry with a single class. allowzero: a
        # dimension of 0 (no boxes) is a size, not "copy the input's".
        four = g.const([4], np.int64)
        pairs = g.op("Mul", [batch, g.const([c], np.int64)], "pairs")  # [N * C]
        boxes_t = g.op("Transpose", [boxes], "boxes_t", perm=[0, 2, 1, 3])  # [N, C, A, 4]
        nms_boxes = g.op(
            "Reshape",
            [boxes_t, g.op("Concat", [pairs, anchors, four], axis=0)],
            "nms_boxes",
            allowzero=1,
        )  # [N * C, A, 4]
        nms_scores = g.op(
            "Reshape",
            [scores_t, g.op("Concat", [pairs, g.const([1], np.int64), anchors], axis=0)],
            "nms_scores",
            allowzero=1,
        )  # [N * C, 1, A]
        source = g.op(
            "Reshape",
            [boxes_t, g.op("Concat", [batch, cells, four], axis=0)],
            "source",
            allowzero=1,
        )  # [N, C * A, 4]: row c * A + a
        rows = cells
    else:
        nms_boxes, nms_scores, source, rows = boxes, scores_t, boxes, anchors
    selected = g.op(
        "NonMaxSuppression",
        [
            nms_boxes,
            nms_scores,
            g.const([int(max_output_size_per_class)], np.int64, "max_per_class"),
            g.const([flush_scalar(iou_threshold)], np.float32, "iou_threshold"),
            threshold,
        ],
        "selected",
        center_point_box=0,
    )  # [M, 3] (batch, class, box) of the NMS inputs
    kept = g.op("GatherND", [nms_scores, selected], "kept")  # [M]
    dense = g.op(
        "ScatterND", [g.op("Expand", [neg_inf, g.op("Shape", [nms_scores])]), selected, kept]
    )
    flat = g.op(
        "Reshape", [dense, g.op("Concat", [batch, cells], axis=0)], "flat", allowzero=1
    )  # [N, C * A], index c * A + a (the same for per-class boxes)
    padding = g.op("Expand", [neg_inf, g.op("Concat", [batch, g.const([k], np.int64)], axis=0)])
    padded = g.op("Concat", [flat, padding], "padded", axis=1)  # [N, C * A + K]
    values, index = g.op(
        "TopK", [padded, g.const([k], np.int64, "k")], "top", outputs=2, axis=1, largest=1, sorted=1
    )  # [N, K] each, descending
    valid = g.op("Greater", [values, threshold], "valid")  # [N, K]
    one = g.const(1, np.int64)
    safe_anchors = g.op("Max", [g.op("Squeeze", [anchors]), one])  # A = 0: no division by 0
    classes = g.op("Div", [index, safe_anchors], "class")
    if per_class_boxes:
        row = index
    else:
        row = g.op("Mod", [index, safe_anchors], "anchor")
    # One zero row past the last: where padding columns (and an empty A) gather from.
    row = g.op("Min", [row, g.op("Squeeze", [rows])])
    zero_row = g.op(
        "Expand",
        [g.const(0.0, np.float32), g.op("Concat", [batch, g.const([1, 4], np.int64)], axis=0)],
    )
    source = g.op("Concat", [source, zero_row], "source_padded", axis=1)  # [N, R + 1, 4]
    gathered = g.op(
        "GatherND", [source, g.op("Unsqueeze", [row, g.const([2], np.int64)])], batch_dims=1
    )  # [N, K, 4]
    valid_3d = g.op("Unsqueeze", [valid, g.const([2], np.int64)])
    if clip_boxes:
        box_rows = g.op("Where", [valid_3d, gathered, zero])
        g.op_to("Clip", [box_rows, zero, g.const(1.0, np.float32)], out_boxes)
    else:
        g.op_to("Where", [valid_3d, gathered, zero], out_boxes)
    g.op_to("Where", [valid, values, zero], out_scores)
    g.op_to(
        "Where",
        [valid, g.op("Cast", [classes], to=6), g.const(0, np.int32)],  # 6: INT32
        out_classes,
    )
    g.op_to(
        "ReduceSum",
        [g.op("Cast", [valid], to=6), g.const([1], np.int64)],
        out_num,
        keepdims=0,
    )
    return g.nodes, g.initializers


def nms_model(
    *,
    num_classes,
    max_output_size_per_class,
    max_total_size,
    iou_threshold,
    score_threshold,
    per_class_boxes=False,
    clip_boxes=False,
):
    """A standalone ``onnx.ModelProto`` of :func:`nms_nodes` with inputs ``candidate_boxes``
    and ``candidate_scores`` (dynamic ``N`` and ``A``) and the four outputs of
    :func:`nms_nodes`, for tests and for checking the subgraph alone."""
    from onnx import TensorProto, helper

    box_shape = ["N", "A", num_classes, 4] if per_class_boxes else ["N", "A", 4]
    nodes, initializers = nms_nodes(
        "candidate_boxes",
        "candidate_scores",
        num_classes=num_classes,
        max_output_size_per_class=max_output_size_per_class,
        max_total_size=max_total_size,
        iou_threshold=iou_threshold,
        score_threshold=score_threshold,
        per_class_boxes=per_class_boxes,
        clip_boxes=clip_boxes,
    )
    k = int(max_total_size)
    graph = helper.make_graph(
        nodes,
        "combined_non_max_suppression",
        [
            helper.make_tensor_value_info("candidate_boxes", TensorProto.FLOAT, box_shape),
            helper.make_tensor_value_info(
                "candidate_scores", TensorProto.FLOAT, ["N", "A", num_classes]
            ),
        ],
        output_value_infos(k),
        initializer=initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def output_value_infos(k, batch="N"):
    """``ValueInfoProto`` of the four outputs for ``K = k``."""
    from onnx import TensorProto, helper

    return [
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [batch, k, 4]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, k]),
        helper.make_tensor_value_info("classes", TensorProto.INT32, [batch, k]),
        helper.make_tensor_value_info("num_detections", TensorProto.INT32, [batch]),
    ]
