"""``napari-diffmed serve``: the task functions on this machine's GPU for napari widgets, scripts and the
CLI elsewhere (see docs/remote.md)."""

from __future__ import annotations

import argparse

from ..device import DEVICE_CHOICES

CONFIG_DEFAULTS = dict(concurrency=1, max_request_mb=1024, max_voxels=1 << 26, max_queue=16, result_ttl=600.0)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="run the tasks for remote clients (napari widgets, remote.Client, --server)",
        description="Serve every task over HTTP (FastAPI on uvicorn; pip install 'napari-diffmed[server]'): "
                    "jobs wait in a first-in first-out queue and run on this machine's device; progress streams "
                    "as Server-Sent Events. Binding beyond 127.0.0.1 needs --token-file. See docs/remote.md.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="where every job runs")
    p.add_argument("--token-file", default=None, help="file whose first line is the bearer token clients must send "
                                                      "(at least 16 characters; readable by its owner only)")
    p.add_argument("--concurrency", type=int, default=CONFIG_DEFAULTS["concurrency"],
                   help="jobs running at once (default 1: one GPU job at a time)")
    p.add_argument("--max-queue", type=int, default=CONFIG_DEFAULTS["max_queue"],
                   help="jobs waiting at most; more are refused with 429")
    p.add_argument("--max-request-mb", type=int, default=CONFIG_DEFAULTS["max_request_mb"],
                   help="largest upload in MiB (413 beyond)")
    p.add_argument("--max-voxels", type=int, default=CONFIG_DEFAULTS["max_voxels"],
                   help="largest array in voxels (413 beyond); arrays have at most 3 dimensions")
    p.add_argument("--result-ttl", type=float, default=CONFIG_DEFAULTS["result_ttl"],
                   help="seconds a finished job's result is kept for its client")
    p.add_argument("--preload", nargs="*", default=(), metavar="MODEL",
                   help="model names to load before answering (others load on first use; all stay loaded)")
    p.add_argument("--ssl-certfile", default=None, help="TLS certificate (PEM) for https")
    p.add_argument("--ssl-keyfile", default=None, help="TLS private key (PEM) for https")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..server.config import ServerConfig, read_token

    token = read_token(args.token_file) if args.token_file else None
    config = ServerConfig(host=args.host, port=args.port, device=args.device, token=token,
                          concurrency=args.concurrency, max_queue=args.max_queue,
                          max_request_bytes=args.max_request_mb << 20, max_voxels=args.max_voxels,
                          result_ttl=args.result_ttl)  # refuses a non-loopback bind without a token
    if (args.ssl_certfile is None) != (args.ssl_keyfile is None):
        raise ValueError("give both --ssl-certfile and --ssl-keyfile for https, or neither")
    try:
        from ..server.app import create_app, serve
    except ModuleNotFoundError as err:
        raise ValueError(f"serve needs the server extra ({err.name} is missing): "
                         "pip install 'napari-diffmed[server]'") from None
    app = create_app(config, preload=tuple(args.preload))
    scheme = "https" if args.ssl_certfile else "http"
    print(f"napari-diffmed serve: {scheme}://{args.host}:{args.port} on {app.state.queue.server_info['device']}, "
          f"{'token required' if token else 'no token (this machine only)'}", flush=True)
    serve(app, config, log_level=args.log_level, ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile)
    return 0
