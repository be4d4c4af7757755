"""The OpenAI-compatible HTTP server (`tt serve`): FastAPI routes over an engine that knows nothing
of HTTP."""

from .app import create_app

__all__ = ["create_app"]
