"""The model to analyse inside a wrapper, or why a model cannot be analysed at all.

``torch.compile`` (``_orig_mod``), ``nn.DataParallel`` and ``DistributedDataParallel``
(``.module``) only change how the model runs, not what it computes: the tracer analyses the model
inside, so names are that model's. TorchScript modules run as compiled graphs that call no Python
hooks, and the stateless API cannot swap their tensors: they are refused with what to pass instead.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from torchprobe.errors import UsageError

_PARALLEL = (nn.DataParallel, nn.parallel.DistributedDataParallel)


def unwrap(model: nn.Module) -> nn.Module:
    """The module under any nesting of compile and data-parallel wrappers; refuses TorchScript."""
    while (inner := _inner_name(model)) is not None:
        model = model.get_submodule(inner)
    _refuse_scripted(model)
    return model


def _inner_name(model: nn.Module) -> str | None:
    """The attribute a wrapper keeps the model it runs in; None for a module that wraps nothing."""
    if _is_compiled(model):
        return "_orig_mod"
    return "module" if isinstance(model, _PARALLEL) else None


def _is_compiled(model: nn.Module) -> bool:
    """An ``OptimizedModule`` exists only once ``torch._dynamo`` is imported (seconds): look its
    class up where it is defined, never import it."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    return eval_frame is not None and isinstance(model, eval_frame.OptimizedModule)


def _refuse_scripted(model: nn.Module) -> None:
    """One ``UsageError`` naming the outermost TorchScript modules (a scripted module's children are
    scripted too)."""
    scripted = [(name, m) for name, m in model.named_modules() if isinstance(m, torch.jit.ScriptModule)]
    outermost = [(name, m) for name, m in scripted if not any(_within(name, other) for other, _ in scripted)]
    if not outermost:
        return
    names = ", ".join(f"{name or 'the model'} ({type(m).__name__})" for name, m in outermost)
    verb = "is a TorchScript module" if len(outermost) == 1 else "are TorchScript modules"
    raise UsageError(
        f"{names} {verb} (torch.jit.script or torch.jit.trace) and TorchScript runs no Python hooks: "
        "pass the original Python module instead, as it was before torch.jit.script or torch.jit.trace"
    )


def _within(name: str, parent: str) -> bool:
    """Whether module ``name`` is a descendant of module ``parent`` ("" is the root)."""
    return name != parent and (parent == "" or name.startswith(f"{parent}."))
