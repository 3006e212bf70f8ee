"""The recipe's training run, with torchprobe attached: summary before, progress during,
failure analysis after each epoch, the official test set at the end.

:class:`Trainer` owns the step loop and the checkpoint; :func:`run_training` drives the epochs and
hands the passes on clean images to ``evaluate.py`` and the files to ``run_folder.py``."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

import torchprobe
from mnist_demo import fields
from mnist_demo.augment import BatchedAugment
from mnist_demo.data import MnistData, Split
from mnist_demo.distributed import ONE_PROCESS, Ranks, all_gather, all_sum, with_global_batchnorm
from mnist_demo.evaluate import NUM_CLASSES, Scores, evaluate, final_evaluation, recalibrate_batchnorm
from mnist_demo.files import CHECKPOINT, RunFolderError, load_tensors, remove_temp_files, save_tensors
from mnist_demo.history import EpochMetrics, history_rows
from mnist_demo.model import Net
from mnist_demo.recipe import Recipe
from mnist_demo.run_folder import write_final, write_metrics, write_start
from mnist_demo.watch import PROGRESS_SECONDS, Board, EpochProgress, status

Pipeline = Literal["batched", "torchvision"]  # on-device tensor ops, or the seed's per-sample transforms
PIPELINES: tuple[Pipeline, ...] = get_args(Pipeline)
Batch = tuple[torch.Tensor, torch.Tensor, int]  # this rank's images and labels, the global batch size


@dataclass
class TrainConfig:
    recipe: Recipe
    out: Path
    seed: int = 1
    device: str = "auto"
    augment: Pipeline = "batched"
    workers: int = 2
    limit: int | None = None  # train on the first N training images only (quick runs, tests)
    eval_limit: int | None = None  # validate and test on the first N images of each split only
    resume: bool = False
    ranks: Ranks = ONE_PROCESS  # this process's place in a torchrun job (one process: rank 0 of 1)
    dtype: torch.dtype = torch.float32  # float64: runs that must agree beyond float32 rounding
    tensorboard: bool = False  # event files in <out>/tensorboard (the CLI's default: on)
    progress_seconds: float = PROGRESS_SECONDS  # without a terminal: a progress line at least this often
    memory_format: torch.memory_format = torch.contiguous_format  # channels_last: faster on the CPU (bench/)


def pick_device(name: str, ranks: Ranks = ONE_PROCESS) -> torch.device:
    """``auto``: CUDA when present (under torchrun, the GPU of this process's local rank). Raises
    ``ValueError`` (one line, for ``error:``) for a name that is not cpu, cuda or cuda:N, or a GPU
    this machine lacks."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"unknown --device {name!r}: choose auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if name == "cuda" and ranks.distributed:
        return torch.device("cuda", ranks.local_rank)
    return device


def build_model(recipe: Recipe) -> Net:
    return Net(dropout_scale=recipe.dropout_scale, logit_relu=recipe.logit_relu)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`run_training`, with what is saved: the epoch of the last checkpoint
    written (or restored), ``None`` when there is none yet."""

    def __init__(self, saved_epoch: int | None) -> None:
        super().__init__()
        self.saved_epoch = saved_epoch


def run_settings(config: TrainConfig, data: MnistData) -> dict[str, Any]:
    """Every setting that changes what the run computes (its weights, its history): recorded in
    the checkpoint, compared on ``--resume``. The device is not one: a run may move to another
    machine (the numbers then differ by rounding only)."""
    return {
        "recipe": config.recipe.to_dict(),  # epochs and batch size included
        "seed": config.seed,
        "limit": config.limit,
        "eval_limit": config.eval_limit,
        "augment": config.augment,
        "workers": config.workers if config.augment == "torchvision" else None,  # each draws its own stream
        "dtype": str(config.dtype).removeprefix("torch."),
        "data": data_digest(data),
        "processes": config.ranks.world,
    }


def data_digest(data: MnistData) -> str:
    """The sha256 of the data file read or, for a torchvision folder, of the images and labels."""
    if data.sha256:
        return data.sha256
    digest = hashlib.sha256()
    for split in (data.train, data.val, data.test):
        for tensor in (split.images, split.labels):
            digest.update(tensor.contiguous().numpy().tobytes())
    return f"tensors:{digest.hexdigest()}"


def _flat_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """One level, named as the options are (the recipe's fields at the top, its augmentation as
    ``augmentation.<field>``), with JSON's values (tuples as lists)."""
    flat: dict[str, Any] = {}
    for key, value in json.loads(json.dumps(settings)).items():
        if key != "recipe" or not isinstance(value, dict):
            flat[key] = value
            continue
        for field, setting in value.items():
            if field == "augment" and isinstance(setting, dict):
                flat.update({f"augmentation.{k}": v for k, v in setting.items()})
            else:
                flat["recipe" if field == "name" else field] = setting
    return flat


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    text = str(value)
    return text if len(text) <= 24 else text[:16] + "..."


def settings_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``"limit 2048 (now 4096)"`` for each setting that differs (absent: ``missing``)."""
    old, new = _flat_settings(saved), _flat_settings(now)
    return [f"{key} {_shown(old.get(key, 'missing'))} (now {_shown(new.get(key, 'missing'))})"
            for key in {**old, **new} if old.get(key, "missing") != new.get(key, "missing")]


CHECKPOINT_KEYS = ("epoch", "model", "optimizer", "scheduler", "generator", "torch_rng", "history", "settings",
                   "watcher")


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by :meth:`Trainer.save`, its structure and types checked; any other
    file raises :class:`RunFolderError` (one line, naming ``path``)."""
    state = load_tensors(path)

    def bad(what: str) -> RunFolderError:
        return RunFolderError(f"{path}: not a checkpoint of this demo ({what})")

    if not isinstance(state, dict):
        raise bad(f"it holds a {type(state).__name__}, not a dict")
    missing = [key for key in CHECKPOINT_KEYS if key not in state]
    if missing == ["settings"]:
        raise RunFolderError(f"{path}: written by an older version of the demo, which did not record the run's "
                             f"settings: it cannot be resumed safely; start a new run")
    if missing:
        raise bad(f"no {', '.join(missing)}")
    epoch = state["epoch"]
    if type(epoch) is not int or epoch < 0:
        raise bad(f"epoch {epoch!r}")
    if not isinstance(state["model"], dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state["model"].items()):
        raise bad("model: not a state dict of tensors")
    for key in ("optimizer", "scheduler", "settings"):
        if not isinstance(state[key], dict):
            raise bad(f"{key}: a {type(state[key]).__name__}, not a dict")
    if not _byte_tensor(state["generator"]):
        raise bad("generator: not a random-generator state")
    ranks = state["torch_rng"]
    if not isinstance(ranks, list) or not ranks or not all(
            isinstance(r, dict) and _byte_tensor(r.get("cpu")) for r in ranks):
        raise bad("torch_rng: not a list of random states")
    for key in ("history", "watcher"):
        rows = state[key]
        if not isinstance(rows, list) or len(rows) != epoch or not all(isinstance(r, dict) for r in rows):
            raise bad(f"{key}: not {epoch} epoch record(s)")
    return state


def _byte_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.dim() == 1


class Trainer:
    """Owns the model, optimiser, schedule and random streams of one run; saves and resumes them."""

    def __init__(self, config: TrainConfig, data: MnistData, console: Console) -> None:
        self.config, self.data, self.console = config, data, console
        self.recipe, self.ranks = config.recipe, config.ranks
        self.device = pick_device(config.device, self.ranks)
        torch.manual_seed(config.seed)
        # data order and augmentation parameters: one stream, the same on every rank
        self.generator = torch.Generator(device="cpu").manual_seed(config.seed)
        self.train_split = _limited(data.train, config.limit)
        self.model = build_model(self.recipe).to(self.device, config.dtype).to(  # the same weights on every rank
            memory_format=config.memory_format)
        self.net: nn.Module = self.model  # what training calls: the model, or its DDP wrapper
        if self.ranks.distributed:
            torch.manual_seed(config.seed + self.ranks.rank)  # dropout: each rank its own masks
            with_global_batchnorm(self.model)
            self.net = nn.parallel.DistributedDataParallel(  # buffers: the global BatchNorm keeps them equal
                self.model, device_ids=[self.device] if self.device.type == "cuda" else None,
                forward_sync_buffers=False,
            )
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=self.recipe.max_lr / 25, momentum=self.recipe.momentum,
            weight_decay=self.recipe.weight_decay,
        )
        self.steps_per_epoch = math.ceil(len(self.train_split.labels) / self.recipe.batch_size)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=self.recipe.max_lr, epochs=self.recipe.epochs, steps_per_epoch=self.steps_per_epoch
        )
        self.history: list[EpochMetrics] = []
        self.epoch = 0
        self.saved_epoch: int | None = None  # the epoch of the checkpoint in the run folder, if any
        self.settings = run_settings(config, data)
        self.watcher = torchprobe.FailureAnalyzer(NUM_CLASSES, keep=0)  # per-epoch failures and flips, no inputs

    @property
    def lr(self) -> float:
        """The learning rate the next step uses."""
        return float(self.scheduler.get_last_lr()[0])

    # -- checkpoints ----------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly; plain containers, ``weights_only`` loadable."""
        return {
            "epoch": self.epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "generator": self.generator.get_state(),
            "torch_rng": all_gather(self._rng_state()), "history": history_rows(self.history),
            "recipe": self.recipe.to_dict(), "seed": self.config.seed, "settings": self.settings,
            "watcher": [record.state() for record in self.watcher.history],
        }

    def save(self) -> None:
        """Every rank takes part (the dropout streams are gathered); rank 0 writes."""
        state = self.state()
        if self.ranks.main:
            save_tensors(state, self.config.out / CHECKPOINT)
        self.saved_epoch = self.epoch

    def _rng_state(self) -> dict[str, torch.Tensor]:
        """This process's dropout stream (CPU, and the GPU's when training there)."""
        state = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def restore(self) -> None:
        """Back to the end of the checkpoint's epoch. Refuses (``RunFolderError``, one line) a file
        that is not a checkpoint of this demo, and one written with other settings, naming each
        with both values: a run cannot be extended to more epochs (its schedule spans them)."""
        path = self.config.out / CHECKPOINT
        state = read_checkpoint(path)
        differences = settings_differences(state["settings"], self.settings)
        if differences:
            hint = ("; a run cannot be extended: its learning-rate schedule spans its epochs, start a new run"
                    if any(d.startswith("epochs ") for d in differences) else "")
            raise RunFolderError(f"cannot resume {self.config.out}: {CHECKPOINT} was written with other settings: "
                                 f"{', '.join(differences)}{hint}")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.generator.set_state(state["generator"])
            rng = state["torch_rng"][self.ranks.rank]
            torch.set_rng_state(rng["cpu"])
            if "cuda" in rng:
                torch.cuda.set_rng_state(rng["cuda"], self.device)
            self.history = [EpochMetrics.from_dict(row) for row in state["history"]]
            self.watcher.history = [torchprobe.EpochRecord.from_state(record) for record in state["watcher"]]
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as error:
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise RunFolderError(f"{path}: not a checkpoint of this demo's model and training state "
                                 f"({type(error).__name__}: {message[:160]})") from error
        self.epoch = self.saved_epoch = state["epoch"]

    # -- one epoch ------------------------------------------------------------------------------

    def train_epoch(self, batches: Iterable[Batch], progress: EpochProgress, board: Board | None = None) -> Scores:
        """One pass over ``batches``; the loss and accuracy returned are those of the whole epoch
        (every rank's samples); ``progress`` shows this rank's running values, ``board`` gets each
        step's loss (this rank's batch) and learning rate, both at the sync points only."""
        self.model.train()
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        first_step = self.scheduler.last_epoch + 1  # the run's count of optimizer steps, 1-based
        step_losses: list[torch.Tensor] = []  # on the device until the next sync
        step_lrs: list[float] = []
        logging = board is not None and board.active
        for step, (x, y, global_batch) in enumerate(batches, 1):
            out = self.net(x)
            summed = F.nll_loss(out, y, reduction="sum")
            # DDP averages gradients over the ranks: this makes them those of the global batch's mean loss
            loss = summed * (self.ranks.world / global_batch)
            self.optimizer.zero_grad(set_to_none=True)
            if logging:
                step_lrs.append(self.lr)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            loss_sum += summed.detach().double()
            correct += (out.detach().argmax(1) == y).sum()
            seen += len(y)
            if logging:
                step_losses.append(summed.detach() / len(y))
            if step % 25 == 0 or step == self.steps_per_epoch:  # one device sync per 25 steps
                progress.update(step, loss_sum.item() / max(seen, 1), correct.item() / max(seen, 1), self.lr, seen)
                if board is not None and step_losses:
                    done = step - len(step_losses)
                    board.steps(first_step + done, torch.stack(step_losses).double().tolist(), step_lrs)
                    step_losses, step_lrs = [], []
        total_loss, total_correct, total_seen = all_sum([loss_sum.item(), correct.item(), seen], self.device).tolist()
        return {"loss": total_loss / total_seen, "accuracy": total_correct / total_seen}

    def batched_epoch(self, augment: BatchedAugment) -> Iterator[Batch]:
        """The whole training set lives on the device; each epoch is one permutation of it. Every
        rank draws the same permutation and augmentation parameters and keeps its share of each
        global batch, so the samples and their augmentations are those of one process."""
        images = self.train_split.images.to(self.device).unsqueeze(1)
        labels = self.train_split.labels.to(self.device)
        order = torch.randperm(len(labels), generator=self.generator).to(self.device)
        for start in range(0, len(labels), self.recipe.batch_size):
            idx = order[start : start + self.recipe.batch_size]
            params = augment.sample(len(idx), self.device)
            share = self.ranks.shard(len(idx))
            mine = idx[share]
            x = augment.apply(images[mine], {k: v[share] for k, v in params.items()})
            yield x.to(self.config.dtype), labels[mine], len(idx)

    def schedule(self) -> list[float]:
        """The learning rate of every optimizer step of the run (the one-cycle schedule replayed
        on a scratch optimizer: the run's own is untouched)."""
        scratch = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=self.recipe.max_lr / 25)
        replay = torch.optim.lr_scheduler.OneCycleLR(scratch, max_lr=self.recipe.max_lr, epochs=self.recipe.epochs,
                                                     steps_per_epoch=self.steps_per_epoch)
        rates = []
        for _ in range(self.recipe.epochs * self.steps_per_epoch):
            rates.append(float(replay.get_last_lr()[0]))
            scratch.step()
            replay.step()
        return rates

    def augmented_samples(self, count: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``count`` training images as the network sees them, for the run folder's picture
        (its own generator: the run's streams are untouched)."""
        preview = BatchedAugment(self.recipe.augment, generator=torch.Generator().manual_seed(0))
        images = self.train_split.images[:count].unsqueeze(1).to(self.device)
        return preview(images), self.train_split.labels[:count]


def _limited(split: Split, limit: int | None) -> Split:
    return split if limit is None else Split(split.images[:limit], split.labels[:limit])


def run_training(config: TrainConfig, data: MnistData, console: Console | None = None) -> dict[str, Any]:
    """Train, evaluate and write the run folder; returns the final metrics (what ``metrics.json``
    holds). Under torchrun every rank calls it with the same arguments; rank 0 prints and writes
    (give the others a quiet console)."""
    console = console or Console()
    main = config.ranks.main
    if config.eval_limit is not None:
        data = replace(data, val=_limited(data.val, config.eval_limit), test=_limited(data.test, config.eval_limit))
    config.out.mkdir(parents=True, exist_ok=True)
    if main:
        remove_temp_files(config.out)  # left by a crash of an earlier run here
    trainer = Trainer(config, data, console)
    try:
        return _train_and_write(config, data, trainer, console)
    except Interrupted:
        raise
    except KeyboardInterrupt:
        raise Interrupted(trainer.saved_epoch) from None


def _train_and_write(config: TrainConfig, data: MnistData, trainer: Trainer, console: Console) -> dict[str, Any]:
    main = config.ranks.main
    erf_inputs = fields.erf_inputs(data.val, trainer.device, config.dtype) if main else None
    initial_erf = fields.measure(trainer.model, erf_inputs) if erf_inputs is not None else None  # initial weights
    if config.resume:
        trainer.restore()
        console.print(f"resumed {config.out} after epoch {trainer.epoch}")
    board = Board.open(config.out, console, purge_step=trainer.scheduler.last_epoch + 1 if config.resume else None) \
        if main and config.tensorboard else Board()
    try:
        return _epochs_and_files(config, data, trainer, console, board, initial_erf, erf_inputs)
    finally:
        board.close()


def _epochs_and_files(config: TrainConfig, data: MnistData, trainer: Trainer, console: Console, board: Board,
                      initial_erf: torchprobe.ERFResult | None, erf_inputs: torch.Tensor | None) -> dict[str, Any]:
    main = config.ranks.main
    summary_text = ""
    if main:
        probe_input = torch.zeros(1, 1, 28, 28, dtype=config.dtype)
        summary = torchprobe.summary(trainer.model.eval(), input_data=probe_input)  # as evaluated
        summary_text = str(summary)
        console.print(summary)
        assert erf_inputs is not None
        write_start(config.out, summary_text, *trainer.augmented_samples(), model=trainer.model,
                    digit=erf_inputs[0])
    augment = BatchedAugment(trainer.recipe.augment, generator=trainer.generator)
    loader = None
    if config.augment == "torchvision":
        from mnist_demo.loader import torchvision_loader  # torchvision and PIL: only for this pipeline

        loader = torchvision_loader(trainer.train_split, trainer.recipe.augment, trainer.recipe.batch_size,
                                    trainer.generator, config.workers)
    while trainer.epoch < trainer.recipe.epochs:
        epoch = trainer.epoch + 1
        started = time.perf_counter()
        lr = trainer.lr
        batches = trainer.batched_epoch(augment) if loader is None else _to_device(loader, trainer.device)
        with EpochProgress(console, epoch, trainer.recipe.epochs, trainer.steps_per_epoch, config.progress_seconds,
                           config.ranks.world) as progress:
            train = trainer.train_epoch(batches, progress, board)
        seconds = time.perf_counter() - started
        row = _evaluate_epoch(trainer, data, epoch, train, lr, seconds)
        trainer.epoch = epoch
        trainer.history.append(row)
        console.print(
            f"epoch {epoch:>2}  train loss {row.train_loss:.4f} acc {row.train_accuracy:.4f}  "
            f"val loss {row.val_loss:.4f} acc {row.val_accuracy:.4f}  errors {row.val_errors} "
            f"({row.flipped_to_wrong} newly wrong)  {seconds:.1f}s"
        )
        board.epoch(row)
        trainer.save()
        if main:
            write_metrics(config.out, _metrics(config, data, trainer))
    with status(console, f"final evaluation: validation failures ({len(data.val.labels):,} images) and the "
                         f"official test set ({len(data.test.labels):,} images)"):
        failures, test = final_evaluation(trainer.model, data, trainer.device, config.ranks)
    metrics = _metrics(config, data, trainer, test)
    metrics["val_failures"] = failures.to_dict(failures=False)
    metrics["finished"] = True
    if not main:
        return metrics
    assert initial_erf is not None and erf_inputs is not None
    trained_erf = fields.measure(trainer.model, erf_inputs)
    metrics["erf"] = {"images": len(erf_inputs), "layers": [name for name, _ in fields.STAGES],
                      "initial": fields.erf_numbers(initial_erf), "trained": fields.erf_numbers(trained_erf)}
    console.print(failures)
    console.print(f"official test set: loss {test['loss']:.4f}  accuracy {test['accuracy']:.4f}")
    board.scalars({"test/loss": test["loss"], "test/accuracy": test["accuracy"]}, trainer.epoch)
    write_final(config.out, metrics, trainer.history, trainer.model.state_dict(), failures, summary_text,
                lrs=trainer.schedule(), erf=(initial_erf, trained_erf), board=board)
    return metrics


def _evaluate_epoch(trainer: Trainer, data: MnistData, epoch: int, train: Scores, lr: float,
                    seconds: float) -> EpochMetrics:
    """The validation pass after an epoch's training (BatchNorm re-estimated first if the recipe
    says so), closed in the failure watcher, and the epoch's history row."""
    if trainer.recipe.recalibrate_bn:
        with status(trainer.console, f"epoch {epoch}: re-estimating BatchNorm statistics on clean training images"):
            recalibrate_batchnorm(trainer.model, trainer.train_split, trainer.device, ranks=trainer.ranks)
    watcher = trainer.watcher
    with status(trainer.console, f"epoch {epoch}: validating ({len(data.val.labels):,} images)"):
        val = evaluate(trainer.model, data.val, trainer.device, watcher, trainer.ranks)
    closed = watcher.end_epoch()
    flips = len(watcher.flips()) if len(watcher.history) >= 2 else 0
    return EpochMetrics(
        epoch=epoch, train_loss=train["loss"], train_accuracy=train["accuracy"], val_loss=val["loss"],
        val_accuracy=val["accuracy"], val_errors=closed.errors, val_calibration_error=closed.calibration_error,
        flipped_to_wrong=flips, lr=lr, optimizer_steps=trainer.scheduler.last_epoch, epoch_seconds=seconds,
    )


def _to_device(loader: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> Iterator[Batch]:
    for x, y in loader:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True), len(y)


def _metrics(config: TrainConfig, data: MnistData, trainer: Trainer, test: Scores | None = None) -> dict[str, Any]:
    """``metrics.json``: the run's settings and data, the history so far and, at the end, the test scores."""
    return {
        "recipe": trainer.recipe.to_dict(), "seed": config.seed, "augment": config.augment,
        "device": str(trainer.device), "processes": config.ranks.world, "data": data.source,
        "data_sha256": data.sha256, "train_images": len(trainer.train_split.labels),
        "settings": trainer.settings, "history": history_rows(trainer.history), "test": test, "finished": False,
    }
