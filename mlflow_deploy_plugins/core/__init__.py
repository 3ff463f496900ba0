"""Contracts shared by every layer: numpy and the standard library only, so the serving runtime,
the flavor, the targets and monitoring can all import them (see docs/architecture.md)."""
