"""The web dashboard at ``/``: static pages that read and act through the public API only.

Nothing here queries a read model or sends a command: the pages call the same
``{api_prefix}/training`` endpoints and SSE streams every other client uses, so the
dashboard can never show or do what the API would not.
"""

from .routes import dashboard_handlers

__all__ = ["dashboard_handlers"]
