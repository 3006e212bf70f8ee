"""Shared test code: model zoos, graph generators, process helpers, the in-process CLI runner."""
