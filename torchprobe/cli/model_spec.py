"""``model.py:Net``, ``pkg.mod:Net``, ``torchvision.models:resnet50`` -> an ``nn.Module``."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from torchprobe.engine.inputs import MAX_ELEMENTS
from torchprobe.engine.torch_utils import one_line
from torchprobe.errors import ModelCodeError, UsageError

SPEC_HELP = "expected FILE.py:NAME or package.module:NAME (NAME a module class or a factory)"


def load_model(spec: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Import what ``spec`` names and build the model, with ``kwargs`` for its constructor."""
    source, sep, attribute = spec.rpartition(":")
    if not sep or not source or not attribute:
        raise UsageError(f"bad model spec {spec!r}: {SPEC_HELP}")
    module = _import_file(source) if _looks_like_file(source) else _import_module(source)
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise UsageError(f"{source} has no attribute {attribute!r}{_candidates(module)}")
        target = getattr(target, part)
    return build(target, attribute, kwargs or {})


def build(target: Any, name: str, kwargs: dict[str, Any]) -> nn.Module:
    """Instantiate a class or call a factory; a ready module is taken as it is."""
    if isinstance(target, nn.Module):
        if kwargs:
            raise UsageError(f"{name} is already a module instance: it takes no --kwargs")
        return target
    if not callable(target):
        raise UsageError(f"{name} is a {type(target).__name__}, not an nn.Module class or factory")
    try:
        inspect.signature(target).bind(**kwargs)
    except TypeError as error:
        raise UsageError(f"{name}() cannot be called with --kwargs {json.dumps(kwargs)}: {error}") from error
    except ValueError:  # no signature to check (a builtin): let the call decide
        pass
    try:
        model = target(**kwargs)
    except Exception as error:
        raise UsageError(f"constructing {name} failed: {one_line(error)}") from error
    if not isinstance(model, nn.Module):
        raise UsageError(f"{name} returned a {type(model).__name__}, not an nn.Module")
    return model


def parse_kwargs(text: str | None) -> dict[str, Any]:
    """``--kwargs '{"num_classes": 10}'`` -> a dict."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"--kwargs is not valid JSON ({error.msg} at character {error.pos}): {text[:80]!r}") from error
    except RecursionError as error:
        raise UsageError("--kwargs is nested too deeply to read") from error
    if not isinstance(value, dict):
        raise UsageError(f"--kwargs must be a JSON object like '{{\"num_classes\": 10}}', got {text!r}")
    return value


def parse_input(text: str) -> tuple[int, ...]:
    """``1,28,28`` (no batch dimension) -> ``(1, 28, 28)``."""
    parts = [p.strip() for p in text.replace("x", ",").split(",")]
    if not parts or not all(p.isascii() and p.isdigit() for p in parts) or any(int(p) == 0 for p in parts):
        raise UsageError(
            f"bad --input {text!r}: expected positive integers C,H,W without the batch dimension, e.g. 1,28,28"
        )
    size = tuple(int(p) for p in parts)
    if any(s >= MAX_ELEMENTS for s in size):
        raise UsageError(f"bad --input {text!r}: a dimension is too large")
    return size


def _looks_like_file(source: str) -> bool:
    return source.endswith(".py") or "/" in source or "\\" in source


def _import_file(source: str) -> ModuleType:
    path = Path(source)
    if not path.is_file():
        raise UsageError(f"no such file: {source}")
    name = f"_torchprobe_user_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"cannot import {source}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.resolve().parent))  # the file's siblings import as they would for it
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SystemExit as error:  # the user's code ended the process: its error, not the usage's
        sys.modules.pop(name, None)
        raise ModelCodeError(f"importing {source} called sys.exit({error.code!r})") from error
    except Exception as error:
        sys.modules.pop(name, None)
        raise UsageError(f"importing {source} failed: {one_line(error)}") from error
    finally:
        sys.path.remove(str(path.resolve().parent))
    return module


def _import_module(source: str) -> ModuleType:
    try:
        return importlib.import_module(source)
    except ModuleNotFoundError as error:
        if error.name and source.startswith(error.name):
            raise UsageError(f"no module named {source!r} (for a file, give its path: path/to/file.py:NAME)") from error
        raise UsageError(f"importing {source} failed: {one_line(error)}") from error
    except Exception as error:
        raise UsageError(f"importing {source} failed: {one_line(error)}") from error


def _candidates(module: ModuleType) -> str:
    names = sorted(
        n for n, v in vars(module).items()
        if isinstance(v, type) and issubclass(v, nn.Module) and v.__module__ == module.__name__
    )
    return f" (modules defined there: {', '.join(names)})" if names else ""


def load_weights(model: nn.Module, path: Path) -> None:
    """``--weights``: a state dict (or a checkpoint holding one under "model" or "state_dict")."""
    state = _load_tensors(path, "--weights")
    if isinstance(state, dict):
        for key in ("model", "state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"--weights {path} holds a {type(state).__name__}, not a state dict of tensors")
    try:
        model.load_state_dict(state)
    except Exception as error:
        raise UsageError(f"--weights {path} does not fit the model: {one_line(error)}") from error


def load_batch(path: Path, count: int) -> torch.Tensor:
    """``--data``: real inputs, batch dim first: a tensor saved with ``torch.save`` (or a dict
    holding one under "images", "inputs" or "x"), or a ``.npy`` array (no pickles); the first
    ``count`` samples, as float32."""
    if path.suffix == ".npy":
        try:
            value: Any = torch.from_numpy(np.load(path, allow_pickle=False))
        except FileNotFoundError as error:
            raise UsageError(f"--data {path}: no such file") from error
        except Exception as error:  # a damaged or foreign file: one line
            raise UsageError(f"--data {path} is not a .npy array numpy reads: {one_line(error)}") from error
    else:
        value = _load_tensors(path, "--data")
        if isinstance(value, dict):
            value = next((value[k] for k in ("images", "inputs", "x") if isinstance(value.get(k), torch.Tensor)), value)
    numeric = isinstance(value, torch.Tensor) and (value.is_floating_point() or value.dtype == torch.uint8)
    if not numeric or value.dim() < 2:
        raise UsageError(f"--data {path} holds {type(value).__name__}, not a batch of images (a tensor N, C, ...)")
    return value[:count].float()


def _load_tensors(path: Path, option: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as error:
        raise UsageError(f"{option} {path}: no such file") from error
    except Exception as error:  # an unreadable file or a refused pickle: one line, whatever torch raises
        raise UsageError(f"{option} {path} is not a file torch.load reads with weights_only=True: "
                         f"{one_line(error)}") from error
