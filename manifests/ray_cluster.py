"""Joining a Ray cluster, or starting a local Ray, with errors that name the real cause.

Ray (2.60, the version pinned) turns token authentication on at a head that finds a token, and then
refuses every node and driver that does not present the same one with ``RAY_AUTH_MODE=token``
(the token from ``RAY_AUTH_TOKEN`` or the file ``RAY_AUTH_TOKEN_PATH``; docs/cluster.md). Ray's own
``ray.init`` reports that as "Failed to connect" after about 20 s, and waits minutes when nothing
listens at the address; :func:`connect` tells authentication, nothing listening and a version
mismatch apart, each as one line with its fix.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from typing import Optional

from manifests.errors import UserError

PROBE_TIMEOUT_S = 5.0
AUTH_DOC = "docs/cluster.md, 'Ray token authentication'"


def connect(address: Optional[str], setting: str, num_cpus: int, instead: str):
    """``(ray, started_here)``: the ray module joined to the cluster at ``address`` (``host:port``,
    ``auto``), or, when ``address`` is empty, to a new local Ray offering ``num_cpus`` CPUs.
    ``setting`` names the address's config key in errors (e.g. ``extract.ray_address``), ``instead``
    the way to run without Ray (e.g. ``extract.runner=inprocess``)."""
    try:
        import ray
    except ImportError:
        raise UserError(f"Ray is not installed here; pip install 'ray>=2.60,<2.61', or use {instead}") from None
    if ray.is_initialized():
        return ray, False
    if address:
        check_listening(address, setting)
    main_thread = threading.current_thread() is threading.main_thread()
    on_sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None
    try:
        if address:
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ray.exceptions.RayError) as exc:
        raise UserError(connect_failure(address, setting, exc)) from None
    if on_sigterm is not None:  # Ray's core worker aborts on SIGTERM; the CLI stops cleanly and resumably
        signal.signal(signal.SIGTERM, on_sigterm)
    return ray, True


def host_port(address: str) -> Optional[tuple]:
    """``(host, port)`` of a ``host:port`` address (``[v6]:port`` too); None for ``auto``, ``local``,
    ``ray://...`` and anything else Ray resolves itself."""
    if "://" in address or ":" not in address:
        return None
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def check_listening(address: str, setting: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Fail fast, in one line, when nothing answers at a ``host:port`` address (``ray.init`` would wait
    minutes for it)."""
    target = host_port(address)
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=timeout).close()
    except socket.gaierror as exc:
        raise UserError(f"{setting}={address!r}: cannot resolve the host {target[0]!r} ({exc.strerror}); "
                        "give the Ray head as host:port, e.g. 10.0.0.5:6379") from None
    except ConnectionRefusedError:
        raise UserError(f"{setting}={address!r}: nothing is listening there (connection refused); start the "
                        "Ray head first (docker/entrypoint.sh ray-head, or ray start --head --port=PORT), "
                        "check the host and port, or leave the setting empty for a local Ray") from None
    except OSError as exc:
        why = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        raise UserError(f"{setting}={address!r}: cannot reach the Ray head ({why} within {timeout:.0f} s); "
                        "check the address, the network and any firewall between this host and the head") from None


def _chain(exc: BaseException) -> list:
    """``exc`` and the exceptions it was raised from or during, outermost first."""
    seen = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def connect_failure(address: Optional[str], setting: str, exc: BaseException) -> str:
    """One line saying why ``ray.init`` failed: authentication, a version mismatch, or other."""
    chain = _chain(exc)
    text = " ".join(str(e) for e in chain)
    where = f"{setting}={address!r}" if address else f"{setting} (a local Ray)"
    if any(type(e).__name__ == "AuthenticationError" for e in chain) or "InvalidAuthToken" in text \
            or "RAY_AUTH_TOKEN_PATH is set but" in text:
        return f"{where}: the Ray cluster refused this process's authentication token ({auth_state()}); " \
               "give it the cluster's token: RAY_AUTH_MODE=token with RAY_AUTH_TOKEN_PATH=<the head's token " \
               f"file> or RAY_AUTH_TOKEN=<token> ({AUTH_DOC})"
    if "Version mismatch" in text:
        versions = " ".join(text.split("Version mismatch:", 1)[1].split())
        return f"{where}: Ray or Python version mismatch ({versions}); run the driver with the cluster's " \
               "Ray and Python (the same image or environment on every node)"
    first = str(chain[-1]).strip().splitlines()[0][:300] if str(chain[-1]).strip() else type(chain[-1]).__name__
    return f"{where}: cannot connect to a Ray cluster ({type(chain[-1]).__name__}: {first}); check " \
           "`ray status` on the head, or leave the setting empty for a local Ray"


def auth_state(environ=None) -> str:
    """How this process authenticates to Ray, in words (for the error message)."""
    env = os.environ if environ is None else environ
    mode = env.get("RAY_AUTH_MODE")
    if mode != "token":
        return f"RAY_AUTH_MODE is {mode!r} here, so no token was sent" if mode else \
            "RAY_AUTH_MODE is not set here, so no token was sent"
    if env.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_MODE=token with RAY_AUTH_TOKEN, which does not match"
    path = env.get("RAY_AUTH_TOKEN_PATH")
    if path and not os.path.isfile(path):
        return f"RAY_AUTH_TOKEN_PATH={path} does not exist"
    return f"RAY_AUTH_MODE=token with the token in {path or '~/.ray/auth_token'}, which does not match"
