"""Running the app under uvicorn for `tt serve`: listen first, load the model in the background,
and shut down gracefully on SIGTERM/SIGINT (exit 0).

On a signal uvicorn stops accepting connections and waits for the open ones; the engine is told to
shut down at that moment, so in-flight requests finish (or are cancelled after the timeout and end
with finish_reason "abort") and their responses complete instead of being cut off.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Callable

import uvicorn

from .app import create_app
from .runtime import EngineLike


class ServeError(Exception):
    """The server could not start or its model could not load (one line for the user)."""


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, stop_engine: Callable[[], object]):
        super().__init__(config)
        self._stop_engine = stop_engine

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        stopping = asyncio.ensure_future(self._stop_engine())  # runs while uvicorn drains
        await super().shutdown(sockets)
        await stopping


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket, bound here so that failures are one clear line (not uvicorn's log)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def serve(load: Callable[[], EngineLike], host: str = "127.0.0.1", port: int = 8000,
          api_key: str | None = None, shutdown_timeout: float = 10.0, log_level: str = "info") -> None:
    """Serve until SIGTERM/SIGINT; ServeError when the port is taken or the model fails to load."""
    sock = _listen(host, port)
    failure: list[BaseException] = []

    def load_failed(exc: BaseException) -> None:
        failure.append(exc)
        server.should_exit = True

    app = create_app(load=load, api_key=api_key, shutdown_timeout=shutdown_timeout,
                     on_load_error=load_failed)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=shutdown_timeout + 5)
    server = _Server(config, app.state.runtime.stop)
    # uvicorn re-raises the signal it handled once it has shut down; with these handlers in place
    # that is a no-op, and the process exits normally (0) instead of dying of the signal
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    if failure:
        exc = failure[0]
        raise ServeError(f"cannot load the model: {(str(exc) or type(exc).__name__).splitlines()[0]}")
