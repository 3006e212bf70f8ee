"""The public entry points: each composes a trace with the probes it needs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from torchprobe.inputs import model_inputs
from torchprobe.rf.probe import RFProbe
from torchprobe.rf.result import LayerRF, RFResult
from torchprobe.trace import Tracer


def receptive_field(
    model: nn.Module,
    input_size: Any = None,
    *,
    input_data: Any = None,
    kwargs: Mapping[str, Any] | None = None,
    device: str = "auto",
    strict: bool = False,
    input_index: int = 0,
) -> RFResult:
    """Receptive field, jump and start of every module call, per spatial axis of one input.

    ``input_size`` excludes the batch dimension (``(1, 28, 28)``); several inputs are a list of
    sizes, and ``input_index`` picks the one whose pixels the RF counts. Runs on the meta device
    unless ``device`` says otherwise (falling back to real tensors when the model needs values).
    ``strict`` raises :class:`torchprobe.RFError` for an op without a rule instead of reporting it.
    """
    probe = RFProbe(input_index=input_index, strict=strict)
    outcome = Tracer(model, [probe]).run(model_inputs(input_size, input_data), kwargs, device=device)
    records, diagnostics = probe.result()
    n_axes = len(probe.input_shape) - 1
    layers = tuple(LayerRF.from_record(r, n_axes) for r in records)
    return RFResult(probe.input_shape, layers, tuple(diagnostics), outcome.device, outcome.fallback_reason)
