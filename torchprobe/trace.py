"""One forward pass, observed: module pre/post hooks plus a TorchFunctionMode feed the probes.

The model is never moved or modified. On the meta device its parameters and buffers are swapped
for meta stand-ins with ``torch.func.functional_call``; on a real device buffers are swapped for
clones, so BatchNorm statistics and user counters stay untouched. Every hook, the mode and each
module's own ``training`` flag are restored in ``finally``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from torchprobe.errors import ForwardError, TorchProbeError, UsageError
from torchprobe.probe import ModuleCall, OpCall, Probe

META = "meta"


@dataclass
class TraceOutcome:
    """How the pass ran: the output, the device used and, after a fallback, why."""

    output: Any
    device: str
    fallback_reason: str | None = None


def canonical_op_name(func: Any) -> tuple[str, bool]:
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


_REFLECTABLE = {"add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor"}
_ALIASES = {"truediv": "div", "floordiv": "div", "and": "bitwise_and", "or": "bitwise_or", "xor": "bitwise_xor"}


def module_names(model: nn.Module) -> dict[int, str]:
    """Qualified name of every module (the first name of a module registered twice)."""
    return {id(m): name for name, m in model.named_modules()}


def tensors_in(value: Any) -> list[torch.Tensor]:
    """Tensors inside nested tuples, lists and dicts, in order (pytree is too slow per op)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in tensors_in(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in tensors_in(item)]
    return []


def has_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor) or bool(tensors_in(value))


class _Observer(TorchFunctionMode):
    """Forwards every torch function call that returns tensors to the tracer."""

    def __init__(self, tracer: Tracer) -> None:
        super().__init__()
        self.tracer = tracer

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's protocol
        kwargs = kwargs or {}
        output = meta_batch_norm(func, args, kwargs)
        if output is None:
            try:
                output = func(*args, **kwargs)
            except Exception:
                if not self.tracer.quiet:
                    self.tracer.emit_op(func, args, kwargs, None, failed=True)
                raise
        if not self.tracer.quiet and (has_tensor(output) or func is torch.Tensor.__setitem__):
            self.tracer.emit_op(func, args, kwargs, output)
        return output


def meta_batch_norm(func: Any, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """Eval-mode ``F.batch_norm`` on meta, without ATen's Python decomposition, which costs more
    than the rest of a ResNet's meta pass. Returns None (run the real op) unless the sizes fit."""
    if func is not torch.nn.functional.batch_norm or kwargs.get("training", args[5] if len(args) > 5 else False):
        return None
    x = args[0] if args else kwargs.get("input")
    if not isinstance(x, torch.Tensor) or x.device.type != META or x.dim() < 2:
        return None
    names = ("running_mean", "running_var", "weight", "bias")
    stats = [kwargs.get(n, args[i + 1] if len(args) > i + 1 else None) for i, n in enumerate(names)]
    if any(s is not None and (s.numel() != x.shape[1] or s.device.type != META) for s in stats):
        return None
    return torch.empty_like(x)


class Tracer:
    """Runs a model once and tells each probe what happened, in execution order."""

    def __init__(self, model: nn.Module, probes: Sequence[Probe]) -> None:
        if not isinstance(model, nn.Module):
            raise UsageError(f"expected a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.probes = list(probes)
        self.names = module_names(model)
        self.stack: list[ModuleCall] = []
        self.calls: dict[int, int] = {}
        self.quiet = False  # True while torchprobe's own hook code runs

    # -- events ---------------------------------------------------------------------------------

    def emit_op(self, func: Any, args: tuple, kwargs: dict, output: Any, failed: bool = False) -> None:
        name, inplace = canonical_op_name(func)
        op = OpCall(name, func, tuple(args), dict(kwargs), output, self.stack[-1] if self.stack else None, inplace)
        with self._quiet():
            for probe in self.probes:
                probe.op_failed(op) if failed else probe.function(op)

    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        with self._quiet():
            index = self.calls.get(id(module), 0)
            self.calls[id(module)] = index + 1
            call = ModuleCall(self.names.get(id(module), "?"), module, len(self.stack), index, args, kwargs)
            self.stack.append(call)
            for probe in self.probes:
                probe.module_enter(call)

    def _post_hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        with self._quiet():
            call = self.stack.pop()
            call.output = output
            for probe in self.probes:
                probe.module_exit(call)

    @contextmanager
    def _quiet(self) -> Iterator[None]:
        previous, self.quiet = self.quiet, True
        try:
            yield
        finally:
            self.quiet = previous

    # -- running --------------------------------------------------------------------------------

    def run(self, inputs: Sequence[Any], kwargs: Mapping[str, Any] | None = None, device: str = "auto") -> TraceOutcome:
        """Run the forward once. ``device``: "meta", a real device, or "auto" (meta, then real)."""
        kwargs = dict(kwargs or {})
        if device == "auto" and carries_indices((inputs, kwargs)):
            device = model_device(self.model)  # integer inputs are indices: their values matter
        if device != "auto":
            return TraceOutcome(self._run_on(device, inputs, kwargs), device)
        try:
            return TraceOutcome(self._run_on(META, inputs, kwargs), META)
        except ForwardError as error:
            if not needs_real_values(error.__cause__):
                raise
            real = model_device(self.model)
            return TraceOutcome(self._run_on(real, inputs, kwargs), real, fallback_reason=one_line(error.__cause__))

    def _run_on(self, device: str, inputs: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        inputs = [_to_device(x, device) for x in inputs]
        kwargs = {k: _to_device(v, device) for k, v in kwargs.items()}
        self.stack, self.calls = [], {}
        for probe in self.probes:
            probe.start(inputs)
        state = stand_in_state(self.model, device)
        with ExitStack() as cleanup:
            cleanup.enter_context(preserved_training_flags(self.model))
            self.model.eval()
            for module in {id(m): m for m in self.model.modules()}.values():
                cleanup.callback(module.register_forward_pre_hook(self._pre_hook, with_kwargs=True).remove)
                cleanup.callback(module.register_forward_hook(self._post_hook, with_kwargs=True).remove)
            cleanup.enter_context(torch.no_grad())
            cleanup.enter_context(private_rng(device))
            for probe in self.probes:
                cleanup.enter_context(probe.context())
            cleanup.enter_context(_Observer(self))
            try:
                return torch.func.functional_call(self.model, state, tuple(inputs), kwargs, strict=False)
            except Exception as error:  # the model's own failure: report it with its place
                stack = list(self.stack)
                with self._quiet():
                    for probe in self.probes:
                        probe.failed(error, stack)
                if isinstance(error, TorchProbeError):  # a probe's own verdict (strict mode)
                    raise
                where = stack[-1].name if stack else None
                input_related = is_input_error(error, stack, inputs)
                raise ForwardError(forward_failure_message(error, stack, input_related), where, input_related) from error


def forward_failure_message(error: BaseException, stack: Sequence[ModuleCall], input_related: bool = False) -> str:
    where = f"in {stack[-1].name or '<root>'} ({stack[-1].type})" if stack else "in the model"
    if is_too_small(error):
        return f"the input is too small for this model: the forward failed {where}: {one_line(error)}"
    if input_related:
        return f"the input does not fit the model: the forward failed {where}: {one_line(error)}"
    return f"the forward failed {where}: {one_line(error)}"


_TOO_SMALL = ("output size is too small", "kernel size can't be greater than actual input size", "non-positive output size")


def is_too_small(error: BaseException) -> bool:
    text = str(error).lower()
    return any(marker in text for marker in _TOO_SMALL)


_WRONG_RANK = re.compile(r"expected \d+d (\(unbatched\) or \d+d \(batched\) )?input", re.IGNORECASE)


def is_input_error(error: BaseException, stack: Sequence[ModuleCall], inputs: Sequence[Any]) -> bool:
    """The given input cannot fit: too small, the wrong rank (which an unbatched-capable first conv
    may pass on to a later layer), too few or unexpected arguments for ``forward``, or rejected by
    the first submodule that reads it as given."""
    if is_too_small(error) or _WRONG_RANK.search(str(error)):
        return True
    if isinstance(error, TypeError) and len(stack) == 1 and "argument" in str(error):
        return True
    if not stack or stack[-1].depth == 0:
        return False
    return any(arg is x for arg in tensors_in((stack[-1].args, stack[-1].kwargs)) for x in inputs)


def one_line(error: BaseException | None) -> str:
    if error is None:
        return ""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def carries_indices(value: Any) -> bool:
    return any(not (t.is_floating_point() or t.is_complex()) and t.device.type != META for t in tensors_in(value))


def needs_real_values(error: BaseException | None) -> bool:
    """Meta tensors have shapes but no values; these errors mean the model asked for values."""
    if isinstance(error, NotImplementedError):
        return True
    text = str(error).lower()
    return "meta" in text or "data-dependent" in text or "item()" in text


def model_device(model: nn.Module) -> str:
    for tensor in _tensors_of(model):
        if tensor.device.type != META:
            return str(tensor.device)
    return "cpu"


def _tensors_of(model: nn.Module) -> Iterator[torch.Tensor]:
    yield from model.parameters()
    yield from model.buffers()


def stand_in_state(model: nn.Module, device: str) -> dict[str, torch.Tensor]:
    """Tensors to run with: meta stand-ins on meta, copies on a real device, so that nothing the
    forward writes (running statistics, counters, a clamped weight) reaches the model. The copies
    cost one model's worth of memory on that device, for the length of the pass."""
    state: dict[str, torch.Tensor] = {}
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        state[name] = torch.empty_like(tensor, device=META) if device == META else tensor.detach().to(device, copy=True)
    return state


def private_rng(device: str) -> AbstractContextManager[Any]:
    """The caller's random state comes back as it was, whatever the forward draws."""
    kind = torch.device(device).type if device != META else META
    cuda = [torch.device(device).index or 0] if kind == "cuda" else []
    return torch.random.fork_rng(devices=cuda, device_type="cuda")


@contextmanager
def preserved_training_flags(model: nn.Module) -> Iterator[None]:
    """Restore every module's own ``training`` flag, not only the root's."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag


def _to_device(value: Any, device: str) -> Any:
    """Move tensors to ``device``; a ``torch.Size`` becomes a tensor of that size (random values,
    from a private generator so the caller's RNG state is untouched)."""
    if isinstance(value, torch.Size):
        if device == META:
            return torch.empty(value, device=META)
        generator = torch.Generator(device=device).manual_seed(0)
        return torch.randn(value, generator=generator, device=device)
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value
