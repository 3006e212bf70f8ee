"""torchprobe: look inside any PyTorch model through forward hooks and function modes."""

from torchprobe.api import receptive_field, summary, trace
from torchprobe.failures import EpochRecord, Failure, FailureAnalyzer, FailureHook, analyze_failures
from torchprobe.errors import ForwardError, RFError, ShapeError, TorchProbeError, UsageError
from torchprobe.probe import ModuleCall, OpCall, Probe, register_probe
from torchprobe.rf.measure import measure_receptive_field
from torchprobe.rf.result import LayerRF, RFResult
from torchprobe.rf.rules import RuleContext, register_rf_rule
from torchprobe.trace import Tracer

__all__ = [
    "ForwardError", "LayerRF", "ModuleCall", "OpCall", "Probe", "RFError", "RFResult", "RuleContext",
    "TorchProbeError", "Tracer", "UsageError", "measure_receptive_field", "receptive_field",
    "register_probe", "register_rf_rule", "ShapeError", "summary", "trace",
    "EpochRecord", "Failure", "FailureAnalyzer", "FailureHook", "analyze_failures",
]
__version__ = "0.1.0"
