"""torchvision's RetinaNets as references for the converter and the torchvision decoding.

torchvision 0.28.0 (the release for the pinned CPU torch 2.13.0) links its C++ extension
against the CUDA build of libtorch, which the CPU torch cannot load. Its Python model code runs
once the two op schemas that its fake-kernel registrations refer to are declared; its compiled
NMS stays unavailable, so :func:`exact_nms` (a direct transcription of the greedy loop of
torchvision's CPU kernel, ``ops/cpu/nms_kernel.cpp``) stands in for ``torchvision.ops.nms``
wherever a test runs torchvision's postprocessing.
"""

import sys

import numpy as np
import pytest

_DECLARED = []


def import_torchvision():
    """``(torch, torchvision)``; skips the test when either is not installed."""
    torch = pytest.importorskip("torch")
    for attempt in range(2):
        try:
            import torchvision
            import torchvision.models.detection  # noqa: F401

            return torch, torchvision
        except ModuleNotFoundError:
            pytest.skip("torchvision is not installed")
        except RuntimeError as error:
            if attempt or "does not exist" not in str(error):
                raise
            for name in list(sys.modules):
                if name == "torchvision" or name.startswith("torchvision."):
                    del sys.modules[name]
            library = torch.library.Library("torchvision", "DEF")
            library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _DECLARED.append(library)
    raise AssertionError("unreachable")


def exact_nms(boxes, scores, iou_threshold):
    """torchvision's CPU ``nms``: visit boxes by descending score, drop every later box whose
    IoU with a kept one is ``> iou_threshold``. Returns the kept indices, best first."""
    import torch

    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    areas = (x2 - x1) * (y2 - y1)
    order = torch.sort(scores, descending=True, stable=True).indices
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for position in range(len(order)):
        i = order[position]
        if suppressed[i]:
            continue
        keep.append(int(i))
        rest = order[position + 1 :]
        w = torch.clamp(torch.minimum(x2[i], x2[rest]) - torch.maximum(x1[i], x1[rest]), min=0)
        h = torch.clamp(torch.minimum(y2[i], y2[rest]) - torch.maximum(y1[i], y1[rest]), min=0)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        suppressed[rest[iou > iou_threshold]] = True
    return torch.as_tensor(keep, dtype=torch.int64)


def random_torchvision_retinanet(version, seed=0, num_classes=91):
    """torchvision's RetinaNet ``version`` in eval mode, with every batch-norm statistic, norm
    affine and bias drawn at random (so each one changes the outputs), and its state dict."""
    torch, torchvision = import_torchvision()
    detection = torchvision.models.detection
    build = {
        "v1": detection.retinanet_resnet50_fpn,
        "v2": detection.retinanet_resnet50_fpn_v2,
    }[version]
    torch.manual_seed(seed)
    model = build(weights=None, weights_backbone=None, num_classes=num_classes).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)):
                shape = module.weight.shape
                module.weight.copy_(torch.rand(shape, generator=generator) * 0.8 + 0.6)
                module.bias.copy_(torch.randn(shape, generator=generator) * 0.1)
            if isinstance(module, torch.nn.BatchNorm2d):
                shape = module.running_mean.shape
                module.running_mean.copy_(torch.randn(shape, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(shape, generator=generator) * 0.8 + 0.6)
            if isinstance(module, torch.nn.Conv2d) and module.bias is not None:
                module.bias.add_(torch.randn(module.bias.shape, generator=generator) * 0.05)
    return model


def torchvision_raw_outputs(model, images):
    """``(raw [N, A, 4 + C], anchors [A, 4] xyxy, decoded [N, A, 4])`` of torchvision's
    ``head(backbone(x))``, its anchors and ``box_coder.decode_single``, for ``images``
    ``[N, 3, H, W]`` already normalised (torchvision's transform is not run)."""
    import torch
    from torchvision.models.detection.image_list import ImageList

    x = torch.as_tensor(np.asarray(images, dtype="float32"))
    with torch.no_grad():
        features = list(model.backbone(x).values())
        head = model.head(features)
        image_list = ImageList(x, [tuple(x.shape[-2:])] * x.shape[0])
        anchors = model.anchor_generator(image_list, features)[0]
        raw = torch.cat([head["bbox_regression"], head["cls_logits"]], dim=-1)
        decoded = torch.stack(
            [model.box_coder.decode_single(raw[i, :, :4], anchors) for i in range(x.shape[0])]
        )
    return raw.numpy(), anchors.numpy(), decoded.numpy()
