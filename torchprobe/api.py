"""The public entry points: each composes a trace with the probes it needs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from torchprobe.engine.inputs import model_inputs
from torchprobe.engine.tracer import TraceOutcome, Tracer
from torchprobe.errors import ForwardError, ShapeError
from torchprobe.rf.probe import RFProbe
from torchprobe.rf.result import LayerRF, RFResult
from torchprobe.shapes.diagnose import diagnose
from torchprobe.shapes.probe import ShapeProbe
from torchprobe.shapes.result import ShapeTrace
from torchprobe.shapes.smallest import smallest_input_size
from torchprobe.shapes.tensors import describe
from torchprobe.stats.probe import SummaryProbe
from torchprobe.stats.result import ModelSummary


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
    return _rf_result(probe, outcome)


def _rf_result(probe: RFProbe, outcome: TraceOutcome) -> RFResult:
    records, diagnostics = probe.result()
    n_axes = len(probe.input_shape) - 1
    layers = tuple(LayerRF.from_record(r, n_axes) for r in records)
    return RFResult(probe.input_shape, layers, tuple(diagnostics), outcome.device, outcome.fallback_reason)


def summary(
    model: nn.Module,
    input_size: Any = None,
    *,
    input_data: Any = None,
    kwargs: Mapping[str, Any] | None = None,
    device: str = "auto",
    input_index: int = 0,
) -> ModelSummary:
    """One row per module call: output shape, parameters (shared and tied ones once), receptive
    field and FLOPs (``FlopCounterMode``), with totals; render it, or ``to_dict()`` for JSON.
    The RF columns appear when input ``input_index`` has spatial axes (C, then at least one more)."""
    inputs = model_inputs(input_size, input_data)
    spatial = input_index < len(inputs) and len(_shape_of(inputs[input_index])) >= 3
    stats = SummaryProbe()
    rf = RFProbe(input_index=input_index) if spatial else None
    outcome = Tracer(model, [stats] + ([rf] if rf else [])).run(inputs, kwargs, device=device)
    shapes = tuple(tuple(_shape_of(x)[1:]) for x in inputs)
    rf_part = _rf_result(rf, outcome) if rf else None
    return ModelSummary(model, shapes, tuple(stats.result()), rf_part, outcome.device, outcome.fallback_reason)


def _shape_of(x: Any) -> tuple[int, ...]:
    return tuple(x) if isinstance(x, torch.Size) else tuple(getattr(x, "shape", ()))


def trace(
    model: nn.Module,
    input_size: Any = None,
    *,
    input_data: Any = None,
    kwargs: Mapping[str, Any] | None = None,
    ops: bool = False,
    device: str = "auto",
) -> ShapeTrace:
    """Every module call (and with ``ops=True`` every functional op of a composite module) with
    the shapes and dtypes of all its inputs and outputs.

    When the forward fails, raises :class:`torchprobe.ShapeError` (chained from the original
    error) whose message holds the table up to the failure and a diagnosis: the module, what it
    expected, what it received, which call produced that, and the fix.
    """
    inputs = model_inputs(input_size, input_data)
    probe = ShapeProbe(ops=ops)
    shapes = tuple(describe(torch.empty(x, device="meta") if isinstance(x, torch.Size) else x) for x in inputs)
    try:
        outcome = Tracer(model, [probe]).run(inputs, kwargs, device=device)
    except ForwardError as error:
        cause = error.__cause__ or error
        sizes = [x for x in inputs if isinstance(x, torch.Size)]
        smallest = (lambda: smallest_input_size(model, inputs, 0, kwargs)) if len(sizes) == len(inputs) else None
        diagnosis = diagnose(cause, probe.failed_stack, probe.failed_op, probe.producer_of, smallest)
        partial = ShapeTrace(shapes, tuple(probe.result()), "meta", None, diagnosis)
        headline = f"{diagnosis.module or '(model)'} ({diagnosis.module_type}): {diagnosis.fix}"
        raise ShapeError(str(partial), headline, partial, diagnosis, error.input_related) from cause
    return ShapeTrace(shapes, tuple(probe.result()), outcome.device, outcome.fallback_reason)
