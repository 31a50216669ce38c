"""`pride serve`: an OpenAI-compatible server for a model directory (see app.py, engine.py)."""

from pride.serve.app import create_app, serve

__all__ = ["create_app", "serve"]
