"""nginx as the fast upstream and as a reference proxy, when nginx is installed.

Each instance gets its own directory with its config, pid file, logs and temp paths, and
runs in the foreground (``daemon off``) with one worker on 127.0.0.1, so the bench can pin
and stop it like any other child process. Nothing here needs root.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from upstream import BODY

# nginx closes a keep-alive connection after 1000 requests by default. This limit is high
# enough that neither wrk nor the upstream pool reconnects during a phase.
KEEPALIVE_REQUESTS = 10_000_000


def nginx_binary() -> str | None:
    """Return the path of nginx, or None when it is not installed."""
    return shutil.which("nginx") or next(
        (path for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(path, os.X_OK)),
        None,
    )


def _main_block(directory: Path, server_block: str) -> str:
    # Workers of an nginx started as root would switch to an unprivileged user that cannot
    # write to this private directory, so as root they stay root. Everything binds loopback.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}daemon off;
master_process on;
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests {KEEPALIVE_REQUESTS};
    keepalive_timeout 75s;
    client_body_temp_path {directory}/client_body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
{server_block}
}}
"""


def static_config(directory: Path, port: int) -> str:
    """Return a config that responds to every request with the fast upstream's 200 body."""
    body = BODY.decode().replace("\n", "\\n")
    server = f"""    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type text/plain;
            return 200 "{body}";
        }}
    }}"""
    return _main_block(directory, server)


def proxy_config(directory: Path, port: int, upstream_port: int) -> str:
    """Return a ``proxy_pass`` config with a keep-alive connection pool to the upstream."""
    server = f"""    upstream backend {{
        server 127.0.0.1:{upstream_port};
        keepalive 128;
        keepalive_requests {KEEPALIVE_REQUESTS};
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""
    return _main_block(directory, server)


def write_config(directory: Path, text: str) -> list[str]:
    """Write ``text`` as ``directory/nginx.conf`` and return the command that runs it."""
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx is not installed")
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "nginx.conf"
    config.write_text(text, encoding="utf-8")
    return [binary, "-p", str(directory), "-c", str(config), "-e", str(directory / "error.log")]
