"""GPU-hours per owner, label or day (``GET {prefix}/training/usage``)."""

from .controllers import UsageController

__all__ = ["UsageController"]
