"""``vesper serve``: an OpenAI-compatible HTTP API (FastAPI + uvicorn) over one checkpoint.

``create_app(generator, ServeSettings(...))`` builds the app; ``scheduler.Scheduler`` batches concurrent
requests into shared decode steps in one worker thread. Needs the ``serve`` extra (fastapi, uvicorn).
"""
