"""``analyze_failures``: one evaluation pass of a model over a loader, into an analyzer."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from torchprobe.engine.torch_utils import describe_value, preserved_training_flags
from torchprobe.failures.analyzer import FailureAnalyzer
from torchprobe.failures.hook import first_tensor


def analyze_failures(model: nn.Module, loader: Iterable[Any], num_classes: int | None = None, *,
                     class_names: Sequence[str] | None = None, analyzer: FailureAnalyzer | None = None,
                     keep: int = 64, inputs: bool = True, device: torch.device | str | None = None,
                     select: Callable[[Any], torch.Tensor] | None = None) -> FailureAnalyzer:
    """Evaluate ``model`` over ``loader`` (batches ``(inputs, targets)`` or ``(inputs, targets,
    indices)``; without indices, a sample's index is its position in the loader) in eval mode,
    without gradients, restoring every module's ``training`` flag; merged across processes
    (``sync()``) when ``torch.distributed`` is initialised. ``num_classes`` defaults to the width
    of the first output."""
    select = select or first_tensor
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with preserved_training_flags(model.modules()), torch.no_grad():
        model.eval()
        for batch in loader:
            if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
                raise ValueError("each batch must be (inputs, targets) or (inputs, targets, indices), "
                                 f"got {describe_value(batch)}")
            x, y, index = (*batch, None)[:3]
            x = x.to(device, non_blocking=True)
            outputs = select(model(x))
            if analyzer is None:
                analyzer = FailureAnalyzer(num_classes or outputs.shape[-1], class_names, keep=keep)
            analyzer.update(outputs, y, x if inputs else None, index)
    if analyzer is None:
        if num_classes is None:
            raise ValueError("the loader gave no batches, so num_classes is unknown: pass it")
        analyzer = FailureAnalyzer(num_classes, class_names, keep=keep)
    return analyzer.sync()
