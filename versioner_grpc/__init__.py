"""Versioner gRPC: deployment tracking server."""

__version__ = "0.1.0"
