"""Vesper Studio: a local web app over the engine (runs, training, benchmarks, chat, data, models).

FastAPI + Jinja2 templates, plotly.js served from the installed ``plotly`` package, a little JS of our own.
Safe by default: 127.0.0.1, a random access token, CSRF header on every state change, paths kept inside
the workspace, jobs started as ``python -m vesper_cli ...`` argument lists (never a shell) with a cap.
"""

from vesper_cli.studio.app import create_app

__all__ = ["create_app"]
