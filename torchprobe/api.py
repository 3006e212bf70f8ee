"""The public entry points: each composes a trace with the probes it needs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from torchprobe.engine.inputs import DtypeArg, model_inputs
from torchprobe.engine.tracer import TraceOutcome, Tracer
from torchprobe.engine.wrappers import unwrap
from torchprobe.errors import ForwardError
from torchprobe.rf.layouts import LayoutArg, input_layout
from torchprobe.rf.probe import RFProbe
from torchprobe.rf.result import LayerRF, RFResult
from torchprobe.shapes.diagnose import diagnose
from torchprobe.shapes.probe import ShapeProbe
from torchprobe.shapes.result import ShapeError, ShapeTrace
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
    layout: LayoutArg = None,
    dtypes: Sequence[DtypeArg] | None = None,
) -> RFResult:
    """Receptive field, jump and start of every module call, per spatial axis of one input.

    ``input_size`` excludes the batch dimension (``(1, 28, 28)``); several inputs are a list of
    sizes, and ``input_index`` picks the one whose pixels the RF counts. Runs on the meta device
    unless ``device`` says otherwise (falling back to real tensors when the model needs values).
    ``strict`` raises :class:`torchprobe.RFError` for an op without a rule instead of reporting it.
    ``layout`` names the input's dims, one letter each (``"CHW"``, ``"LC"`` for tokens, ``"T"``
    for a raw signal; one string per input for several), see :mod:`torchprobe.rf.layouts`.
    ``dtypes`` (one per size) default to the model's floating dtype, see :func:`summary`.
    """
    probe = RFProbe(input_index=input_index, strict=strict, layout=layout)
    inputs, keywords = model_inputs(input_size, input_data, kwargs, dtypes, model)
    outcome = Tracer(model, [probe]).run(inputs, keywords, device=device)
    return _rf_result(probe, outcome)


def _rf_result(probe: RFProbe, outcome: TraceOutcome) -> RFResult:
    records, diagnostics = probe.result()
    layers = tuple(LayerRF.from_record(r, len(probe.axis_names)) for r in records)
    return RFResult(probe.input_shape, layers, tuple(diagnostics), outcome.device, outcome.fallback_reason,
                    probe.axis_names, probe.spatial_size)


def summary(
    model: nn.Module,
    input_size: Any = None,
    *,
    input_data: Any = None,
    kwargs: Mapping[str, Any] | None = None,
    device: str = "auto",
    input_index: int = 0,
    layout: LayoutArg = None,
    dtypes: Sequence[DtypeArg] | None = None,
) -> ModelSummary:
    """One row per module call: output shape, parameters (shared and tied ones once), receptive
    field and FLOPs (``torch.utils.flop_counter``'s formulas, on meta shapes whatever ``device``
    is), with totals;
    render it, or ``to_dict()`` for JSON.
    The RF columns appear when input ``input_index`` has a spatial axis under ``layout`` (by
    default: C, then at least one more dim).

    Inputs: ``input_size`` per sample (no batch dim), or ``input_data`` tensors (a dict: keyword
    arguments). ``dtypes``, one per size, are torch dtypes or names (``"bfloat16"``; indices
    ``"long:1000"`` for values 0..999, by default below the model's smallest embedding); without
    them a size is an input of the model's floating dtype."""
    model = unwrap(model)  # the rows name the model inside torch.compile or data parallelism
    inputs, keywords = model_inputs(input_size, input_data, kwargs, dtypes, model)
    positional = [_shape_of(x)[1:] for x in inputs]
    shapes = tuple(positional) + tuple(_shape_of(v)[1:] for v in keywords.values() if isinstance(v, torch.Tensor))
    spatial = input_index < len(inputs) and bool(input_layout(layout, positional, input_index).spatial)
    stats = SummaryProbe()
    rf = RFProbe(input_index=input_index, layout=layout) if spatial else None
    outcome = Tracer(model, [stats] + ([rf] if rf else [])).run(inputs, keywords, device=device)
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
    layout: LayoutArg = None,
    dtypes: Sequence[DtypeArg] | None = None,
) -> ShapeTrace:
    """Every module call (and with ``ops=True`` every functional op of a composite module) with
    the shapes and dtypes of all its inputs and outputs.

    When the forward fails, raises :class:`torchprobe.ShapeError` (chained from the original
    error) whose message holds the table up to the failure and a diagnosis: the module, what it
    expected, what it received, which call produced that, and the fix. A model too small for its
    input is told the smallest size per spatial axis of input 0's ``layout`` (``"LC"``: tokens).
    """
    inputs, kwargs = model_inputs(input_size, input_data, kwargs, dtypes, model)
    shapes_in = [_shape_of(x)[1:] for x in inputs]
    spatial = [1 + d for d in input_layout(layout, shapes_in, 0).spatial] if inputs else []
    probe = ShapeProbe(ops=ops)
    shapes = tuple(describe(torch.empty(x, device="meta") if isinstance(x, torch.Size) else x) for x in inputs)
    try:
        outcome = Tracer(model, [probe]).run(inputs, kwargs, device=device)
    except ForwardError as error:
        cause = error.__cause__ or error
        sizes = [x for x in inputs if isinstance(x, torch.Size)]
        smallest = ((lambda: smallest_input_size(model, inputs, 0, kwargs, spatial))
                    if len(sizes) == len(inputs) else None)
        diagnosis = diagnose(cause, probe.failed_stack, probe.failed_op, probe.producer_of, smallest)
        partial = ShapeTrace(shapes, tuple(probe.result()), "meta", None, diagnosis)
        headline = f"{diagnosis.module or '(model)'} ({diagnosis.module_type}): {diagnosis.fix}"
        raise ShapeError(str(partial), headline, partial, diagnosis, error.input_related) from cause
    return ShapeTrace(shapes, tuple(probe.result()), outcome.device, outcome.fallback_reason)
