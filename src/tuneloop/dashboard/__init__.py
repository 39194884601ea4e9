"""``tuneloop dashboard``: a live web view of a workspace's studies, runs and registry.

Chart.js (MIT, its licence beside it in ``static/``) is shipped inside the package, so the pages work offline
and load nothing from elsewhere.
"""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

from tuneloop.dashboard.app import is_loopback, make_app
from tuneloop.errors import ConfigError

__all__ = ["make_app", "serve", "DEFAULT_PORT"]

DEFAULT_PORT = 8765
TOKEN_ENV = "TUNELOOP_DASHBOARD_TOKEN"


def access(host: str, port: int, token: str | None = None) -> tuple[str | None, list[str] | None, str]:
    """How requests are let in on ``host``: (the token every request needs, the Host names allowed, the
    address to open). A loopback address needs no token, but only loopback Host names; any other address
    needs a token (``token``, else $TUNELOOP_DASHBOARD_TOKEN, else a fresh random one)."""
    if is_loopback(host):
        if token:
            raise ConfigError(["The 'token' parameter is for a dashboard bound beyond this machine (--host); "
                               f"{host} is reachable from this machine only."])
        return None, ["127.0.0.1", "localhost", "::1", "[::1]"], f"http://{_url_host(host)}:{port}/"
    token = token or os.environ.get(TOKEN_ENV) or secrets.token_urlsafe(24)
    shown = socket.gethostname() if host in ("0.0.0.0", "::") else _url_host(host)
    return token, None, f"http://{shown}:{port}/?token={token}"


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def serve(workspace: str | Path | None = None, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          token: str | None = None) -> None:
    """Serve the dashboard until interrupted (Ctrl-C)."""
    import uvicorn

    if not 0 < port < 65536:
        raise ConfigError([f"The 'port' parameter must be an integer in the range [1, 65535]. Got {port} instead."])
    required, hosts, address = access(host, port, token)
    app = make_app(workspace, token=required, allowed_hosts=hosts)
    try:  # say clearly that the port is taken, before uvicorn logs a traceback about it
        with socket.create_server((host.strip("[]"), port), family=socket.AF_INET6 if ":" in host else socket.AF_INET):
            pass
    except OSError as exc:
        raise ConfigError([f"The 'port' parameter: {host}:{port} cannot be used ({exc.strerror}). Choose another "
                           "with --port."]) from exc
    print(f"tuneloop dashboard of {app.state.root}\n  open {address}\n  (Ctrl-C stops it)", flush=True)
    uvicorn.run(app, host=host.strip("[]"), port=port, log_level="warning", access_log=False)
