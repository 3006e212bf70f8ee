"""The tracing engine: one forward pass, observed by module hooks and a function mode.

``Tracer`` runs the model (on meta stand-ins, or on copies on a real device) and reports
:class:`ModuleCall` and :class:`OpCall` events to each :class:`Probe`. Write a probe by
subclassing :class:`Probe` and overriding the events it needs.
"""

from torchprobe.engine.events import CallSite, ModuleCall, OpCall
from torchprobe.engine.probe import Probe
from torchprobe.engine.tracer import TraceOutcome, Tracer

__all__ = ["CallSite", "ModuleCall", "OpCall", "Probe", "TraceOutcome", "Tracer"]
