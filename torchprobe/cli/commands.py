"""The ``torchprobe`` commands: parse, call the library, render. No analysis happens here."""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, cast

import torch
import typer
from rich.console import Console

from torchprobe import api
from torchprobe.cli.model_spec import load_batch, load_model, load_weights, parse_input, parse_kwargs
from torchprobe.engine.torch_utils import one_line
from torchprobe.engine.tracer import Mode
from torchprobe.errors import ForwardError, ModelCodeError, RFError, UsageError
from torchprobe.render import RENDER_WIDTH, erf_table, rf_table, summary_table, trace_table
from torchprobe.shapes.result import ShapeError
from torchprobe.stats.result import COLUMNS, DEFAULT_COLUMNS
from torchprobe.version import __version__

EXIT_MODEL_FAILED, EXIT_USAGE, EXIT_BROKEN_PIPE = 1, 2, 141  # 141: a shell's status for SIGPIPE

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Look inside a PyTorch model: receptive fields, shapes, summaries.",
)

Spec = Annotated[str, typer.Argument(help="FILE.py:NAME or package.module:NAME (a module class or a factory).")]
Inputs = Annotated[list[str], typer.Option(
    "--input", "-i", help="Input size without the batch dim, e.g. 1,28,28; repeat for several inputs.")]
Kwargs = Annotated[str | None, typer.Option("--kwargs", help="Constructor keyword arguments as a JSON object.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the versioned JSON report only.")]
Depth = Annotated[int | None, typer.Option(
    "--depth", min=0, help="Hide rows nested deeper than this (summary: fold them into their parent).")]
Layouts = Annotated[list[str] | None, typer.Option(
    "--layout", help="Letters naming the input's dims, batch excluded: C a channel/feature dim, others spatial "
    "axes (CHW, LC for tokens, T for a raw signal); repeat for several inputs.")]
Device = Annotated[str, typer.Option("--device", help="auto (meta, real tensors if needed), meta, cpu or cuda.")]
Dtypes = Annotated[list[str] | None, typer.Option(
    "--dtype", help="The input's dtype (float16, bfloat16, long...; indices long:HIGH for values 0..HIGH-1); repeat "
    "for several inputs. Default: the model's floating dtype.")]
Debug = Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")]


@app.callback(invoke_without_command=True)
def _root(version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False) -> None:
    if version:
        print(__version__)
        raise typer.Exit()


@app.command()
def rf(
    spec: Spec,
    inputs: Inputs,
    kwargs: Kwargs = None,
    as_json: AsJson = False,
    strict: Annotated[bool, typer.Option("--strict", help="Fail on an op without a receptive-field rule.")] = False,
    depth: Depth = None,
    input_index: Annotated[int, typer.Option("--rf-input", min=0, help="Which input the RF is measured on.")] = 0,
    layout: Layouts = None,
    dtypes: Dtypes = None,
    device: Device = "auto",
    debug: Debug = False,
) -> None:
    """Receptive field, jump and start of every layer, per spatial axis."""

    def run() -> None:
        model, sizes = _model_and_sizes(spec, kwargs, inputs)
        result = api.receptive_field(model, sizes, device=_device(device), strict=strict, input_index=input_index,
                                     layout=_layout(layout), dtypes=dtypes or None)
        _show(result, as_json, lambda: rf_table(result, depth=depth))

    _guarded(run, debug)


@app.command()
def trace(
    spec: Spec,
    inputs: Inputs,
    kwargs: Kwargs = None,
    as_json: AsJson = False,
    ops: Annotated[bool, typer.Option("--ops", help="Also list functional ops called in composite modules.")] = False,
    depth: Depth = None,
    layout: Layouts = None,
    dtypes: Dtypes = None,
    device: Device = "auto",
    debug: Debug = False,
) -> None:
    """Shapes and dtypes in and out of every call; when the forward fails, where, why and the fix."""

    def run() -> None:
        model, sizes = _model_and_sizes(spec, kwargs, inputs)
        try:
            result = api.trace(model, sizes, ops=ops, device=_device(device), layout=_layout(layout),
                               dtypes=dtypes or None)
        except ShapeError as failure:
            partial = failure.trace
            _show(partial, as_json, lambda: trace_table(partial, depth=depth))
            raise ModelFailed(failure.summary) from failure
        _show(result, as_json, lambda: trace_table(result, depth=depth))

    _guarded(run, debug)


@app.command()
def summary(
    spec: Spec,
    inputs: Annotated[list[str] | None, typer.Option(
        "--input", "-i", help="Input size without the batch dim, e.g. 1,28,28; repeat for several inputs; "
        "none: parameters per module, without a forward.")] = None,
    kwargs: Kwargs = None,
    as_json: AsJson = False,
    depth: Depth = None,
    columns: Annotated[str | None, typer.Option(
        "--columns", help=f"Comma-separated, from: {', '.join(COLUMNS)} "
        f"(default: {','.join(DEFAULT_COLUMNS)}).")] = None,
    mode: Annotated[str, typer.Option(
        "--mode", help="eval, or train: training mode with autograd, counting the bytes saved for backward.")] = "eval",
    rf_steps: Annotated[
        bool, typer.Option("--rf-steps", help="Print each receptive-field step with its formula.")
    ] = False,
    layout: Layouts = None,
    dtypes: Dtypes = None,
    device: Device = "auto",
    debug: Debug = False,
) -> None:
    """Shapes, parameters (shared ones once), receptive field, FLOPs and memory in one table, with totals."""

    def run() -> None:
        model, sizes = _model_and_sizes(spec, kwargs, inputs or [])
        chosen = [c.strip() for c in columns.split(",")] if columns is not None else None
        result = api.summary(model, sizes or None, depth=depth, columns=chosen, mode=cast(Mode, mode),
                             dtypes=dtypes or None, layout=_layout(layout), device=_device(device))
        _show(result, as_json, lambda: summary_table(result, debug=rf_steps))

    _guarded(run, debug)


@app.command()
def erf(
    spec: Spec,
    layers: Annotated[list[str], typer.Option(
        "--layer", "-l", help="Qualified module name (\"\" for the whole model); repeat for several.")],
    inputs: Annotated[list[str] | None, typer.Option(
        "--input", "-i", help="Input size without the batch dim, e.g. 1,28,28 (not needed with --data).")] = None,
    kwargs: Kwargs = None,
    data: Annotated[Path | None, typer.Option(
        "--data", help="Real inputs, batch dim first: a tensor saved with torch.save, or a .npy array; the first "
        "--batch samples are used (default: random normal inputs of --input's size).")] = None,
    weights: Annotated[Path | None, typer.Option(
        "--weights", help="A state dict saved with torch.save (read with weights_only=True); default: the weights "
        "the spec builds.")] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, help="How many inputs to average over.")] = 16,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random inputs.")] = 0,
    unit: Annotated[str | None, typer.Option(
        "--unit", help="The unit, one index per unit dim (e.g. 3,3); default: the centre unit of each layer.")] = None,
    as_json: AsJson = False,
    layout: Layouts = None,
    device: Annotated[str, typer.Option("--device", help="auto (where the model is: the CPU), cpu or cuda.")] = "auto",
    debug: Debug = False,
) -> None:
    """Effective receptive field: where the gradient of each layer's centre unit falls, beside its exact RF.

    Without data the inputs are random normal: a random-input ERF (of untrained weights unless --weights)."""

    def run() -> None:
        model, sizes = _model_and_sizes(spec, kwargs, inputs or [])
        if len(sizes) != (0 if data is not None else 1):
            raise UsageError("erf takes one --input, or --data" if data is None or not sizes else
                             "give --input or --data, not both (the data's samples have their own size)")
        if weights is not None:
            load_weights(model, weights)
        if device == "meta":
            raise UsageError("--device meta: the ERF needs real values (auto, cpu or cuda)")
        chosen = _device(device)
        given = {"input_data": load_batch(data, batch)} if data is not None else {"input_size": sizes[0]}
        result = api.effective_receptive_field(model, **given, layer=layers, unit=_unit(unit), batch=batch,
                                               seed=seed, layout=_one_layout(layout), device=chosen)
        if as_json:
            print(json.dumps({**result.to_dict(), "weights": None if weights is None else str(weights)}))
            return
        _console().print(erf_table(result))
        where = f"loaded from {weights}" if weights is not None else "as the spec builds them (no --weights)"
        _console().print(f"Weights: {where}.")

    _guarded(run, debug)


def _unit(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    try:
        return tuple(int(p) for p in parts)
    except ValueError as error:
        raise UsageError(f"bad --unit {text!r}: expected integers separated by commas, e.g. 3,3") from error


def _one_layout(layouts: list[str] | None) -> str | None:
    if layouts and len(layouts) > 1:
        raise UsageError("erf takes one --layout, for its one input")
    return layouts[0] if layouts else None


def _model_and_sizes(spec: str, kwargs: str | None, inputs: list[str]) -> tuple[Any, list[tuple[int, ...]]]:
    return load_model(spec, parse_kwargs(kwargs)), [parse_input(text) for text in inputs]


def _layout(layouts: list[str] | None) -> str | list[str] | None:
    """One ``--layout`` is the RF input's; several are one per input."""
    if not layouts:
        return None
    return layouts[0] if len(layouts) == 1 else layouts


def _show(result: Any, as_json: bool, table: Callable[[], Any]) -> None:
    """The JSON report alone on stdout, or the rich table."""
    if as_json:
        print(json.dumps(result.to_dict()))
    else:
        _console().print(table())


class ModelFailed(Exception):
    """``trace`` printed its diagnosis; exit 1 with its one-line summary."""


def _console() -> Console:
    """Terminal width on a terminal; a fixed wide table when piped, so names are never cut."""
    return Console() if sys.stdout.isatty() else Console(width=RENDER_WIDTH)


def _device(name: str) -> str:
    if name not in ("auto", "meta", "cpu") and not name.startswith("cuda"):
        raise UsageError(f"bad --device {name!r}: expected auto, meta, cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available on this machine")
    return name


def _guarded(run: Callable[[], Any], debug: bool) -> None:
    """One ``error:`` line and an exit code instead of a traceback (unless ``--debug``)."""
    try:
        run()
    except (ModelFailed, ModelCodeError) as failure:
        _report(str(failure), EXIT_MODEL_FAILED, debug)
    except BrokenPipeError:  # the reader stopped early (``| head``): nothing to report
        _silence_stdout()
        raise typer.Exit(EXIT_BROKEN_PIPE) from None
    except OSError as error:  # the output could not be written: a full disk
        _report(f"writing the output failed: {one_line(error)}", EXIT_MODEL_FAILED, debug)
    except (UsageError, ForwardError, RFError) as error:
        message = error.summary if isinstance(error, ShapeError) else str(error)
        input_related = isinstance(error, UsageError) or getattr(error, "input_related", False)
        _report(message, EXIT_USAGE if input_related else EXIT_MODEL_FAILED, debug)


def _silence_stdout() -> None:
    """After a broken pipe the interpreter's last flush of stdout must not fail again."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # not a file descriptor (captured output): nothing to flush there
        pass


def _report(message: str, code: int, debug: bool) -> None:
    """The error line (after the traceback with ``--debug``), then the exit code either way."""
    if debug:
        traceback.print_exc()
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(code)
