"""The ``prunescope`` command (also ``python -m analysis``): the engine's steps, headless, for batch runs and CI."""

from analysis.cli.commands import build_parser, main

__all__ = ["build_parser", "main"]
