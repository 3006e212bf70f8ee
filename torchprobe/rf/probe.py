"""The receptive-field probe: follows span maps from the input through every op of one pass."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import torch
from torch.utils.weak import WeakTensorKeyDictionary

from torchprobe.engine.events import CallSite, ModuleCall, OpCall, shows_its_ops
from torchprobe.engine.probe import Probe
from torchprobe.engine.torch_utils import one_line, tensors_in
from torchprobe.errors import RFError, UsageError
from torchprobe.notes import Note, NoteCode
from torchprobe.rf.layouts import LayoutArg, input_layout
from torchprobe.rf.memo import call_key
from torchprobe.rf.rules import RULES, Rule, RuleContext, RuleResult, elementwise
from torchprobe.rf.rules.core import pointwise
from torchprobe.rf.rules.writes import box_of, into
from torchprobe.rf.state import RFState, TensorRF, UnknownRF


@dataclass(frozen=True)
class LayerRecord(CallSite):
    """One row: a module call, or a functional op that changed the RF inside a composite module."""

    output_shape: tuple[int, ...] | None
    state: RFState | None
    leaf: bool = True  # False for a module with submodules: its row repeats what they did


class RFProbe(Probe):
    """Receptive field of every module call with respect to one input (``input_index``)."""

    def __init__(self, input_index: int = 0, strict: bool = False, layout: LayoutArg = None) -> None:
        self.input_index = input_index
        self.strict = strict
        self.layout = layout
        self.axis_names: tuple[str, ...] = ()
        self.spatial_size: tuple[int, ...] = ()
        self.states: WeakTensorKeyDictionary = WeakTensorKeyDictionary()
        self.records: list[LayerRecord | None] = []  # None: a module call that has not returned
        self._slots: dict[int, int] = {}
        self.notes: list[Note] = []
        self.input_shape: tuple[int, ...] = ()
        self._ruled_depth: int | None = None  # inside a module that has its own rule
        self._op_calls: dict[str, int] = {}
        self._memo: dict[Hashable, tuple[RuleResult, list[RFState | None], list[str]]] = {}  # see rf.memo

    def start(self, inputs: Sequence[Any]) -> None:
        self.states = WeakTensorKeyDictionary()
        self.records, self.notes, self._op_calls, self._ruled_depth, self._slots = [], [], {}, None, {}
        self._memo = {}
        if self.input_index >= len(inputs) or not isinstance(inputs[self.input_index], torch.Tensor):
            raise UsageError(f"input {self.input_index} is not a tensor: nothing to compute a receptive field of")
        x = inputs[self.input_index]
        shapes = [tuple(t.shape[1:]) if isinstance(t, torch.Tensor) else () for t in inputs]
        layout = input_layout(self.layout, shapes, self.input_index)
        if not layout.spatial:
            raise UsageError(f"input of shape {shapes[self.input_index]} with layout {layout.letters!r} has no "
                             "spatial axis: give one with a layout (e.g. LC for tokens, T for a signal, CHW)")
        self.input_shape = shapes[self.input_index]
        self.axis_names = layout.names
        self.spatial_size = tuple(self.input_shape[d] for d in layout.spatial)
        self.states[x] = TensorRF.of_input(tuple(x.shape), [1 + d for d in layout.spatial])

    # -- events ---------------------------------------------------------------------------------

    def module_enter(self, call: ModuleCall) -> None:
        if self._ruled_depth is not None:
            return
        self._slots[id(call)] = len(self.records)  # containers come before their children
        self.records.append(None)
        if RULES.for_module(call.module) is not None:
            self._ruled_depth = call.depth

    def module_exit(self, call: ModuleCall) -> None:
        if self._ruled_depth == call.depth:
            self._ruled_depth = None
            rule = RULES.for_module(call.module)
            context = RuleContext(call.type, call.args, call.kwargs, call.output, self._state_of, call.module)
            self._assign(call.output, self._apply(rule, context, call.type, call.name))
        if self._ruled_depth is not None:
            return
        outputs = tensors_in(call.output)
        self.records[self._slots.pop(id(call))] = LayerRecord(
            call.name, call.type, call.depth, call.call, "module", tuple(outputs[0].shape) if outputs else None,
            self._primary_state(outputs), call.leaf,
        )

    def function(self, op: OpCall) -> None:
        if self._ruled_depth is not None:
            return
        inputs = op.inputs
        in_states = [self.states.get(t) for t in inputs]
        if all(s is None for s in in_states):
            return  # the output does not depend on the input we follow
        where = op.owner.name if op.owner else ""
        rule = RULES.for_op(op.name)
        handed = _handed_on(rule, inputs, in_states, op.output)
        if handed is not None:
            self.states[op.output] = handed  # already in fewest terms: it is its operand's
            result: RuleResult = handed
        else:
            key = None
            if op.output is not None and not op.inplace:
                by_id = {id(t): s for t, s in zip(inputs, in_states)}  # the states looked up above
                key = call_key(op.name, rule, op.args, op.kwargs, op.output, lambda t: by_id.get(id(t)))
            known = self._memo.get(key) if key is not None else None
            if known is not None:  # the same call, by value, earlier in this pass
                result, states, notes = known
                self._note_all(notes, op.name, where)
                for tensor, state in zip(op.outputs, states):
                    if state is not None:
                        self.states[tensor] = state
            else:
                context = RuleContext(op.name, op.args, op.kwargs, op.output, self._state_of)
                result = self._apply(rule, context, op.name, where)
                self._assign(op.args[0] if op.output is None else op.output, result)  # __setitem__: None
                if key is not None and _all_known(result):
                    self._memo[key] = result, [self.states.get(t) for t in op.outputs], context.notes
        if op.inplace or op.name == "setitem":
            self._write_back(op.args[0], where)
        self._maybe_record_op(op, in_states, result)

    # -- helpers --------------------------------------------------------------------------------

    def _write_back(self, part: Any, where: str) -> None:
        """An in-place op on a view wrote into the tensor it views (a canvas filled through
        ``canvas[..., :h, :w].copy_(x)``): that tensor's units in the view now hold its state."""
        whole = part._base if isinstance(part, torch.Tensor) else None
        if whole is None:
            return
        notes: list[str] = []
        state = into(whole, self.states.get(whole), part, self.states.get(part), box_of(part, whole), notes)
        for note in notes:
            self._note(Note("approximation", "write into a view", where, f"{note} (in {where or '<root>'})"))
        self._assign(whole, state)

    def _state_of(self, tensor: torch.Tensor) -> RFState | None:
        return self.states.get(tensor)

    def _apply(self, rule: Rule | None, context: RuleContext, op: str, where: str) -> RuleResult:
        if rule is None:
            return self._unknown(UnknownRF(op, where), "no_rule")
        try:
            result = rule(context)
        except Exception as error:  # a rule that cannot read these arguments must not end the analysis
            return self._unknown(UnknownRF(op, where, one_line(error)), "rule_failed")
        self._note_all(context.notes, op, where)
        if isinstance(result, UnknownRF) and not result.where and result not in map(context.state_of, context.tensors):
            return self._unknown(UnknownRF(result.op, where), "unsupported")  # made by the rule, not handed on
        return result

    def _note_all(self, notes: list[str], op: str, where: str) -> None:
        """The approximations a rule made, noted where the op ran."""
        for note in notes:
            self._note(Note("approximation", op, where, f"{note} (in {where or '<root>'})"))

    def _unknown(self, unknown: UnknownRF, code: NoteCode) -> UnknownRF:
        message = unknown.reason
        if code != "rule_failed":
            message += f"; register one with @torchprobe.register_rf_rule({unknown.op!r})"
        if self.strict:
            raise RFError(message)
        self._note(Note(code, unknown.op, unknown.where, message))
        return unknown

    def _note(self, note: Note) -> None:
        if note not in self.notes:
            self.notes.append(note)

    def _assign(self, output: Any, result: RuleResult) -> None:
        """Give each output tensor its state (its support in fewest terms)."""
        outputs = tensors_in(output)
        results = list(result) if isinstance(result, (list, tuple)) else [result] * len(outputs)
        for tensor, state in zip(outputs, results):
            if state is None:
                self.states.pop(tensor, None)
            else:
                self.states[tensor] = state.fused() if isinstance(state, TensorRF) else state

    def _primary_state(self, outputs: list[torch.Tensor]) -> RFState | None:
        return next((self.states[t] for t in outputs if t in self.states), None)

    def _maybe_record_op(self, op: OpCall, in_states: list[RFState | None], result: RuleResult) -> None:
        """A functional op gets its own row when a composite module calls it directly and it
        changes the RF (or merges branches); a leaf module's own ops are summed up by its row."""
        owner = op.owner
        if not shows_its_ops(owner):
            return
        known = [s for s in in_states if s is not None]
        state = result[0] if isinstance(result, (list, tuple)) else cast(RFState | None, result)
        if len(known) < 2 and known and known[0] == state:
            return
        site = op.site
        site = replace(site, call=self._op_calls.get(site.name, 0))
        self._op_calls[site.name] = site.call + 1
        outputs = op.outputs or tensors_in(op.args[:1])
        shape = tuple(outputs[0].shape) if outputs else None
        self.records.append(LayerRecord(**site.site_dict(), output_shape=shape, state=state))

    def result(self) -> tuple[list[LayerRecord], list[Note]]:
        """Rows in call order (modules that never returned, after a failure, are left out)."""
        return [r for r in self.records if r is not None], self.notes


def _all_known(result: RuleResult) -> bool:
    """No unknown state in a rule's result (an unknown names where it arose: never reused)."""
    states = result if isinstance(result, (list, tuple)) else [result]
    return not any(isinstance(s, UnknownRF) for s in states)


def _handed_on(rule: Rule | None, inputs: list[torch.Tensor], in_states: list[RFState | None],
               output: Any) -> RFState | None:
    """The state a per-unit op (relu, dropout, eval BatchNorm) passes on unchanged: one operand
    follows the input, and the output has its shape; None when the rule must run."""
    if rule is not pointwise and rule is not elementwise.elementwise or not isinstance(output, torch.Tensor):
        return None
    followed = [(t, s) for t, s in zip(inputs, in_states) if s is not None]
    if len(followed) != 1 or followed[0][0].shape != output.shape:
        return None
    return followed[0][1]
