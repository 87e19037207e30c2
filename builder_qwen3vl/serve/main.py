"""``python -m builder_qwen3vl serve BUNDLE``: start the og worker process, which loads the bundle once, and serve
it with uvicorn (an application: it configures logging for its process and the worker's)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..ground.logs import configure_logging
from .settings import ServeSettings

log = logging.getLogger(__name__)


def settings_from(args: argparse.Namespace) -> ServeSettings:
    return ServeSettings(host=args.host, port=args.port, api_key=args.api_key, model_name=args.model_name,
                         max_concurrent=args.max_concurrent, max_queue=args.max_queue, cache_slots=args.cache_slots,
                         max_body_mb=args.max_body_mb, allow_remote_images=args.allow_remote_images, threads=args.threads)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT / SIGTERM (uvicorn's own handling); 0 after a clean stop."""
    import uvicorn

    from .app import create_app

    configure_logging(args.verbose)
    settings = settings_from(args)
    app = create_app(Path(args.bundle), settings, args.verbose)  # waits for the og worker to load the model
    worker = app.state.worker
    log.info("serving %s at http://%s:%d/v1 (%d concurrent, queue %d, prompt cache %d slots of %.1f MB KV cache each)",
             Path(args.bundle).name, settings.host, settings.port, settings.max_concurrent, settings.max_queue,
             settings.cache_slots, worker.info["kv_bytes"] / 1e6)
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="info" if args.verbose else "warning",
                    access_log=args.verbose)
    finally:
        worker.stop()  # also when uvicorn stops before its lifespan (a port in use)
    return 0
