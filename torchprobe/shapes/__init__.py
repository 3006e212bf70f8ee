"""The shape trace: every call's inputs and outputs (``probe``, ``result``) and, when the forward
fails, why (``diagnose``) and the smallest input that fits (``smallest``)."""
