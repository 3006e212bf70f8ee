"""Failure analysis for any classifier: every mistake recorded, explained and merged across processes.

:class:`FailureAnalyzer` (``analyzer``) holds the state (``state``: each part declares how processes
combine it), reads the metrics (``metrics``) and reports :class:`Failure` and :class:`EpochRecord`
(``records``); ``hook`` attaches it to a module and ``loop`` runs one evaluation into it.
"""

from torchprobe.failures.analyzer import FailureAnalyzer
from torchprobe.failures.hook import FailureHook
from torchprobe.failures.loop import analyze_failures
from torchprobe.failures.records import EpochRecord, Failure

__all__ = ["EpochRecord", "Failure", "FailureAnalyzer", "FailureHook", "analyze_failures"]
