"""The engine as the HTTP layer sees it: loaded in the background, started and stopped once, and
bridged from its thread to asyncio.

The engine calls each request's sink from its own thread; the sink only hands the Output (and its
arrival time) to the event loop with `call_soon_threadsafe`, so neither side ever blocks the other.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from tattletale.engine.request import ContextOverflow, EngineMetrics, Output, Request

from .errors import APIError
from .metrics import RequestTimer, ServerMetrics

log = logging.getLogger("tattletale.server")


class EngineLike(Protocol):
    """What the server needs of an engine (tattletale.engine.core.Engine, or a test double)."""

    tokenizer: object
    max_context: int
    model_name: str

    def chat_prompt(self, messages: list[dict]) -> list[int]: ...
    def submit(self, request: Request, sink: Callable[[Output], None]) -> None: ...
    def cancel(self, request_id: str) -> None: ...
    def start(self) -> None: ...
    def shutdown(self, timeout: float = 10.0) -> None: ...
    def metrics(self) -> EngineMetrics: ...


class Runtime:
    """Holds the engine: given ready-made, or made by `load` in a thread while the server already
    answers (/health says 503 until it is ready)."""

    def __init__(self, engine: EngineLike | None = None, load: Callable[[], EngineLike] | None = None,
                 shutdown_timeout: float = 10.0,
                 on_load_error: Callable[[BaseException], None] | None = None):
        if (engine is None) == (load is None):
            raise ValueError("give an engine or a function that loads one")
        self.engine, self._load = engine, load
        self.shutdown_timeout = shutdown_timeout
        self.on_load_error = on_load_error
        self.ready = False
        self.stopping = False
        self.load_error: str | None = None
        self.metrics = ServerMetrics(self.snapshot)
        self._lock = threading.Lock()  # orders "loaded" against "stopping"
        self._stopped: asyncio.Future | None = None

    def start(self) -> None:
        """Start the engine, or its loading; called once by the app's lifespan."""
        if self._load is None:
            self.engine.start()
            self.ready = True
        else:
            threading.Thread(target=self._load_engine, name="tt-load", daemon=True).start()

    def _load_engine(self) -> None:
        try:
            engine = self._load()
        except BaseException as exc:  # the server reports it and, run by `tt serve`, exits
            self.load_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.error("loading the model failed: %s", self.load_error)
            if self.on_load_error is not None:
                self.on_load_error(exc)
            return
        with self._lock:
            if self.stopping:  # shut down while loading: never start it
                return
            engine.start()
            self.engine = engine
            self.ready = True
        log.info("model %s ready", engine.model_name)

    async def stop(self) -> None:
        """Stop accepting requests and shut the engine down (in-flight requests finish, or are
        cancelled after the timeout); later calls wait for the first one."""
        with self._lock:
            self.stopping = True
            engine = self.engine if self.ready else None
        if self._stopped is None:
            self._stopped = asyncio.ensure_future(
                asyncio.to_thread(engine.shutdown, self.shutdown_timeout) if engine else asyncio.sleep(0))
        await asyncio.shield(self._stopped)

    def snapshot(self) -> EngineMetrics | None:
        return self.engine.metrics() if self.ready else None

    def require(self) -> EngineLike:
        """The engine, or a 503 while it is loading, failed to load, or is shutting down."""
        if self.stopping:
            raise APIError(503, "The server is shutting down", code="shutting_down")
        if self.load_error is not None:
            raise APIError(503, f"The model failed to load: {self.load_error}", code="model_load_failed")
        if not self.ready:
            raise APIError(503, "The model is still loading; retry when /health returns 200",
                           code="model_loading")
        return self.engine


class Generation:
    """The engine requests of one HTTP request (n choices of each prompt), their Outputs merged
    into one queue as (request index, Output). Whatever has not finished when the generation is
    closed, or when the client disconnects, is cancelled in the engine."""

    def __init__(self, runtime: Runtime, requests: list[Request],
                 receive: Callable[[], Awaitable[dict]], param: str):
        self.runtime, self.requests = runtime, requests
        self.engine = runtime.require()
        self.queue: asyncio.Queue[tuple[int, float, Output]] = asyncio.Queue()
        self.pending: set[int] = set()
        self.timers: dict[int, RequestTimer] = {}
        self._receive, self._param = receive, param
        self._watch: asyncio.Task | None = None

    def _sink(self, index: int, loop: asyncio.AbstractEventLoop) -> Callable[[Output], None]:
        def sink(out: Output) -> None:
            try:
                loop.call_soon_threadsafe(self.queue.put_nowait, (index, time.monotonic(), out))
            except RuntimeError:  # the loop is closed: nobody is left to read it
                pass
        return sink

    def start(self) -> Generation:
        """Submit every request (all or none: a refused one cancels those before it) and watch
        for the client's disconnect."""
        loop = asyncio.get_running_loop()
        for i, r in enumerate(self.requests):
            try:
                self.engine.submit(r, self._sink(i, loop))
            except ContextOverflow as exc:
                self.close()
                raise APIError(400, str(exc), self._param, "context_length_exceeded") from None
            except RuntimeError:  # the engine stopped accepting: shutdown began after require()
                self.close()
                raise APIError(503, "The server is shutting down", code="shutting_down") from None
            self.pending.add(i)
            self.timers[i] = RequestTimer(self.runtime.metrics, time.monotonic())
        self._watch = asyncio.create_task(self._watch_disconnect())
        return self

    async def __aenter__(self) -> Generation:
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()

    async def __aiter__(self) -> AsyncIterator[tuple[int, Output]]:
        while self.pending:
            i, at, out = await self.queue.get()
            if i not in self.pending:
                continue
            timer = self.timers[i]
            timer.tokens(len(out.token_ids), at)
            if out.finished:
                self.pending.discard(i)
                timer.finished("error" if out.error else out.finish_reason or "stop", at)
            yield i, out

    async def _watch_disconnect(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        if self.pending:
            log.info("client disconnected; cancelling %d request(s)", len(self.pending))
        self.close()

    def close(self) -> None:
        now = time.monotonic()
        for i in sorted(self.pending):
            self.engine.cancel(self.requests[i].request_id)
            self.timers[i].finished("abort", now)
        self.pending.clear()
        if self._watch is not None and self._watch is not asyncio.current_task():
            self._watch.cancel()
