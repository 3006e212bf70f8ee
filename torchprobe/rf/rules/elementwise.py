"""Per-unit ops: activations, normalisations, dropout, casts, value-free ops and broadcasts."""

from __future__ import annotations

from torchprobe.rf.rules.core import RuleContext, RuleResult, merge, pointwise, register_rf_rule

POINTWISE = (
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
    "batch_norm", "instance_norm", "group_norm", "layer_norm", "rms_norm", "local_response_norm",
    "hardswish", "prelu", "rrelu", "channel_shuffle", "native_channel_shuffle", "threshold",
    "clone", "contiguous", "detach", "to", "float", "double", "half", "bfloat16", "type", "type_as",
    "cpu", "cuda", "data", "real", "requires_grad", "alias", "relu", "silu", "mish", "gelu", "elu",
    "selu", "celu", "glu_", "softsign", "tanhshrink", "hardshrink", "softshrink", "logsigmoid", "softplus",
)


@register_rf_rule(*POINTWISE)
def elementwise(ctx: RuleContext) -> RuleResult:
    """Ops that ATen does not tag ``pointwise`` but that act per unit all the same."""
    return pointwise(ctx)


@register_rf_rule(
    "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like", "randint_like",
    "new_zeros", "new_ones", "new_empty", "new_full", "new_tensor", "size", "dim", "numel",
)
def value_free(ctx: RuleContext) -> RuleResult:
    """The output depends on the input's shape, not on its values."""
    return None


@register_rf_rule("expand", "expand_as", "broadcast_to")
def expand(ctx: RuleContext) -> RuleResult:
    return merge([ctx.input], [ctx.input_state], ctx.out_shape)
