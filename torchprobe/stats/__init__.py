"""The model summary: shapes, parameters, FLOPs and receptive field per row (``probe``, ``result``)."""
