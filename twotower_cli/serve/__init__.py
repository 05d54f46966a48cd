"""Online serving (`twotower serve`): the user tower runs per request, the faiss index returns
the top-k (docs/serving.md).

    encoding.py  raw request values -> feature tensors (UserEncoder, UserQuery, RequestError)
    bundle.py    one run loaded for serving, swapped on SIGHUP (Bundle, ServeDirs, ServeState)
    recommend.py top-k per request, exclusions by evaluate's rule (recommend, similar_items)
    batching.py  dynamic batching of single requests in a worker thread (MicroBatcher)
    bodies.py    request bodies and their 4xx messages
    limits.py    API key, body size, read deadlines, request-head limits
    http.py      the FastAPI routes and the uvicorn server (create_app, run_server)

Their settings (conf/serve/default.yaml) are core.settings.ServeSettings, checked as every
group is (pipeline/config.py).
"""

from twotower_cli.core.settings import ServeSettings
from twotower_cli.serve.batching import MicroBatcher
from twotower_cli.serve.bundle import Bundle, ServeDirs, ServeState, load_bundle
from twotower_cli.serve.encoding import RequestError, UserEncoder, UserQuery, csr
from twotower_cli.serve.http import create_app, listen, run_server, uvicorn_config
from twotower_cli.serve.recommend import recommend, similar_items

__all__ = [
    "Bundle",
    "MicroBatcher",
    "RequestError",
    "ServeDirs",
    "ServeSettings",
    "ServeState",
    "UserEncoder",
    "UserQuery",
    "create_app",
    "csr",
    "listen",
    "load_bundle",
    "recommend",
    "run_server",
    "similar_items",
    "uvicorn_config",
]
