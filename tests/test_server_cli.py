"""`tt serve` in subprocesses, with the fake engine behind its loader (fake_engine.py as a script):
listening while the model loads, graceful shutdown on SIGTERM/SIGINT with exit code 0, and one-line
errors for a taken port, a missing model and a model that fails to load."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(*args: str, **env: str) -> subprocess.Popen:
    paths = [str(HERE.parent), *filter(None, [os.environ.get("PYTHONPATH")])]
    return subprocess.Popen([sys.executable, str(HERE / "fake_engine.py"), *args],
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(paths), **env},
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def health(port: int) -> int | None:
    """/health's status, or None while nothing listens."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/health")
        status = conn.getresponse().status
        conn.close()
        return status
    except ConnectionRefusedError:
        return None


def wait_health(proc: subprocess.Popen, port: int, want: int, timeout: float = 60) -> list[int | None]:
    """Poll /health until it answers `want`; the statuses seen on the way."""
    seen: list[int | None] = []
    deadline = time.monotonic() + timeout
    while not seen or seen[-1] != want:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"/health never answered {want}: {seen[-5:]}"
        seen.append(health(port))
        time.sleep(0.05)
    return seen


def finish(proc: subprocess.Popen, timeout: float = 30) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


@pytest.fixture(autouse=True)
def _model(bundled_gguf):
    """Both the fake engine's tokenizer and `tt serve`'s model check need the bundled model."""


def test_listens_while_loading_and_drains_on_sigterm():
    port = free_port()
    proc = start("--port", str(port), "--shutdown-timeout", "0.5", TT_FAKE_LOAD_DELAY="1.5",
                 TT_FAKE_STEP_DELAY="0.05")
    try:
        seen = wait_health(proc, port, 200)
        assert 503 in seen  # listening before the model was ready
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        r = client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "Hi"}],
                                           max_tokens=2)
        assert r.choices[0].finish_reason == "length"
        stream = client.completions.create(model="fake-model", prompt="tick", stream=True, max_tokens=200,
                                           extra_body={"ignore_eos": True})
        chunks = iter(stream)
        assert next(chunks).choices[0].text
        proc.send_signal(signal.SIGTERM)
        rest = list(chunks)  # the stream ends properly: cancelled after the timeout, not cut off
        assert rest[-1].choices[0].finish_reason == "abort"
        code, err = finish(proc)
    finally:
        proc.kill()
    assert code == 0, err
    assert "tt: serving" in err and "Traceback" not in err


def test_sigint_exits_0_and_api_key():
    port = free_port()
    proc = start("--port", str(port), "--api-key", "k3y")
    try:
        wait_health(proc, port, 200)  # /health needs no key
        url = f"http://127.0.0.1:{port}/v1"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
        (card,) = openai.OpenAI(base_url=url, api_key="k3y", max_retries=0).models.list().data
        assert card.id == "fake-model"
        proc.send_signal(signal.SIGINT)
        code, err = finish(proc)
    finally:
        proc.kill()
    assert code == 0, err
    assert "Traceback" not in err


def last_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("tt: ")]
    assert "Traceback" not in err, err
    return lines[-1]


def test_load_failure_is_one_line():
    proc = start("--port", str(free_port()), TT_FAKE_LOAD_FAIL="1")
    code, err = finish(proc)
    assert code == 2
    assert last_line(err) == "tt: cannot load the model: the device ran out of memory"


def test_port_in_use():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        code, err = finish(start("--port", str(port)))
    assert code == 2
    assert last_line(err).startswith(f"tt: cannot listen on 127.0.0.1:{port}: ")


def test_missing_model(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tattletale", "serve", str(tmp_path / "none.gguf")],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    assert last_line(proc.stderr) == f"tt: no model file or directory at {tmp_path / 'none.gguf'}"
