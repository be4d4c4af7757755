"""Fuzzing the server's request schema with hypothesis: bodies mixing plausible and arbitrary values
for every field the API knows (and some it does not), plus arbitrary bytes. Every answer must be a
success or an OpenAI-style 4xx, never a 5xx, and the server must still be up afterwards.

The example counts are modest so CI stays fast; TT_FUZZ_EXAMPLES raises them for a longer run.
"""

from __future__ import annotations

import http.client
import json
import os

import pytest
from fake_engine import FakeEngine, LiveServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tattletale.server import create_app

EXAMPLES = int(os.environ.get("TT_FUZZ_EXAMPLES", "100"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# any JSON value (non-finite floats too: Python's json writes them, the server must refuse them)
ANY = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
                   lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                max_size=3),
                   max_leaves=8)
TEXT = st.text(max_size=40)
VALID_MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "assistant"]),
     "content": TEXT | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}), max_size=2)})
# values the API accepts (some still fail later checks: stream_options without stream, ...)
VALID = {
    "model": st.just("fake-model"),
    "n": st.integers(1, 4),
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0.01, 1),
    "top_k": st.integers(-1, 100),
    "min_p": st.floats(0, 1),
    "repetition_penalty": st.floats(0.5, 2),
    "frequency_penalty": st.floats(-2, 2),
    "presence_penalty": st.floats(-2, 2),
    "seed": st.integers(-(2**63), 2**64 - 1),
    "stop": st.text(max_size=6) | st.lists(st.text(max_size=6), max_size=4),
    "stop_token_ids": st.lists(st.integers(0, 49151), max_size=3),
    "ignore_eos": st.booleans(),
    "max_tokens": st.integers(1, 2**70),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
    "user": TEXT,
}
VALID_CHAT = {**VALID,
              "messages": st.lists(VALID_MESSAGE, min_size=1, max_size=3),
              "max_completion_tokens": st.integers(1, 2**70),
              "logprobs": st.booleans(),
              "top_logprobs": st.integers(0, 20),
              "response_format": st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object"])})}
IDS = st.lists(st.integers(0, 49151), min_size=1, max_size=8)
VALID_COMPLETION = {**VALID,
                    "prompt": TEXT | IDS | st.lists(TEXT, min_size=1, max_size=3)
                    | st.lists(IDS, min_size=1, max_size=3),
                    "logprobs": st.integers(0, 20)}
# values near or past the bounds, of the wrong kind, or the API's fields the server refuses
WILD = {
    "model": st.sampled_from(["gpt-4o", ""]),
    "n": st.integers(-1, 20),
    "temperature": st.floats(-0.5, 2.5),
    "top_p": st.floats(-0.2, 1.2),
    "top_k": st.integers(-3, 2**40),
    "min_p": st.floats(-0.2, 1.2),
    "repetition_penalty": st.floats(-1, 11),
    "frequency_penalty": st.floats(-2.5, 2.5),
    "seed": st.integers(-(2**66), 2**66),
    "stop": st.lists(st.text(min_size=250, max_size=260), max_size=2) | st.lists(st.text(), max_size=20),
    "stop_token_ids": st.lists(st.integers(-3, 2**40), max_size=3),
    "max_tokens": st.integers(-3, 0),
    "stream_options": st.fixed_dictionaries({"x": ANY}),
    "logit_bias": st.dictionaries(st.text(max_size=4), st.floats(-100, 100), max_size=2),
    "unknown_field": ANY,
    "messages": st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["tool", "robot"]) | ANY, "content": ANY},
        optional={"name": ANY, "weight": ANY}), max_size=3),
    "max_completion_tokens": st.integers(-3, 0),
    "top_logprobs": st.integers(-2, 25),
    "response_format": st.fixed_dictionaries({"type": st.sampled_from(["json_schema", "yaml"])}),
    "tools": st.lists(ANY, min_size=1, max_size=1),
    "tool_choice": st.sampled_from(["none", "auto"]),
    "prompt": st.lists(st.integers(-3, 60000), max_size=12) | st.just([]) | st.just(""),
    "logprobs": st.integers(-2, 25) | st.booleans(),
    "echo": st.booleans(),
    "best_of": st.integers(0, 5),
    "suffix": st.none() | TEXT,
}


def bodies(valid: dict) -> st.SearchStrategy:
    """Valid bodies, valid bodies with one field gone wild, and bodies of anything at all."""
    required = "messages" if "messages" in valid else "prompt"
    fine = st.fixed_dictionaries({required: valid[required]},
                                 optional={k: v for k, v in valid.items() if k != required})
    names = sorted(set(valid) | {"unknown_field", "logit_bias", "tools", "echo", "suffix", "best_of"})
    wild_value = st.sampled_from(names).flatmap(
        lambda k: st.tuples(st.just(k), st.one_of(WILD.get(k, ANY), ANY)))
    mutated = st.tuples(fine, wild_value).map(lambda pair: {**pair[0], pair[1][0]: pair[1][1]})
    anything = st.dictionaries(st.sampled_from(names), ANY, max_size=5)
    return st.one_of(fine, fine, mutated, mutated, anything)


@pytest.fixture(scope="module")
def server(bundled_gguf):
    # a short context keeps generations short; no step delay keeps examples fast
    live = LiveServer(create_app(FakeEngine(max_context=64, step_delay=0.0)))
    yield live
    live.stop()


def send(server, path: str, body: bytes) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


def check(status: int, data: bytes, body: dict | None) -> None:
    assert status < 500, data[:500]
    if status >= 400:
        error = json.loads(data)["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
    elif isinstance(body, dict) and body.get("stream"):
        assert data.endswith(b"data: [DONE]\n\n"), data[-200:]
    else:
        assert json.loads(data)["choices"]


@FUZZ
@given(body=bodies(VALID_CHAT))
def test_fuzz_chat(server, body):
    status, data = send(server, "/v1/chat/completions", json.dumps(body).encode())
    check(status, data, body)


@FUZZ
@given(body=bodies(VALID_COMPLETION))
def test_fuzz_completions(server, body):
    status, data = send(server, "/v1/completions", json.dumps(body).encode())
    check(status, data, body)


@FUZZ
@given(path=st.sampled_from(["/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize"]),
       raw=st.binary(max_size=200) | ANY.map(lambda v: json.dumps(v).encode()))
def test_fuzz_raw_bodies(server, path, raw):
    status, data = send(server, path, raw)
    assert 400 <= status < 500, data[:500]
    assert json.loads(data)["error"]["message"]


@FUZZ
@given(body=st.fixed_dictionaries({}, optional={"prompt": TEXT | ANY, "messages": VALID_CHAT["messages"]
                                                | ANY, "tokens": st.lists(st.integers(-2, 2**40)) | ANY,
                                                "add_special_tokens": st.booleans() | ANY}),
       path=st.sampled_from(["/tokenize", "/detokenize"]))
def test_fuzz_tokenize(server, body, path):
    status, data = send(server, path, json.dumps(body).encode())
    assert status < 500, data[:500]


def test_server_survives(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/health")
    assert conn.getresponse().status == 200
