"""`minicpm serve`: an OpenAI-compatible HTTP API over any backend (FastAPI, run by uvicorn).

- app.py: create_app(backends, ...), the routes (/v1/models, /v1/chat/completions,
  /v1/completions, /health), the API key and one request's life from body to answer;
- requests.py: the request bodies and their sampling settings;
- slots.py: N loaded backends as N slots, a bounded FIFO queue, generations in worker threads;
- wire.py: OpenAI's response and stream-chunk shapes; errors.py: OpenAI's error shape.
The command line (tui/commands/serve.py) loads the backends and runs uvicorn.
"""

from runtime.server.app import create_app

__all__ = ["create_app"]
