"""Webhooks registered over HTTP (``{prefix}/training/webhooks``)."""

from .controllers import WebhooksController

__all__ = ["WebhooksController"]
