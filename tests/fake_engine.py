"""A deterministic stand-in for tattletale.engine.core.Engine, for the server's tests.

It runs the real interface (submit/cancel/start/shutdown/metrics, sinks called from its own
thread, one token per request per step) with the bundled model's real tokenizer and chat template,
but "generates" by echoing: greedy requests repeat the prompt's text tokens then end with EOS;
sampled ones draw from those tokens with a generator seeded by the request's seed.

Run as a script, it starts `tt serve` with this engine in place of the real loader (the CLI tests
use that to test startup, /health during loading, and shutdown on signals).
"""

from __future__ import annotations

import asyncio
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tattletale.engine.request import ContextOverflow, EngineMetrics, Output, Request, TokenLogprob
from tattletale.models.tokenizer import render_chat

_shared: dict = {}


def bundled_tokenizer():
    """The bundled SmolLM2's tokenizer and chat template (loaded once per process)."""
    if not _shared:
        from tattletale.models import open_model, resolve

        f = open_model(resolve(None))
        _shared["tok"], _shared["template"] = f.tokenizer(), f.chat_template()
    return _shared["tok"], _shared["template"]


@dataclass
class _Running:
    request: Request
    sink: Callable[[Output], None]
    plan: list[int]  # the tokens it will generate, in order
    made: list[int] = field(default_factory=list)
    emitted: int = 0  # characters of text sent
    cancelled: bool = False


class FakeEngine:
    model_name = "fake-model"

    def __init__(self, max_context: int = 256, step_delay: float = 0.002, cached_tokens: int = 3):
        self.tokenizer, self.template = bundled_tokenizer()
        self.max_context = max_context
        self.step_delay = step_delay
        self.cached_tokens = cached_tokens  # reported as prefix-cache hits of every request
        self.fail: str | None = None  # when set, requests end with this error
        self.eos = self.tokenizer.token_id(self.tokenizer.eos_token)
        self.submitted: list[Request] = []
        self.cancelled: list[str] = []
        self.started = self.shut_down = False
        self._lock = threading.Condition()
        self._running: dict[str, _Running] = {}
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="fake-engine", daemon=True)
        self._steps = self._prompt_tokens = self._generated = 0

    # the Engine interface

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        return self.tokenizer.encode(render_chat(self.template, messages, self.tokenizer), add_special=False)

    def submit(self, request: Request, sink: Callable[[Output], None]) -> None:
        if len(request.prompt_ids) + 1 > self.max_context:
            raise ContextOverflow(f"the prompt has {len(request.prompt_ids)} tokens, but the context "
                                  f"holds {self.max_context}")
        words = [t for t in request.prompt_ids if self.tokenizer.decode([t])] or [self.eos]
        if request.sampling.temperature == 0:
            plan = list(words)
        else:
            rng = random.Random(request.sampling.seed)
            plan = [rng.choice(words) for _ in words]
        if request.ignore_eos:
            plan = (plan * (request.max_tokens // len(plan) + 1))[:request.max_tokens]
        else:
            plan.append(self.eos)
        with self._lock:
            self.submitted.append(request)
            self._running[request.request_id] = _Running(request, sink, plan)
            self._prompt_tokens += len(request.prompt_ids)
            self._lock.notify()

    def cancel(self, request_id: str) -> None:
        with self._lock:
            self.cancelled.append(request_id)
            if request_id in self._running:
                self._running[request_id].cancelled = True

    def start(self) -> None:
        self.started = True
        self._thread.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._running and time.monotonic() < deadline:
                self._lock.wait(0.01)
            for r in self._running.values():
                r.cancelled = True
            self._stop = True
            self._lock.notify()
        if self._thread.is_alive():
            self._thread.join()
        self.shut_down = True

    def metrics(self) -> EngineMetrics:
        with self._lock:
            return EngineMetrics(requests_running=len(self._running), kv_pages_total=64,
                                 kv_pages_used=len(self._running), kv_pages_free=64 - len(self._running),
                                 prefix_cache_queries=self._prompt_tokens,
                                 prefix_cache_hits=self.cached_tokens * len(self.submitted),
                                 prompt_tokens_total=self._prompt_tokens,
                                 generation_tokens_total=self._generated, batch_tokens_last=1,
                                 steps_total=self._steps)

    # the engine thread

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._running and not self._stop:
                    self._lock.wait()
                if self._stop and not self._running:
                    return
                batch = list(self._running.values())
                self._steps += 1
            for r in batch:
                out = self._step(r)
                if out.finished:
                    with self._lock:
                        del self._running[r.request.request_id]
                        self._lock.notify_all()
                r.sink(out)
            time.sleep(self.step_delay)

    def _step(self, r: _Running) -> Output:
        req = r.request
        base = dict(request_id=req.request_id, prompt_tokens=len(req.prompt_ids),
                    cached_tokens=min(self.cached_tokens, len(req.prompt_ids) - 1))
        if self.fail:
            return Output(token_ids=[], text="", finished=True, error=self.fail, **base)
        if r.cancelled:
            return Output(token_ids=[], text="", finished=True, finish_reason="abort",
                          completion_tokens=len(r.made), **base)
        token = r.plan[len(r.made)]
        r.made.append(token)
        with self._lock:
            self._generated += 1
        lp = None
        if req.logprobs is not None:
            # the third alternative is impossible: -inf, as after a top-k cut
            top = [(token + j, -0.5 - j if j != 2 else float("-inf")) for j in range(req.logprobs)]
            lp = [TokenLogprob(token, -0.25, top)]
        ended = token == self.eos and not req.ignore_eos or token in req.stop_token_ids
        text = self.tokenizer.decode(r.made)  # EOS is special: never in the text
        cut = min((i for i in (text.find(s) for s in req.stop) if i >= 0), default=-1)
        hold = max((k for s in req.stop for k in range(len(s) - 1, 0, -1) if text.endswith(s[:k])),
                   default=0)
        end = cut if cut >= 0 else len(text) - hold
        finish = None
        if ended or cut >= 0:
            finish = "stop"
        elif len(r.made) == req.max_tokens or len(r.plan) == len(r.made):
            finish = "length"
        if finish and cut < 0:
            end = len(text)  # flush what was held back
        piece, r.emitted = text[r.emitted:end], max(r.emitted, end)
        return Output(token_ids=[token], text=piece, logprobs=lp, finished=finish is not None,
                      finish_reason=finish, completion_tokens=len(r.made), **base)


class LiveServer:
    """A uvicorn server for `app` on a free loopback port, in a thread (stop() ends it)."""

    def __init__(self, app):
        import socket

        import uvicorn

        sock = socket.create_server(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.loop = None

        async def run():
            self.loop = asyncio.get_running_loop()
            await self.server.serve(sockets=[sock])

        self.thread = threading.Thread(target=asyncio.run, args=(run(),), daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def main(argv: list[str]) -> int:
    """`tt serve ARGS...` with the fake engine behind the loader: TT_FAKE_LOAD_DELAY seconds of
    "loading" first, TT_FAKE_STEP_DELAY seconds per step; TT_FAKE_LOAD_FAIL makes loading fail."""
    import os
    import types

    from tattletale import cli

    load_delay = float(os.environ.get("TT_FAKE_LOAD_DELAY", "0"))
    step_delay = float(os.environ.get("TT_FAKE_STEP_DELAY", "0.002"))

    def load_engine(model, backend, *, progress=False, max_context=None, **options):
        time.sleep(load_delay)
        if os.environ.get("TT_FAKE_LOAD_FAIL"):
            raise RuntimeError("the device ran out of memory\nsecond line")
        return FakeEngine(max_context=max_context or 256, step_delay=step_delay)

    sys.modules["tattletale.engine.core"] = types.SimpleNamespace(load_engine=load_engine)
    return cli.main(["serve", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
