"""Small torch helpers the engine, the probes and the failure analyzer share."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from functools import cache
from typing import Any

import torch
from torch import nn

META = "meta"


def canonical_op_name(func: Callable[..., Any]) -> tuple[str, bool]:
    """``Tensor.__iadd__`` -> ("add", True); ``F.max_pool2d`` -> ("max_pool2d", False)."""
    name = getattr(func, "__name__", None) or type(func).__name__
    if name == "__get__":  # a property such as ``Tensor.T``: name it after the property
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    inplace = False
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
        if name.startswith("i") and name[1:] in _REFLECTABLE:
            name, inplace = name[1:], True
        elif name.startswith("r") and name[1:] in _REFLECTABLE:
            name = name[1:]
    elif name.endswith("_") and not name.startswith("_"):
        name, inplace = name[:-1], True
    return _ALIASES.get(name, name), inplace


@cache
def is_pointwise_aten(name: str) -> bool:
    """PyTorch tags elementwise ATen ops ``pointwise``: each output element reads the same element
    of its operands (it keeps every unit's RF as is, and hides no matmul)."""
    packet = getattr(torch.ops.aten, name, None)
    if packet is None or not hasattr(packet, "overloads"):
        return False
    return any(torch.Tag.pointwise in getattr(packet, o).tags for o in packet.overloads())


_REFLECTABLE = {"add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor"}
_ALIASES = {"truediv": "div", "floordiv": "div", "and": "bitwise_and", "or": "bitwise_or", "xor": "bitwise_xor"}


def tensors_in(value: Any) -> list[torch.Tensor]:
    """Tensors inside nested tuples, lists and dicts, in order (pytree is too slow per op; so is a
    call per leaf: this runs several times per op)."""
    if isinstance(value, torch.Tensor):
        return [value]
    found: list[torch.Tensor] = []
    _collect(value, found)
    return found


_PLAIN = frozenset({int, float, bool, str, type(None), slice, torch.dtype, torch.device})  # never hold a tensor


def _collect(value: Any, found: list[torch.Tensor]) -> None:
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (tuple, list)) else ()
    for item in items:
        if item.__class__ in _PLAIN:  # most arguments: a set lookup, not a Tensor isinstance check
            continue
        if isinstance(item, torch.Tensor):
            found.append(item)
        elif isinstance(item, (tuple, list, dict)):
            _collect(item, found)


def argument(args: Sequence[Any], kwargs: Mapping[str, Any], index: int, name: str, default: Any = None) -> Any:
    """A function's argument by keyword or position, as its signature would bind it."""
    if name in kwargs:
        return kwargs[name]
    return args[index] if index < len(args) else default


def has_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor) or bool(tensors_in(value))


def one_line(error: BaseException | None) -> str:
    """``TypeName: message`` on one line, for error messages that must stay one line."""
    if error is None:
        return ""
    if isinstance(error, SystemExit):
        return f"SystemExit: the code called sys.exit({error.code!r})"
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def model_device(model: nn.Module) -> str:
    """Where the model's first real parameter or buffer lives ("cpu" when it has none)."""
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.device.type != META:
            return str(tensor.device)
    return "cpu"


def carries_indices(value: Any) -> bool:
    """Integer tensors with values: indices whose values matter, so meta cannot stand in."""
    return any(not (t.is_floating_point() or t.is_complex()) and t.device.type != META for t in tensors_in(value))


def private_rng(device: str) -> AbstractContextManager[Any]:
    """The caller's random state comes back as it was, whatever the forward draws."""
    kind = torch.device(device).type if device != META else META
    cuda = [torch.device(device).index or 0] if kind == "cuda" else []
    return torch.random.fork_rng(devices=cuda, device_type="cuda")


@contextmanager
def preserved_training_flags(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Restore every module's own ``training`` flag, not only the root's (``modules``: all of the
    model's, ``model.modules()``)."""
    flags = [(m, m.training) for m in modules]
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag


def describe_value(value: Any) -> str:
    """``a float32 tensor of shape (4, 10)``, ``a list``: what an argument was, for error messages."""
    if isinstance(value, torch.Tensor):
        return f"a {dtype_name(value)} tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


@contextmanager
def preserved_tensor_attributes(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Every module's plain tensor attributes (not parameters or buffers) come back as they were:
    old-style ``weight_norm`` and ``spectral_norm`` rebind ``weight`` in a forward pre-hook, a
    forward may keep its last output; on meta those would stay meta tensors."""
    before = [(m, {k: v for k, v in vars(m).items() if isinstance(v, torch.Tensor)}) for m in modules]
    try:
        yield
    finally:
        for module, tensors in before:
            attributes = vars(module)
            for key in [k for k, v in attributes.items() if isinstance(v, torch.Tensor) and k not in tensors]:
                del attributes[key]
            attributes.update(tensors)


def available_bytes(device: str) -> int | None:
    """Memory free for new tensors on ``device``: the kernel's MemAvailable for the CPU, the
    driver's free memory for CUDA; None when unknown (nothing is refused then)."""
    kind = torch.device(device).type
    if kind == "cuda":
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    if kind != "cpu":
        return None
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
