"""The public entry points: each composes a trace with the probes it needs."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from torchprobe.engine.inputs import DtypeArg, batch_sizes, model_inputs
from torchprobe.engine.torch_utils import describe_value
from torchprobe.engine.tracer import Mode, TraceOutcome, Tracer
from torchprobe.engine.wrappers import unwrap
from torchprobe.errors import ForwardError, UsageError
from torchprobe.rf.effective import ERFResult, UnitArg, random_inputs
from torchprobe.rf.effective import effective_receptive_field as _erf
from torchprobe.rf.layouts import LayoutArg, input_layout
from torchprobe.rf.probe import RFProbe
from torchprobe.rf.result import LayerRF, RFResult
from torchprobe.shapes.diagnose import INPUT_KINDS, diagnose
from torchprobe.shapes.probe import ShapeProbe
from torchprobe.shapes.result import ShapeError, ShapeTrace
from torchprobe.shapes.smallest import smallest_input_size
from torchprobe.shapes.tensors import describe
from torchprobe.stats.probe import SummaryProbe
from torchprobe.stats.result import COLUMNS, DEFAULT_COLUMNS, ModelSummary


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
    outcome = _diagnosed(lambda: Tracer(model, [probe]).run(inputs, keywords, device=device), model, inputs, keywords,
                         device, layout)
    return _rf_result(probe, outcome)


def _rf_result(probe: RFProbe, outcome: TraceOutcome) -> RFResult:
    records, diagnostics = probe.result()
    layers = LayerRF.rows(records, len(probe.axis_names))
    return RFResult(probe.input_shape, layers, tuple(diagnostics), outcome.device, outcome.fallback_reason,
                    probe.axis_names, probe.spatial_size)


def effective_receptive_field(
    model: nn.Module,
    input_size: Sequence[int] | None = None,
    *,
    layer: str | Sequence[str],
    input_data: torch.Tensor | None = None,
    unit: UnitArg = None,
    batch: int = 16,
    seed: int = 0,
    call: int = 0,
    layout: str | None = None,
    device: str = "auto",
) -> ERFResult:
    """The effective receptive field (Luo et al. 2016) of the centre unit of each ``layer``
    (a qualified module name, or several; "" the whole model), with the weights as they are:
    the mean over the batch of ``|d unit / d input|`` summed over the input's channels, beside
    the exact theoretical RF of the same unit (:func:`receptive_field`'s row, ``.span(unit)``).

    The ERF depends on the data: pass real inputs as ``input_data``, one tensor with the batch
    dim first (validation images, normalised as the model expects). Without it, ``input_size``
    (no batch dim) gives ``batch`` standard normal inputs drawn from ``seed`` (a random-input
    ERF; the result's ``inputs`` says so). ``unit`` picks other units than the centre one: one
    index per dim of the row's ``unit_dims`` (an int: the same on each), or a dict per layer.
    ``call`` picks one call of a shared module, ``layout`` names the input's dims (as for
    :func:`receptive_field`). The gradient runs on an eval-mode copy of the model, on ``device``
    ("auto": where its parameters are); the model itself is left as it was. Figures:
    :mod:`torchprobe.rf.effective`."""
    if input_data is None:
        if input_size is None:
            raise UsageError("give input_data (a batch of real inputs) or input_size (random normal inputs)")
        size = tuple(batch_sizes(input_size)[0][1:])
        inputs, source = random_inputs(size, batch, seed), f"random normal (seed {seed})"
    else:
        if not isinstance(input_data, torch.Tensor):
            raise UsageError(f"input_data must be one tensor with the batch dim first, got {type(input_data).__name__}")
        inputs, source = input_data, "data"
    if inputs.dim() < 2 or not inputs.is_floating_point():
        raise UsageError(f"input_data must be a floating tensor (N, C, H, W), got {describe_value(inputs)}")
    layers = [layer] if isinstance(layer, str) else list(layer)
    theory = receptive_field(model, tuple(inputs.shape[1:]), layout=layout)
    return _erf(model, inputs, theory, layers, unit=unit, call=call, device=device, layout=layout, source=source)


def summary(
    model: nn.Module,
    input_size: Any = None,
    *,
    input_data: Any = None,
    kwargs: Mapping[str, Any] | None = None,
    depth: int | None = None,
    columns: Sequence[str] | None = None,
    mode: Mode = "eval",
    dtypes: Sequence[DtypeArg] | None = None,
    layout: LayoutArg = None,
    device: str = "auto",
    input_index: int = 0,
) -> ModelSummary:
    """One row per module call: output shape, parameters (shared and tied ones once), receptive
    field, FLOPs (``torch.utils.flop_counter``'s formulas, on meta shapes whatever ``device`` is)
    and memory, with totals; render it, or ``to_dict()`` for JSON.

    Inputs: ``input_size`` per sample (no batch dim), or ``input_data`` tensors (a dict: keyword
    arguments); neither: parameters per module, without a forward. ``dtypes``, one per size, are
    torch dtypes or names (``"bfloat16"``; indices ``"long:1000"`` for values 0..999, by default
    below the model's smallest embedding); without them a size is an input of the model's
    floating dtype. ``depth`` folds deeper rows into their parent; ``columns`` picks from
    :data:`torchprobe.stats.result.COLUMNS`; ``mode="train"`` runs the modules in training mode
    with autograd recording, so the bytes saved for backward are counted. The RF columns appear
    when input ``input_index`` has a spatial axis under ``layout`` (by default: C, then at least
    one more dim)."""
    model = unwrap(model)  # the rows name the model inside torch.compile or data parallelism
    chosen = _columns(columns, mode)
    if input_size is None and input_data is None:
        return ModelSummary.of_parameters(model, depth, chosen)
    inputs, keywords = model_inputs(input_size, input_data, kwargs, dtypes, model)
    positional = [_shape_of(x)[1:] for x in inputs]
    shapes = tuple(positional) + tuple(_shape_of(v)[1:] for v in keywords.values() if isinstance(v, torch.Tensor))
    spatial = input_index < len(inputs) and bool(input_layout(layout, positional, input_index).spatial)
    stats = SummaryProbe()
    rf = RFProbe(input_index=input_index, layout=layout) if spatial else None
    outcome = _diagnosed(lambda: Tracer(model, [stats] + ([rf] if rf else [])).run(inputs, keywords, device, mode),
                         model, inputs, keywords, device, layout)
    return ModelSummary(model, shapes, tuple(stats.result()), _rf_result(rf, outcome) if rf else None, outcome.device,
                        outcome.fallback_reason, stats.pass_memory(), mode, depth, chosen)


def _columns(columns: Sequence[str] | None, mode: Mode) -> tuple[str, ...]:
    if mode not in ("eval", "train"):
        raise UsageError(f"bad mode {mode!r}: expected eval or train")
    if columns is None:
        return DEFAULT_COLUMNS + (("saved",) if mode == "train" else ())
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        raise UsageError(f"unknown column {unknown[0]!r}: expected some of {', '.join(COLUMNS)}")
    return tuple(columns)


def _diagnosed(run: Callable[[], TraceOutcome], model: nn.Module, inputs: list[Any], kwargs: dict[str, Any],
               device: str, layout: LayoutArg) -> TraceOutcome:
    """Run a pass; when the model's forward fails, raise what :func:`trace` says of it (the
    same :class:`ShapeError`, with the diagnosis), not the bare error."""
    try:
        return run()
    except ForwardError as error:
        if isinstance(error, ShapeError):
            raise
        _shape_trace(model, inputs, kwargs, False, device, layout)  # raises the diagnosed ShapeError
        raise  # the forward fails only with these probes attached: their error as it is


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
    inputs, keywords = model_inputs(input_size, input_data, kwargs, dtypes, model)
    return _shape_trace(model, inputs, keywords, ops, device, layout)


def _shape_trace(model: nn.Module, inputs: list[Any], kwargs: dict[str, Any], ops: bool, device: str,
                 layout: LayoutArg) -> ShapeTrace:
    """:func:`trace` of inputs already built (what ``summary`` and ``receptive_field`` call to
    diagnose their failure the same way)."""
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
        diagnosis = diagnose(cause, probe.failed_stack, probe.failed_op, probe.producer_of, smallest, probe.unbatched)
        partial = ShapeTrace(shapes, tuple(probe.result()), "meta", None, diagnosis)
        where = f"{diagnosis.module or '(model)'} ({diagnosis.module_type})"
        headline = f"{where} failed: {diagnosis.error}" if diagnosis.kind == "other" else f"{where}: {diagnosis.fix}"
        input_related = error.input_related or diagnosis.kind in INPUT_KINDS
        raise ShapeError(str(partial), headline, partial, diagnosis, input_related) from cause
    return ShapeTrace(shapes, tuple(probe.result()), outcome.device, outcome.fallback_reason)
