"""`tt serve` with the real engine (the bundled SmolLM2-135M on OpenCL), through the official
`openai` client: chat, completions, streaming, n > 1, logprobs, stop, seed reproducibility;
batching invisible to 16 concurrent clients; a storm of disconnecting streaming clients leaves
the engine idle with every KV page free or cached; an idle server process uses no CPU.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from fake_engine import LiveServer

import tattletale as tt
from tattletale.engine.core import load_engine
from tattletale.server.app import create_app

openai = pytest.importorskip("openai")

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def engine():
    try:
        tt.device("opencl")
    except Exception as exc:
        pytest.skip(f"opencl: {str(exc).splitlines()[0]}")
    return load_engine(None, "opencl", max_context=1024, max_batch_tokens=256)


@pytest.fixture(scope="module")
def server(engine):
    live = LiveServer(create_app(engine))
    yield live
    live.stop()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def wait_idle(engine, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while engine.has_work() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not engine.has_work()


def assert_pages_clean(engine) -> None:
    """Idle: every page is free or owned by the prefix cache, never by a finished request."""
    m = engine.metrics()
    assert m.requests_running == m.requests_waiting == 0
    assert m.kv_pages_used == m.prefix_cache_pages


def test_chat_completions_and_streaming(client):
    model = client.models.list().data[0].id
    r = client.chat.completions.create(messages=QUESTION, model=model, temperature=0, max_tokens=12)
    text = r.choices[0].message.content
    assert "Paris" in text and r.usage.completion_tokens <= 12
    chunks = list(client.chat.completions.create(
        messages=QUESTION, model=r.model, temperature=0, max_tokens=12, stream=True,
        stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens


def test_completions_n_seed_logprobs_stop(client):
    model = client.models.list().data[0].id
    kw = dict(model=model, prompt="Once upon a time", max_tokens=10, temperature=1.0, seed=11)
    a = client.completions.create(n=3, **kw)
    b = client.completions.create(n=3, **kw)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]  # seeded: reproducible
    assert len({c.text for c in a.choices}) > 1  # n choices sample differently
    lp = client.completions.create(model=model, prompt="The capital of France is", max_tokens=4,
                                   temperature=0, logprobs=2)
    assert len(lp.choices[0].logprobs.tokens) == len(lp.choices[0].logprobs.top_logprobs) >= 1
    assert all(x <= 0 for x in lp.choices[0].logprobs.token_logprobs)
    full = client.completions.create(model=model, prompt="The capital of France is", max_tokens=16,
                                     temperature=0, extra_body={"ignore_eos": True}).choices[0].text
    stop = full[6:9]
    cut = client.completions.create(model=model, prompt="The capital of France is", max_tokens=16,
                                    temperature=0, stop=[stop], extra_body={"ignore_eos": True})
    assert cut.choices[0].text == full[:full.index(stop)] and cut.choices[0].finish_reason == "stop"


def test_concurrent_requests_equal_sequential(client, engine):
    """16 clients at once, prompts of different lengths: the same greedy answers as one by one."""
    model = client.models.list().data[0].id
    prompts = [f"Write {i} words about " + "the sea and the sky " * (i % 5) for i in range(16)]
    ask = lambda p: client.completions.create(  # noqa: E731
        model=model, prompt=p, max_tokens=6, temperature=0, extra_body={"ignore_eos": True}
    ).choices[0].text
    alone = [ask(p) for p in prompts]
    together: list[str | None] = [None] * 16
    threads = [threading.Thread(target=lambda i=i: together.__setitem__(i, ask(prompts[i])))
               for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone
    wait_idle(engine)
    assert_pages_clean(engine)


def test_disconnect_storm_leaves_the_engine_idle(server, engine):
    """50 streaming clients that hang up at random points: afterwards nothing runs and every
    page is free or in the prefix cache."""
    import http.client
    import json

    rng = random.Random(5)

    def client_that_leaves(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        body = json.dumps({"prompt": f"Story number {i}:", "max_tokens": 64, "stream": True,
                           "ignore_eos": True, "temperature": 0.8})
        conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        for _ in range(rng.randint(0, 6)):
            if not resp.readline():
                break
        conn.sock.close()  # leave mid-stream

    threads = [threading.Thread(target=client_that_leaves, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_idle(engine, 120)
    assert_pages_clean(engine)
    engine.scheduler.verify()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_idle_server_uses_no_cpu(tmp_path):
    """A `tt serve` process with the model loaded and no requests: < 1 % of a core over 10 s."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "tattletale", "serve", "--backend", "opencl",
                             "--port", str(port), "--context", "512"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "TT_TRACEBACK": "1"})
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200:
                    break
            except Exception:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
            time.sleep(0.2)
        time.sleep(1.0)

        def cpu_seconds() -> float:
            fields = open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        c0, t0 = cpu_seconds(), time.monotonic()
        time.sleep(10)
        used = cpu_seconds() - c0
        assert used < 0.01 * (time.monotonic() - t0), f"idle server used {used:.2f} s of CPU in 10 s"
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
