"""Why a forward failed, in words: the module, what it expected, what it got, who made it, the fix."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import nn

from torchprobe.engine.events import ModuleCall, OpCall
from torchprobe.engine.faults import expected_input_size, is_too_small
from torchprobe.engine.torch_utils import one_line, tensors_in
from torchprobe.shapes.smallest import AxisSizes, InputSizes
from torchprobe.shapes.tensors import TensorDesc, desc_text, describe

Producer = Callable[[Any], str | None]
DiagnosisKind = Literal[
    "too_small", "linear_in_features", "conv_rank", "conv_in_channels", "norm_size", "embedding_dtype",
    "embedding_range", "mha_embed_dim", "matmul", "view", "cat", "op", "assertion", "input_size", "other",
]
INPUT_KINDS = ("too_small", "conv_rank", "input_size")  # the input given is at fault, not the model
Sizes = Callable[[], InputSizes | None]


@dataclass(frozen=True)
class Diagnosis:
    """A failure explained. ``kind`` is machine-readable (``linear_in_features``, ``too_small``...)."""

    kind: DiagnosisKind
    module: str  # qualified name of the failing module ("" for the root)
    module_type: str
    expected: str
    received: str
    producer: str | None
    fix: str
    error: str

    def lines(self) -> list[str]:
        where = f"{self.module or '(model)'} ({self.module_type})"
        lines = [f"{where} failed: {self.error}", f"  expected: {self.expected}", f"  received: {self.received}"]
        if self.producer:
            lines.append(f"  produced by: {self.producer}")
        lines.append(f"  fix: {self.fix}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "module": self.module, "module_type": self.module_type, "expected": self.expected,
            "received": self.received, "producer": self.producer, "fix": self.fix, "error": self.error,
        }


def diagnose(
    error: BaseException,
    stack: Sequence[ModuleCall],
    failed_op: OpCall | None,
    producer_of: Producer,
    input_sizes: Sizes | None = None,
    unbatched: ModuleCall | None = None,
) -> Diagnosis:
    """Explain ``error``: too small, module-specific checks, a failed assertion, then the failing
    functional op (an input-size problem when the op depends on the size and other sizes pass),
    then a generic account with the operands' shapes. ``input_sizes`` searches the sizes the
    model takes (None: the input was given as data, its size is not ours to change).
    ``unbatched``: a conv that read the model input as unbatched, the cause whatever failed."""
    call = stack[-1] if stack else None
    name = call.name if call else ""
    kind_name = call.type if call else "model"
    text = one_line(error)
    if is_too_small(error):
        return _too_small(call, producer_of, input_sizes() if input_sizes else None, text)
    if unbatched is not None:
        return replace(_conv_rank(unbatched, producer_of), error=text)
    if call is not None:
        for check in _MODULE_CHECKS:
            found = check(call, producer_of, text)
            if found is not None:
                return found
    if isinstance(error, AssertionError):
        return _assertion(error, stack, input_sizes, text)
    if failed_op is not None:
        found = _op(failed_op, name, kind_name, producer_of, text)
        sizes = input_sizes() if input_sizes and _depends_on_size(failed_op) else None
        return (_input_size(found, sizes) if sizes else None) or found
    return Diagnosis("other", name, kind_name, "a forward that runs", "an exception", None,
                     "see the error; run with --debug for the traceback", text)


def _op(op: OpCall, name: str, kind_name: str, producer_of: Producer, text: str) -> Diagnosis:
    for op_check in _OP_CHECKS:
        found = op_check(op, name, kind_name, producer_of, text)
        if found is not None:
            return found
    operands = ", ".join(desc_text(describe(t)) for t in tensors_in((op.args, op.kwargs)))
    return Diagnosis(
        "op", name, kind_name, f"operands {op.name} accepts", f"{op.name}({operands})",
        _producers(producer_of, tensors_in((op.args, op.kwargs))),
        f"check the shapes passed to {op.name} in {name or 'the forward'}", text,
    )


# -- the input's size ------------------------------------------------------------------------------


def _too_small(call: ModuleCall | None, producer_of: Producer, sizes: InputSizes | None, text: str) -> Diagnosis:
    """The least size no layer runs out of; "at least" only when every larger size tried passed
    (a U-Net takes multiples of 8, not every size from 8)."""
    name, kind_name = (call.name, call.type) if call else ("", "model")
    x = _first_tensor(call.args) if call else None
    received = f"a feature map of {_spatial(x)} at this layer, too small for its kernel"
    least = sizes.smallest if sizes else None
    axes = sizes.admissible(least) if sizes and least else None
    if sizes and least and axes and not all(a.every_size_from(n) for a, n in zip(axes, least)):
        fix = _sizes_fix(sizes, axes)
        if fix:
            return Diagnosis("too_small", name, kind_name, _axes_text(sizes, axes), received, producer_of(x), fix, text)
    need = "x".join(str(s) for s in least) if least else "a larger input"
    return Diagnosis(
        "too_small", name, kind_name, f"an input of at least {need} (per spatial axis)", received, producer_of(x),
        f"use an input of at least {need}, or reduce the downsampling before {name or 'this layer'}", text,
    )


def _depends_on_size(op: OpCall) -> bool:
    """Ops whose failure the input's size can cause: joining branches (cat, a broadcasting add)
    and a reshape that keeps the batch dim and splits the rest (a window partition)."""
    if op.name in ("cat", "concat", "concatenate", "stack") or not _broadcastable(tensors_in((op.args, op.kwargs))):
        return True
    if op.name not in ("view", "reshape") or not isinstance(op.args[0], torch.Tensor):
        return False
    x, requested = op.args[0], _requested(op)
    return len(requested) > x.dim() and requested[:1] == [x.shape[0]]


def _broadcastable(tensors: Sequence[torch.Tensor]) -> bool:
    try:
        torch.broadcast_shapes(*(t.shape for t in tensors))
    except RuntimeError:
        return False
    return True


def _input_size(found: Diagnosis, sizes: InputSizes) -> Diagnosis | None:
    """``found`` told as the input-size problem it is, when the given size fails and others pass."""
    axes = sizes.admissible(sizes.given)
    fix = _sizes_fix(sizes, axes) if axes else None
    if axes is None or fix is None:
        return None
    cause = f"{found.expected}; " if found.kind == "view" else ""  # the split that failed, say
    return replace(found, kind="input_size", expected=cause + _axes_text(sizes, axes),
                   received=f"{found.received} from an input of {sizes.shape_text(sizes.given)}", fix=fix)


def _axes_text(sizes: InputSizes, axes: Sequence[AxisSizes]) -> str:
    """What ``expected`` says: the sizes that work, for every axis at once when they agree."""
    texts = [a.text() for a in axes]
    if len(set(texts)) == 1:
        return f"an input size that works{', per spatial axis' if len(texts) > 1 else ''}: {texts[0]}"
    return "an input size that works: " + "; ".join(f"dim {d}: {t}" for d, t in zip(sizes.dims, texts))


def _sizes_fix(sizes: InputSizes, axes: Sequence[AxisSizes]) -> str | None:
    """The nearest sizes below and above the given one that a forward passes at (each tried)."""
    near = [a.around(n) for a, n in zip(axes, sizes.given)]
    options = dict.fromkeys(tuple(n[i] if len(n) > i else n[-1] for n in near) for i in (0, 1))
    works = [sizes.shape_text(o) for o in options if sizes.passes(o)]
    return f"use an input of {' or '.join(works)} (the nearest sizes that work)" if works else None


# -- assertions ------------------------------------------------------------------------------------


def _assertion(error: AssertionError, stack: Sequence[ModuleCall], input_sizes: Sizes | None,
               text: str) -> Diagnosis:
    """Quote the assertion (its source line when it has no message); an image size it names
    becomes the input to give, otherwise the sizes that pass, if any."""
    call = stack[-1] if stack else None
    quote = str(error) or _source_line(error)
    x = _first_tensor(stack[0].args) if stack else None
    want = expected_input_size(error)
    fix = f'give an input that satisfies "{quote}"'
    if x is not None and want and x.dim() > 2:
        spatial = want if len(want) == x.dim() - 2 else want[:1] * (x.dim() - 2)
        shape = list(x.shape[1:2]) + list(spatial)
        fix = f"use an input of {'x'.join(map(str, shape))} (--input {','.join(map(str, shape))})"
    elif input_sizes and (sizes := input_sizes()) and (axes := sizes.admissible(sizes.given)):
        fix = _sizes_fix(sizes, axes) or fix
    return Diagnosis(
        "assertion", call.name if call else "", call.type if call else "model",
        f'the model\'s assertion to hold: "{quote}"', f"model input {_shape(x)}" if x is not None else "the input",
        None, fix, text,
    )


def _source_line(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    return (frames[-1].line or "assert") if frames else "assert"


# -- module checks ---------------------------------------------------------------------------------


def _first_tensor(args: Sequence[Any]) -> torch.Tensor | None:
    found = tensors_in(list(args))
    return found[0] if found else None


def _spatial(x: torch.Tensor | None) -> str:
    return "?" if x is None else "x".join(str(s) for s in x.shape[2:]) or str(list(x.shape))


def _shape(x: torch.Tensor) -> str:
    return str(TensorDesc(tuple(x.shape), x.dtype))


def _producers(producer_of: Producer, tensors: Sequence[torch.Tensor]) -> str | None:
    named = [f"{_shape(t)} from {producer_of(t)}" for t in tensors if producer_of(t)]
    return "; ".join(named) or None


def _linear(call: ModuleCall, producer_of: Producer, text: str) -> Diagnosis | None:
    m, x = call.module, _first_tensor(call.args)
    if not isinstance(m, nn.Linear) or x is None or x.shape[-1] == m.in_features:
        return None
    got = x.shape[-1]
    return Diagnosis(
        "linear_in_features", call.name, call.type, f"in_features={m.in_features} (last dim of the input)",
        f"{_shape(x)}: {got} features", producer_of(x),
        f"make {call.name} nn.Linear({got}, {m.out_features}), or change what feeds it to give {m.in_features} features"
        " (for a flatten: check the input size and the conv/pool stack before it)",
        text,
    )


def _conv(call: ModuleCall, producer_of: Producer, text: str) -> Diagnosis | None:
    m, x = call.module, _first_tensor(call.args)
    if not isinstance(m, nn.modules.conv._ConvNd) or x is None:
        return None
    n = len(m.kernel_size)
    if x.dim() not in (n + 1, n + 2) or _lacks_an_axis(m, x):
        return replace(_conv_rank(call, producer_of), error=text)
    channels = x.shape[-n - 1]
    if channels == m.in_channels:
        return None
    return Diagnosis(
        "conv_in_channels", call.name, call.type, f"in_channels={m.in_channels} (dim {x.dim() - n - 1} of the input)",
        f"{_shape(x)}: {channels} channels", producer_of(x),
        f"make {call.name} {call.type}({channels}, {m.out_channels}, ...), or give it {m.in_channels}-channel input",
        text,
    )


def _conv_rank(call: ModuleCall, producer_of: Producer) -> Diagnosis:
    x = _first_tensor(call.args)
    assert x is not None and isinstance(call.module, nn.modules.conv._ConvNd)
    n, producer = len(call.module.kernel_size), producer_of(x)
    return Diagnosis(
        "conv_rank", call.name, call.type,
        f"a {n + 2}-D input (N, C, {', '.join('DHW'[3 - n:])}) or {n + 1}-D unbatched",
        f"{_shape(x)} ({x.dim()}-D)", producer, _rank_fix(call, x, n, producer), "",
    )


def _lacks_an_axis(m: nn.modules.conv._ConvNd, x: torch.Tensor) -> bool:
    """Read unbatched, the channels are wrong; read batched, dim 1 holds them: an axis is
    missing (a video model given C,H,W), not a channel count to change."""
    return x.dim() == len(m.kernel_size) + 1 and x.shape[0] != m.in_channels and x.shape[1] == m.in_channels


def _rank_fix(call: ModuleCall, x: torch.Tensor, n: int, producer: str | None) -> str:
    """Too few dims: add them (from the input: the per-sample size the conv takes, the missing
    axis after the channels); one too many straight from the input, with a leading 1: the size
    given included the batch dim (torchprobe adds its own); else reshape, or a conv of that rank
    where PyTorch has one."""
    from_input = (producer or "").startswith("model input")
    if x.dim() == n + 1 and from_input:
        axes = "C," + ",".join("THW"[3 - n:])
        fill = 16 if n == 3 else max(x.shape[2:], default=16)  # frames for a video, else a square image
        given = ",".join(str(s) for s in (x.shape[1], *[fill] * (n - x.dim() + 2), *x.shape[2:]))
        return f"the input lacks an axis: give a {n + 1}-D per-sample input {axes} such as {given} (--input {given})"
    if x.dim() < n + 1:
        return f"give {call.name} a {n + 2}-D tensor: add the missing dims (e.g. x.unsqueeze(1) for a channel dim)"
    if x.dim() == n + 3 and x.shape[1] == 1 and from_input:
        size = tuple(x.shape[2:])
        return (f"the input size includes a batch dim, and torchprobe adds its own: give {size} "
                f"(--input {','.join(str(s) for s in size)})")
    wider = x.dim() - 2
    return f"{call.name} is a {call.type}; reshape the input" + (f" or use nn.Conv{wider}d" if wider <= 3 else "")


def _norm(call: ModuleCall, producer_of: Producer, text: str) -> Diagnosis | None:
    m, x = call.module, _first_tensor(call.args)
    if x is None:
        return None
    got: object
    if isinstance(m, nn.modules.batchnorm._NormBase) and x.dim() >= 2 and x.shape[1] != m.num_features:
        expected, got, fix_arg = f"num_features={m.num_features} (dim 1)", x.shape[1], f"{x.shape[1]}"
    elif isinstance(m, nn.GroupNorm) and x.dim() >= 2 and x.shape[1] != m.num_channels:
        expected, got, fix_arg = f"num_channels={m.num_channels} (dim 1)", x.shape[1], f"{m.num_groups}, {x.shape[1]}"
    elif isinstance(m, nn.LayerNorm) and tuple(x.shape[-len(m.normalized_shape):]) != tuple(m.normalized_shape):
        tail = tuple(x.shape[-len(m.normalized_shape):])
        expected = f"normalized_shape={list(m.normalized_shape)} (the last dims)"
        got, fix_arg = list(tail), f"{list(tail)}"
    else:
        return None
    return Diagnosis(
        "norm_size", call.name, call.type, expected, f"{_shape(x)}: {got}", producer_of(x),
        f"make {call.name} {call.type}({fix_arg}), or give it the expected size", text,
    )


def _embedding(call: ModuleCall, producer_of: Producer, text: str) -> Diagnosis | None:
    m, x = call.module, _first_tensor(call.args)
    if not isinstance(m, nn.Embedding) or x is None:
        return None
    if x.is_floating_point():
        producer = producer_of(x)
        fix = (f"give the input as token ids: dtypes=[\"long\"] (--dtype long; values below {m.num_embeddings}), "
               "or input_data with real ids" if (producer or "").startswith("model input") else
               f"pass integer token ids to {call.name} (x.long())")
        return Diagnosis("embedding_dtype", call.name, call.type, "integer indices (torch.long)", _shape(x), producer,
                         fix, text)
    if x.device.type == "meta" or x.numel() == 0:
        return None
    low, high = int(x.min()), int(x.max())
    if 0 <= low and high < m.num_embeddings:
        return None
    return Diagnosis(
        "embedding_range", call.name, call.type,
        f"indices in [0, {m.num_embeddings - 1}] (num_embeddings={m.num_embeddings})",
        f"indices in [{low}, {high}]", producer_of(x),
        f"make {call.name} nn.Embedding({max(high + 1, m.num_embeddings)}, {m.embedding_dim}), or fix the token ids",
        text,
    )


def _attention(call: ModuleCall, producer_of: Producer, text: str) -> Diagnosis | None:
    m = call.module
    if not isinstance(m, nn.MultiheadAttention):
        return None
    operands = tensors_in(list(call.args[:3])) or tensors_in([call.kwargs.get(k) for k in ("query", "key", "value")])
    sizes = {"query": m.embed_dim, "key": m.kdim, "value": m.vdim}
    for (role, want), x in zip(sizes.items(), operands):
        if x.shape[-1] != want:
            return Diagnosis(
                "mha_embed_dim", call.name, call.type, f"{role} with last dim {want} (embed_dim/kdim/vdim)",
                f"{role} {_shape(x)}", producer_of(x),
                f"make {call.name} nn.MultiheadAttention({x.shape[-1]}, num_heads) or project the {role} to {want}",
                text,
            )
    return None


_MODULE_CHECKS = (_linear, _conv, _norm, _embedding, _attention)


# -- functional op checks --------------------------------------------------------------------------


def _matmul(op: OpCall, name: str, kind: str, producer_of: Producer, text: str) -> Diagnosis | None:
    if op.name not in ("matmul", "mm", "bmm", "linear", "addmm", "baddbmm", "einsum"):
        return None
    a, b = (tensors_in((op.args, op.kwargs)) + [None, None])[:2]
    if a is None or b is None:
        return None
    inner_b = b.shape[-1] if op.name == "linear" else (b.shape[-2] if b.dim() >= 2 else b.shape[0])
    operand = "weight [out, in]" if op.name == "linear" else "second operand"
    return Diagnosis(
        "matmul", name, kind, f"the inner dims to agree: last dim of {_shape(a)} equals the in-dim of the {operand}",
        f"{op.name}({_shape(a)}, {_shape(b)}): {a.shape[-1]} vs {inner_b}", _producers(producer_of, [a, b]),
        f"reshape or project one operand so that {a.shape[-1]} and {inner_b} agree (in {name or 'the forward'})",
        text,
    )


def _requested(op: OpCall) -> list[Any]:
    """The shape a view/reshape asks for, given as one sequence or as separate sizes."""
    one_sequence = len(op.args) == 2 and isinstance(op.args[1], (tuple, list, torch.Size))
    return list(op.args[1]) if one_sequence else list(op.args[1:])


def _bad_split(x: torch.Tensor, requested: Sequence[Any]) -> tuple[int, int, int] | None:
    """A reshape that keeps the leading dims and splits each later one into factors (a window
    partition, ``[1, 64, 50, 50] -> [1, 64, 7, 7, 7, 7]``): the first dim the factors miss, its
    size and the window (the last factor). None for any other reshape."""
    if len(requested) <= x.dim() or not all(isinstance(r, int) and r > 0 for r in requested):
        return None
    keep = next((i for i, (a, b) in enumerate(zip(x.shape, requested)) if a != b), x.dim())
    rest = list(requested[keep:])
    for dim in range(keep, x.dim()):
        product, factors = 1, []
        while rest and product < x.shape[dim]:
            factors.append(rest.pop(0))
            product *= factors[-1]
        if product != x.shape[dim]:
            return (dim, x.shape[dim], factors[-1]) if len(factors) > 1 else None
    return None


def _view(op: OpCall, name: str, kind: str, producer_of: Producer, text: str) -> Diagnosis | None:
    if op.name not in ("view", "reshape"):
        return None
    x, requested = op.args[0], _requested(op)
    split = _bad_split(x, requested)
    if split is not None:
        dim, size, window = split
        return Diagnosis(
            "view", name, kind, f"dim {dim} ({size}) a multiple of {window}, to split it into windows of {window}",
            f"{op.name}({_shape(x)} -> {requested})", producer_of(x),
            f"give an input size that makes dim {dim} here a multiple of {window}, or pad before {name or 'the split'}",
            text,
        )
    return Diagnosis(
        "view", name, kind, f"a shape with {x.numel()} elements in all, like the input",
        f"{op.name}({_shape(x)} -> {requested})", producer_of(x),
        f"keep the batch dim and let the rest follow: x.flatten(1) or x.view(x.size(0), -1) gives "
        f"[{x.shape[0]}, {x.numel() // max(x.shape[0], 1)}]; size the next layer to {x.numel() // max(x.shape[0], 1)}",
        text,
    )


def _cat(op: OpCall, name: str, kind: str, producer_of: Producer, text: str) -> Diagnosis | None:
    if op.name not in ("cat", "concat", "concatenate", "stack"):
        return None
    parts = tensors_in(op.args[0] if op.args else op.kwargs.get("tensors"))
    dim = op.args[1] if len(op.args) > 1 else op.kwargs.get("dim", 0)
    shapes = ", ".join(_shape(t) for t in parts)
    what = "the same shape" if op.name == "stack" else f"the same size in every dim except dim {dim}"
    return Diagnosis(
        "cat", name, kind, f"tensors with {what}", f"{op.name}([{shapes}], dim={dim})", _producers(producer_of, parts),
        "crop, pad or interpolate one branch so the sizes agree (e.g. padding=k//2 in the convs, or "
        "F.interpolate(x, size=skip.shape[2:]))",
        text,
    )


_OP_CHECKS = (_matmul, _view, _cat)
