"""`sdexp dashboard SWEEP`: optuna-dashboard on the sweep's own study storage, on the loopback address.

The storage comes from sweep.json (``sdexp.sweep.layout``): an RDB URL (SQLite, PostgreSQL), which
optuna-dashboard opens itself, or ``journal:PATH``, opened as Optuna's JournalStorage object.
The app is served by wsgiref (what ``optuna_dashboard.run_server`` uses too) through a server object
this module owns, so a test (or a caller) can start it on port 0, read the URL and shut it down.
"""

from __future__ import annotations

import argparse
import errno
import signal
import socket
import threading
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from sdexp.cli import arg, subcommand
from sdexp.errors import UserError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


class _QuietHandler(WSGIRequestHandler):
    """No line on stderr per request (the dashboard polls every few seconds)."""

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        pass


class _IPv6Server(WSGIServer):
    address_family = socket.AF_INET6


def dashboard_app(sweep_dir: str | Path):
    """optuna-dashboard's WSGI app over the sweep's study storage."""
    from optuna_dashboard import wsgi

    from sdexp.quiet import quiet_optuna
    from sdexp.sweep.layout import open_storage, read_sweep_info

    quiet_optuna()
    info = read_sweep_info(sweep_dir)
    if not info.storage.startswith("journal:"):
        return wsgi(info.storage)  # an RDB URL: optuna-dashboard opens it itself
    journal = Path(info.storage.removeprefix("journal:")).expanduser()
    if not journal.is_file():
        raise UserError(f"{sweep_dir}: its study journal {journal} does not exist; has the sweep started?")
    return wsgi(open_storage(info.storage))


def dashboard_server(sweep_dir: str | Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> WSGIServer:
    """A bound, not yet serving, server for the sweep's dashboard (``port=0``: any free port)."""
    app = dashboard_app(sweep_dir)
    server_class = _IPv6Server if ":" in host else WSGIServer
    try:
        return make_server(host, port, app, server_class=server_class, handler_class=_QuietHandler)
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise UserError(
                f"--port: {host}:{port} is in use; pick another, e.g. --port {port + 1}"
            ) from None
        raise UserError(f"--host: cannot listen on {host}:{port}: {err.strerror or err}") from None


def server_url(server: WSGIServer) -> str:
    host, port = server.server_address[:2]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}/dashboard"


def serve(
    sweep_dir: str | Path,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    notify=print,
    stop: threading.Event | None = None,
) -> None:
    """Serve the sweep's dashboard until Ctrl-C (the KeyboardInterrupt propagates once the server
    is down) or until ``stop`` is set. Requests are handled on a thread of their own, so Ctrl-C
    always reaches this loop, never a request handler that would swallow it."""
    server = dashboard_server(sweep_dir, host, port)
    notify(f"optuna-dashboard for {sweep_dir} (Ctrl-C stops it):")
    notify(server_url(server))
    thread = threading.Thread(target=server.serve_forever, name="sdexp-dashboard", daemon=True)
    thread.start()
    try:
        while thread.is_alive() and not (stop is not None and stop.is_set()):
            thread.join(0.2)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@subcommand(
    "dashboard",
    help="open a sweep's study in optuna-dashboard (served on 127.0.0.1 until Ctrl-C)",
    args=[
        arg("sweep_dir", metavar="SWEEP_DIR", type=Path, help="the folder `sdexp sweep` wrote (holds sweep.json)"),
        arg("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT}; 0: any free one)"),
        arg("--host", default=DEFAULT_HOST, help="address to listen on (default 127.0.0.1: this machine only)"),
    ],
)  # fmt: skip
def cmd_dashboard(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port: {args.port} is not a port number (0-65535)")
    # Ctrl-C stops it even where the shell started us with SIGINT ignored (a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        serve(args.sweep_dir, args.host, args.port, notify=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print("dashboard stopped", flush=True)
    return 0
