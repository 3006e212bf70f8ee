"""torchprobe: look inside any PyTorch model through forward hooks and function modes.

The entry points (``receptive_field``, ``summary``, ``trace``, ``measure_receptive_field``,
``effective_receptive_field``, ``analyze_failures``) return result objects that print as tables,
render in notebooks and turn into JSON with ``to_dict()``. Rule plugins: :mod:`torchprobe.rf.rules`; probes:
:mod:`torchprobe.engine`.
"""

from torchprobe.api import effective_receptive_field, receptive_field, summary, trace
from torchprobe.engine import CallSite, ModuleCall, OpCall, Probe, Tracer
from torchprobe.errors import ForwardError, RFError, TorchProbeError, UsageError
from torchprobe.failures import EpochRecord, Failure, FailureAnalyzer, FailureHook, analyze_failures
from torchprobe.notes import Note
from torchprobe.render import plots
from torchprobe.rf.effective import ERFResult, LayerERF
from torchprobe.rf.measure import MeasuredRF, measure_receptive_field
from torchprobe.rf.result import AxisStep, LayerRF, RFResult, RFStep
from torchprobe.rf.rules import RuleContext, register_rf_rule
from torchprobe.shapes.diagnose import Diagnosis
from torchprobe.shapes.result import CallRow, ShapeError, ShapeTrace
from torchprobe.shapes.tensors import TensorDesc
from torchprobe.stats.result import ModelSummary, SummaryLine
from torchprobe.version import __version__

__all__ = [
    "AxisStep", "CallRow", "CallSite", "Diagnosis", "ERFResult", "EpochRecord", "Failure", "FailureAnalyzer",
    "FailureHook", "ForwardError", "LayerERF", "LayerRF", "MeasuredRF", "ModelSummary", "ModuleCall", "Note", "OpCall",
    "Probe", "RFError", "RFResult", "RFStep", "RuleContext", "ShapeError", "ShapeTrace", "SummaryLine", "TensorDesc",
    "TorchProbeError", "Tracer", "UsageError", "__version__", "analyze_failures", "effective_receptive_field",
    "measure_receptive_field", "plots", "receptive_field", "register_rf_rule", "summary", "trace",
]
