"""Receptive-field rules: how each torch function moves the span maps of its input.

A rule is written once per function (``conv2d`` covers ``nn.Conv2d`` and ``F.conv2d``) and gets a
:class:`RuleContext`. It returns the output's :class:`~torchprobe.rf.state.TensorRF` (or a list,
one per output tensor), None when the output does not depend on the input's values, or an
:class:`~torchprobe.rf.state.UnknownRF`. This package is the plugin API: register rules for your
own ops or modules with :func:`register_rf_rule` (or the ``torchprobe.rf_rules`` entry-point group)
and build them with :func:`merge`, :func:`spatial`, :func:`reduce_dims` and :func:`per_axis`.
Ops that ATen tags ``pointwise`` need no rule.

The rules by family (``coverage()`` gives the same table from the registry; a test holds them equal):

FAMILIES
"""

from torchprobe.rf.rules import elementwise, joins, layout, reductions, resample, sliding
from torchprobe.rf.rules.core import (
    RULE_ENTRY_POINT_GROUP,
    RULES,
    Rule,
    RuleContext,
    RuleRegistry,
    RuleResult,
    merge,
    per_axis,
    pointwise,
    reduce_dims,
    register_rf_rule,
    spatial,
)

FAMILIES = (sliding, resample, elementwise, joins, reductions, layout)


def coverage() -> dict[str, list[str]]:
    """The ops each built-in family has rules for, by family (module) name."""
    names = {family.__name__: family.__name__.rsplit(".", 1)[1] for family in FAMILIES}
    table: dict[str, list[str]] = {name: [] for name in names.values()}
    for op, rule in RULES.ops.items():
        if rule.__module__ in names:
            table[names[rule.__module__]].append(op)
    return {family: sorted(ops) for family, ops in table.items()}


__all__ = [
    "FAMILIES", "RULES", "RULE_ENTRY_POINT_GROUP", "Rule", "RuleContext", "RuleRegistry", "RuleResult", "coverage",
    "merge", "per_axis", "pointwise", "reduce_dims", "register_rf_rule", "spatial",
]
