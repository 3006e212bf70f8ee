"""The ``torchprobe`` commands: parse, call the library, render. No analysis happens here."""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from typing import Annotated, Any, cast

import torch
import typer
from rich.console import Console

from torchprobe import api
from torchprobe.cli.model_spec import load_model, parse_input, parse_kwargs
from torchprobe.engine.torch_utils import one_line
from torchprobe.engine.tracer import Mode
from torchprobe.errors import ForwardError, ModelCodeError, RFError, UsageError
from torchprobe.render import RENDER_WIDTH, rf_table, summary_table, trace_table
from torchprobe.shapes.result import ShapeError
from torchprobe.stats.result import COLUMNS, DEFAULT_COLUMNS
from torchprobe.version import __version__

EXIT_MODEL_FAILED, EXIT_USAGE = 1, 2

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
    except OSError as error:  # the output could not be written: a full disk, a closed pipe
        _report(f"writing the output failed: {one_line(error)}", EXIT_MODEL_FAILED, debug)
    except (UsageError, ForwardError, RFError) as error:
        message = error.summary if isinstance(error, ShapeError) else str(error)
        input_related = isinstance(error, UsageError) or getattr(error, "input_related", False)
        _report(message, EXIT_USAGE if input_related else EXIT_MODEL_FAILED, debug)


def _report(message: str, code: int, debug: bool) -> None:
    """The error line (after the traceback with ``--debug``), then the exit code either way."""
    if debug:
        traceback.print_exc()
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(code)
