"""Receptive field: per-op geometry (rules), span maps (axis, state), the probe and the check."""
