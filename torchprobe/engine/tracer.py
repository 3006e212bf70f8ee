"""One forward pass, observed: module pre/post hooks plus a TorchFunctionMode feed the probes.

The model is never moved or modified. On the meta device its parameters and buffers are swapped
for meta stand-ins with ``torch.func.functional_call``; on a real device buffers are swapped for
clones, so BatchNorm statistics and user counters stay untouched. Every hook, the mode and each
module's own ``training`` flag are restored in ``finally``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from torchprobe.engine.events import ModuleCall, OpCall
from torchprobe.engine.faults import forward_failure_message, is_input_error, needs_real_values
from torchprobe.engine.inputs import check_fits, to_device
from torchprobe.engine.meta_ops import meta_output
from torchprobe.engine.probe import Probe
from torchprobe.engine.torch_utils import (
    META,
    canonical_op_name,
    carries_indices,
    has_tensor,
    model_device,
    one_line,
    preserved_tensor_attributes,
    preserved_training_flags,
    private_rng,
)
from torchprobe.engine.wrappers import unwrap
from torchprobe.errors import ForwardError, TorchProbeError, UsageError

Mode = Literal["eval", "train"]


@dataclass
class TraceOutcome:
    """How the pass ran: the output, the device used and, after a fallback, why."""

    output: Any
    device: str
    fallback_reason: str | None = None


class _Observer(TorchFunctionMode):
    """Forwards every torch function call that returns tensors to the tracer."""

    def __init__(self, tracer: Tracer) -> None:
        super().__init__()
        self.tracer = tracer

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's protocol
        kwargs = kwargs or {}
        tracer = self.tracer
        output = meta_output(func, args, kwargs)
        if tracer.quiet:  # torchprobe's own calls
            return func(*args, **kwargs) if output is None else output
        name = canonical_op_name(func)
        if output is None:
            try:
                with tracer.around(name[0]):
                    output = func(*args, **kwargs)
            except Exception:
                tracer.emit_op(func, name, args, kwargs, None, failed=True)
                raise
        if has_tensor(output) or func is torch.Tensor.__setitem__:
            tracer.emit_op(func, name, args, kwargs, output)
        return output


class Tracer:
    """Runs a model once and tells each probe what happened, in execution order."""

    def __init__(self, model: nn.Module, probes: Sequence[Probe]) -> None:
        if not isinstance(model, nn.Module):
            raise UsageError(f"expected a torch.nn.Module, got {type(model).__name__}")
        self.model = unwrap(model)  # the model inside torch.compile or data parallelism
        self.probes = list(probes)
        named = list(self.model.named_modules())  # each module once, under its first name; walked once
        self.names = {id(m): name for name, m in named}
        self.modules = [m for _, m in named]
        self.stack: list[ModuleCall] = []
        self.calls: dict[int, int] = {}
        self.quiet = False  # True while torchprobe's own hook code runs

    # -- events ---------------------------------------------------------------------------------

    def emit_op(self, func: Any, name: tuple[str, bool], args: tuple, kwargs: dict, output: Any,
                failed: bool = False) -> None:
        """``name``: the function's canonical name and whether it works in place."""
        op = OpCall(name[0], func, tuple(args), dict(kwargs), output, self.stack[-1] if self.stack else None, name[1])
        self._notify("op_failed" if failed else "function", op)

    def around(self, name: str) -> AbstractContextManager[Any]:
        """What the model's function ``name`` runs in: the contexts its probes ask for."""
        contexts = [c for probe in self.probes if (c := probe.enters(name)) is not None]
        if not contexts:
            return nullcontext()
        if len(contexts) == 1:
            return contexts[0]
        stack = ExitStack()
        for context in contexts:
            stack.enter_context(context)
        return stack

    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        index = self.calls.get(id(module), 0)
        self.calls[id(module)] = index + 1
        call = ModuleCall(self.names.get(id(module), "?"), module, len(self.stack), index, args, kwargs)
        self.stack.append(call)
        self._notify("module_enter", call)

    def _post_hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        call = self.stack.pop()
        call.output = output
        self._notify("module_exit", call)

    def _notify(self, event: str, *details: Any) -> None:
        """Tell every probe, with ``quiet`` set so that the torch calls the probes make are not
        reported as the model's (a flag, not a context manager: this runs several times per op)."""
        previous, self.quiet = self.quiet, True
        try:
            for probe in self.probes:
                getattr(probe, event)(*details)
        finally:
            self.quiet = previous

    # -- running --------------------------------------------------------------------------------

    def run(self, inputs: Sequence[Any], kwargs: Mapping[str, Any] | None = None, device: str = "auto",
            mode: Mode = "eval") -> TraceOutcome:
        """Run the forward once. ``device``: "meta", a real device, or "auto" (meta, then real).
        ``mode="train"``: every module in training mode, with autograd recording the graph."""
        if mode not in ("eval", "train"):
            raise UsageError(f"bad mode {mode!r}: expected eval or train")
        kwargs = dict(kwargs or {})
        if device == "auto" and carries_indices((inputs, kwargs)):
            device = model_device(self.model)  # integer inputs are indices: their values matter
        if device != "auto":
            return TraceOutcome(self._run_on(device, inputs, kwargs, mode), device)
        try:
            return TraceOutcome(self._run_on(META, inputs, kwargs, mode), META)
        except ForwardError as error:
            if not needs_real_values(error.__cause__):
                raise
            real = model_device(self.model)
            check_fits(self.model, inputs, kwargs, real, one_line(error.__cause__))
            return TraceOutcome(self._run_on(real, inputs, kwargs, mode), real,
                                fallback_reason=one_line(error.__cause__))

    def _run_on(self, device: str, inputs: Sequence[Any], kwargs: dict[str, Any], mode: Mode) -> Any:
        inputs = [to_device(x, device) for x in inputs]
        kwargs = {k: to_device(v, device) for k, v in kwargs.items()}
        self.stack, self.calls = [], {}
        for probe in self.probes:
            probe.start(inputs)
        state = stand_in_state(self.model, device, trainable=mode == "train")
        with ExitStack() as cleanup:
            cleanup.enter_context(preserved_training_flags(self.modules))
            cleanup.enter_context(preserved_tensor_attributes(self.modules))
            self.model.train(mode == "train")
            handles = [h for m in self.modules for h in (m.register_forward_pre_hook(self._pre_hook, with_kwargs=True),
                                                         m.register_forward_hook(self._post_hook, with_kwargs=True))]
            cleanup.callback(lambda: [h.remove() for h in handles])
            cleanup.enter_context(torch.set_grad_enabled(mode == "train"))
            cleanup.enter_context(private_rng(device))
            for probe in self.probes:
                cleanup.enter_context(probe.context())
            cleanup.enter_context(_Observer(self))
            try:
                return torch.func.functional_call(self.model, state, tuple(inputs), kwargs, strict=False)
            except (Exception, SystemExit) as error:  # the model's own failure (sys.exit too): report it with its place
                stack = list(self.stack)
                self._notify("failed", error, stack)
                if isinstance(error, TorchProbeError):  # a probe's own verdict (strict mode)
                    raise
                where = stack[-1].name if stack else None
                input_related = is_input_error(error, stack, inputs)
                message = forward_failure_message(error, stack, input_related)
                raise ForwardError(message, where, input_related) from error


def stand_in_state(model: nn.Module, device: str, trainable: bool = False) -> dict[str, torch.Tensor]:
    """Tensors to run with: meta stand-ins on meta, copies on a real device, so that nothing the
    forward writes (running statistics, counters, a clamped weight) reaches the model. The copies
    cost one model's worth of memory on that device, for the length of the pass. ``trainable``:
    stand-ins of parameters that require grad do too, so autograd records what a training step would."""
    state: dict[str, torch.Tensor] = {}
    for name, parameter in model.named_parameters():
        state[name] = _stand_in(parameter, device).requires_grad_(trainable and parameter.requires_grad)
    for name, buffer in model.named_buffers():
        state[name] = _stand_in(buffer, device)
    return state


def _stand_in(tensor: torch.Tensor, device: str) -> torch.Tensor:
    return torch.empty_like(tensor, device=META) if device == META else tensor.detach().to(device, copy=True)
