"""Durations as people read them, next to the seconds machines read."""

from __future__ import annotations

import math

_MINUTE = 60
_HOUR = 3600
_DAY = 86_400


def describe_duration(seconds: float | None) -> str | None:
    """``about 3 hours 5 minutes``; None stays None (unknown is not zero)."""
    if seconds is None or math.isnan(seconds):
        return None
    if math.isinf(seconds):
        return "not within any known schedule"
    seconds = max(seconds, 0.0)
    if seconds < _MINUTE:
        return "less than a minute"
    minutes = round(seconds / _MINUTE)
    if minutes < 60:
        return f"about {_plural(minutes, 'minute')}"
    if seconds < _DAY:
        hours, rest = divmod(minutes, 60)
        return f"about {_plural(hours, 'hour')}" + (f" {_plural(rest, 'minute')}" if rest else "")
    days, rest_s = divmod(seconds, _DAY)
    hours = round(rest_s / _HOUR)
    return f"about {_plural(int(days), 'day')}" + (f" {_plural(hours, 'hour')}" if hours else "")


def _plural(count: int, unit: str) -> str:
    return f"{count} {unit}" if count == 1 else f"{count} {unit}s"


def describe_wait(seconds: float | None) -> str:
    """The ``estimated_wait_time`` sentence: never empty, ``unknown`` when unknown."""
    text = describe_duration(seconds)
    return "unknown" if text is None else text
