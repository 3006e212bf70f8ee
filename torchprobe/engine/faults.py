"""What kind of failure a forward's exception is: the input's fault, a need for real values, or
the model's own. The tracer uses it to choose exit codes, fallbacks and messages."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from torchprobe.engine.events import ModuleCall
from torchprobe.engine.torch_utils import one_line, tensors_in

_TOO_SMALL = (
    "output size is too small", "kernel size can't be greater than actual input size", "non-positive output size",
)
_WRONG_RANK = re.compile(r"expected \d+d (\(unbatched\) or \d+d \(batched\) )?input", re.IGNORECASE)
# An assertion naming the image size a model was built for: torchvision's ViT ("Wrong image
# height! Expected 224 but got 200!"), timm's PatchEmbed ("Input image size (200*200) doesn't
# match model (224*224).", "Input height (200) doesn't match model (224).").
_SIZE_WORDS = re.compile(r"\b(image|input|height|width|size)\b", re.IGNORECASE)
_EXPECTED_SIZE = (
    re.compile(r"match(?:es)? (?:the )?model \((\d+)(?:\s*[*x,]\s*(\d+))?\)", re.IGNORECASE),
    re.compile(r"expected (\d+)(?:\s*[*x]\s*(\d+))?", re.IGNORECASE),
)


def forward_failure_message(error: BaseException, stack: Sequence[ModuleCall], input_related: bool = False) -> str:
    where = f"in {stack[-1].name or '<root>'} ({stack[-1].type})" if stack else "in the model"
    if is_too_small(error):
        return f"the input is too small for this model: the forward failed {where}: {one_line(error)}"
    if input_related:
        return f"the input does not fit the model: the forward failed {where}: {one_line(error)}"
    return f"the forward failed {where}: {one_line(error)}"


def is_too_small(error: BaseException) -> bool:
    text = str(error).lower()
    return any(marker in text for marker in _TOO_SMALL)


def expected_input_size(error: BaseException) -> tuple[int, ...] | None:
    """The spatial size an assertion about the image size names (one number: every axis)."""
    text = str(error)
    if not isinstance(error, AssertionError) or not _SIZE_WORDS.search(text):
        return None
    for pattern in _EXPECTED_SIZE:
        found = pattern.search(text)
        if found:
            return tuple(int(n) for n in found.groups() if n is not None)
    return None


def is_input_error(error: BaseException, stack: Sequence[ModuleCall], inputs: Sequence[Any]) -> bool:
    """The given input cannot fit: too small, the wrong rank (which an unbatched-capable first conv
    may pass on to a later layer), not the image size the model asserts, too few or unexpected
    arguments for ``forward``, or rejected by the first submodule that reads it as given."""
    if is_too_small(error) or _WRONG_RANK.search(str(error)) or expected_input_size(error):
        return True
    if isinstance(error, TypeError) and len(stack) == 1 and "argument" in str(error):
        return True
    if not stack or stack[-1].depth == 0:
        return False
    return any(arg is x for arg in tensors_in((stack[-1].args, stack[-1].kwargs)) for x in inputs)


def needs_real_values(error: BaseException | None) -> bool:
    """Meta tensors have shapes but no values; these errors mean the model asked for values."""
    if isinstance(error, NotImplementedError):
        return True
    text = str(error).lower()
    return "meta" in text or "data-dependent" in text or "item()" in text
