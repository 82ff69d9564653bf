"""The ``swift-trainer`` command line: parses arguments and prints; ``service`` does the work."""

from .entry import main

__all__ = ["main"]
