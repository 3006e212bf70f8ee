"""The receptive-field engine over torchvision's model zoo on the meta device: per model the rows,
the unknown rows, the analysis time and the notes (by code), one line each.

    python bench/rf_zoo.py [NAME ...]

Classification, segmentation, video, detection (the backbone the detector runs) and optical flow,
at small inputs where the model allows them. No weights are downloaded (``weights=None``).
"""

from __future__ import annotations

import collections
import sys
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn
from torchvision import models

import torchprobe

Size = tuple[int, ...] | list[tuple[int, ...]]

CLASSIFIERS = [
    "resnet18", "alexnet", "vgg11", "squeezenet1_0", "densenet121", "inception_v3", "googlenet", "shufflenet_v2_x0_5",
    "mobilenet_v2", "mobilenet_v3_small", "mnasnet0_5", "efficientnet_b0", "efficientnet_v2_s", "regnet_x_400mf",
    "regnet_y_400mf", "resnext50_32x4d", "wide_resnet50_2", "convnext_tiny",
]
SEGMENTATION = ["fcn_resnet50", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"]
DETECTION = ["ssdlite320_mobilenet_v3_large", "fasterrcnn_mobilenet_v3_large_320_fpn", "retinanet_resnet50_fpn",
             "fcos_resnet50_fpn", "ssd300_vgg16"]


def zoo() -> dict[str, tuple[Callable[[], nn.Module], Size]]:
    cases: dict[str, tuple[Callable[[], nn.Module], Size]] = {}
    for name in CLASSIFIERS:
        extra = {"aux_logits": False, "init_weights": False} if name in ("inception_v3", "googlenet") else {}
        cases[name] = (lambda name=name, extra=extra: getattr(models, name)(weights=None, **extra),
                       (3, 75, 75) if name == "inception_v3" else (3, 64, 64))
    cases["vit_b_16"] = (lambda: models.vit_b_16(weights=None, image_size=64), (3, 64, 64))
    for name in ("swin_t", "swin_v2_t"):
        cases[name] = (lambda name=name: getattr(models, name)(weights=None), (3, 112, 112))
    cases["maxvit_t"] = (lambda: models.maxvit_t(weights=None), (3, 224, 224))
    for name in SEGMENTATION:
        cases[name] = (lambda name=name: getattr(models.segmentation, name)(weights=None, weights_backbone=None),
                       (3, 64, 64))
    for name in ("r3d_18", "mc3_18", "r2plus1d_18", "swin3d_t"):
        cases[name] = (lambda name=name: getattr(models.video, name)(weights=None), (3, 8, 64, 64))
    for name in ("s3d", "mvit_v1_b", "mvit_v2_s"):
        cases[name] = (lambda name=name: getattr(models.video, name)(weights=None), (3, 16, 224, 224))
    cases["raft_small"] = (lambda: models.optical_flow.raft_small(weights=None), [(3, 128, 128), (3, 128, 128)])
    for name in DETECTION:
        cases[name] = (lambda name=name: getattr(models.detection, name)(weights=None, weights_backbone=None).backbone,
                       (3, 320, 320))
    return cases


def main(names: list[str]) -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    for name, (build, size) in zoo().items():
        if names and name not in names:
            continue
        model = build().eval()
        start = time.perf_counter()
        result = torchprobe.receptive_field(model, size)
        seconds = time.perf_counter() - start
        unknown = sum(1 for layer in result.layers if layer.unknown)
        codes = dict(collections.Counter(note.code for note in result.diagnostics))
        print(f"{name}: {len(result.layers)} rows, {unknown} unknown, {seconds:.1f} s, notes {codes}", flush=True)
        for note in dict.fromkeys(str(note) for note in result.diagnostics):
            print(f"    {note}")


if __name__ == "__main__":
    main(sys.argv[1:])
