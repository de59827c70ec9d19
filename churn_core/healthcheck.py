"""Container health check: ``python -m churn_core.healthcheck [URL | --tcp HOST:PORT]``.

The image's ``HEALTHCHECK`` runs it, so it uses the standard library only (no settings, no
engines) and answers within its timeout. Exit 0 when healthy, 1 otherwise, with one line
saying why: Docker shows the last lines of a failing check in ``docker inspect``.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8000/healthz"


def check_http(url: str, timeout_s: float) -> str | None:
    """None when ``url`` answers 2xx within ``timeout_s``, else why not."""
    if not url.startswith(("http://", "https://")):
        return f"not an http(s) URL: {url!r}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (scheme checked)
            status = int(response.status)
    except urllib.error.HTTPError as error:
        return f"{url} answered {error.code}"
    except (urllib.error.URLError, OSError) as error:
        return f"{url} unreachable: {getattr(error, 'reason', error)}"
    return None if 200 <= status < 300 else f"{url} answered {status}"


def check_tcp(address: str, timeout_s: float) -> str | None:
    """None when something accepts a TCP connection at ``HOST:PORT``, else why not."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return f"not HOST:PORT: {address!r}"
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return None
    except OSError as error:
        return f"{address} refused: {error}"


def main(argv: list[str] | None = None) -> int:
    """Run one check; print why it failed; return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m churn_core.healthcheck")
    parser.add_argument("url", nargs="?", default=os.environ.get("CHURN_HEALTHCHECK_URL"))
    parser.add_argument("--tcp", metavar="HOST:PORT", help="check a TCP port instead of a URL")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    if args.tcp:
        problem = check_tcp(args.tcp, args.timeout)
    else:
        problem = check_http(args.url or DEFAULT_URL, args.timeout)
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
