"""The OpenAI-compatible server against a fake engine (fake_engine.py), on a live loopback port:
the official `openai` client, unmodified, for what it can send; raw HTTP for what it cannot
(malformed bodies, disconnects)."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time

import openai
import pytest
from fake_engine import FakeEngine, LiveServer

from tattletale.server import create_app
from tattletale.server.completions import JSON_INSTRUCTION, _json_answer


@pytest.fixture(scope="module")
def engine(bundled_gguf):
    return FakeEngine(max_context=256)


@pytest.fixture(scope="module")
def server(engine):
    live = LiveServer(create_app(engine))
    yield live
    live.stop()
    assert engine.shut_down  # the lifespan shut the engine down


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=30)


def post(server, path: str, body: bytes | dict | str, headers: dict | None = None,
         method: str = "POST") -> tuple[int, dict | str]:
    """A raw request (any body, any headers); the JSON answer when it is JSON."""
    if isinstance(body, dict):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    data = resp.read().decode()
    conn.close()
    try:
        return resp.status, json.loads(data)
    except json.JSONDecodeError:
        return resp.status, data


def expected_echo(engine: FakeEngine, messages: list[dict]) -> str:
    """What the fake engine answers at temperature 0: the chat prompt's text without its special
    tokens."""
    return engine.tokenizer.decode(engine.chat_prompt(messages))


def submitted(engine: FakeEngine, response_id: str):
    return [r for r in engine.submitted if r.request_id.startswith(response_id + "-")]


MESSAGES = [{"role": "user", "content": "Name three colors."}]


def test_chat(client, engine):
    r = client.chat.completions.create(model="fake-model", messages=MESSAGES, temperature=0)
    assert r.object == "chat.completion" and r.model == "fake-model" and r.id.startswith("chatcmpl-")
    (choice,) = r.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == expected_echo(engine, MESSAGES)
    assert choice.finish_reason == "stop"
    assert choice.logprobs is None
    prompt = len(engine.chat_prompt(MESSAGES))
    assert r.usage.prompt_tokens == prompt
    assert r.usage.completion_tokens == len(engine.tokenizer.encode(choice.message.content)) + 1  # + EOS
    assert r.usage.total_tokens == prompt + r.usage.completion_tokens
    assert r.usage.prompt_tokens_details.cached_tokens == 3
    (req,) = submitted(engine, r.id)
    assert req.max_tokens == engine.max_context - prompt  # no max_tokens: the rest of the context


def test_chat_stream(client, engine):
    stream = client.chat.completions.create(model="fake-model", messages=MESSAGES, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected_echo(engine, MESSAGES)
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 1
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_stream_without_usage_has_no_usage_chunk(client):
    chunks = list(client.chat.completions.create(messages=MESSAGES, model="fake-model", stream=True,
                                                 max_tokens=3))
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_completion(client, engine):
    r = client.completions.create(model="fake-model", prompt="The sky is blue", temperature=0,
                                  max_tokens=50)
    assert r.object == "text_completion"
    assert r.choices[0].text == "The sky is blue" and r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens == len(engine.tokenizer.encode("The sky is blue"))


def test_completion_defaults_to_16_tokens(client, engine):
    r = client.completions.create(model="fake-model", prompt="a b c d e f g h i j k l m n o p q r s t",
                                  temperature=0, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 16 and r.choices[0].finish_reason == "length"


def test_completion_stream_with_logprobs(client, server):
    chunks = list(client.completions.create(model="fake-model", prompt="Hello brave new world",
                                            temperature=0, stream=True, logprobs=2,
                                            stream_options={"include_usage": True}))
    body = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].text for c in body) == "Hello brave new world"
    tokens = [t for c in body if c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    assert "".join(tokens) == "Hello brave new world<|im_end|>"  # the end token has a logprob too
    offsets = [o for c in body if c.choices[0].logprobs for o in c.choices[0].logprobs.text_offset]
    assert offsets == [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    first = body[0].choices[0].logprobs
    assert first.token_logprobs == [-0.25] and len(first.top_logprobs[0]) == 2
    raw = post(server, COMP, {"prompt": "Hi", "logprobs": 3, "stream": True, "max_tokens": 1})[1]
    assert "Infinity" not in raw and "-9999.0" in raw  # strict JSON: no non-finite numbers
    assert chunks[-1].usage.completion_tokens == len(tokens)


def test_completion_logprobs_legacy_format(client, engine):
    r = client.completions.create(model="fake-model", prompt="One two", temperature=0, logprobs=0)
    lp = r.choices[0].logprobs
    assert lp.tokens == ["One", " two", engine.tokenizer.eos_token]
    assert lp.token_logprobs == [-0.25] * 3 and lp.top_logprobs == [{}, {}, {}]
    assert lp.text_offset == [0, 3, 7]


def test_chat_logprobs(client):
    r = client.chat.completions.create(model="fake-model", messages=MESSAGES, temperature=0,
                                       logprobs=True, top_logprobs=3, max_tokens=4)
    content = r.choices[0].logprobs.content
    assert len(content) == 4 and r.usage.completion_tokens == 4
    assert "".join(c.token for c in content) == r.choices[0].message.content
    for c in content:
        assert c.logprob == -0.25 and bytes(c.bytes).decode() == c.token
        assert [t.logprob for t in c.top_logprobs] == [-0.5, -1.5, -9999.0]  # -inf: OpenAI's floor
    r = client.chat.completions.create(model="fake-model", messages=MESSAGES, logprobs=True, max_tokens=2)
    assert all(c.top_logprobs == [] for c in r.choices[0].logprobs.content)


def test_n_and_seed(client, engine):
    kw = dict(model="fake-model", messages=MESSAGES, temperature=0.8, n=3, seed=41)
    r = client.chat.completions.create(**kw)
    assert [c.index for c in r.choices] == [0, 1, 2]
    reqs = submitted(engine, r.id)
    assert len({q.request_id for q in reqs}) == 3
    assert sorted(q.sampling.seed for q in reqs) == [41, 42, 43]
    texts = [c.message.content for c in r.choices]
    assert len(set(texts)) == 3  # different seeds, different samples
    again = client.chat.completions.create(**kw)
    assert [c.message.content for c in again.choices] == texts  # same seeds, same samples
    one = client.chat.completions.create(**{**kw, "n": 1, "seed": 42})
    assert one.choices[0].message.content == texts[1]  # choice i used seed + i
    assert r.usage.prompt_tokens == len(engine.chat_prompt(MESSAGES))  # the prompt counts once


def test_n_stream(client):
    chunks = list(client.completions.create(model="fake-model", prompt="red green blue", n=2, seed=7,
                                            temperature=1.0, stream=True))
    texts = ["", ""]
    finished = set()
    for c in chunks:
        texts[c.choices[0].index] += c.choices[0].text
        if c.choices[0].finish_reason:
            finished.add(c.choices[0].index)
    assert finished == {0, 1} and all(texts)
    r = client.completions.create(model="fake-model", prompt="red green blue", n=2, seed=7, temperature=1.0)
    assert [c.text for c in r.choices] == texts


def test_unseeded_choices_get_distinct_random_seeds(client, engine):
    r = client.completions.create(model="fake-model", prompt="a b c", n=4, max_tokens=2)
    assert len({q.sampling.seed for q in submitted(engine, r.id)}) == 4


def test_stop(client):
    r = client.completions.create(model="fake-model", prompt="one two three four", temperature=0,
                                  stop=[" three", "zzz"])
    assert r.choices[0].text == "one two" and r.choices[0].finish_reason == "stop"
    r = client.chat.completions.create(model="fake-model", messages=MESSAGES, temperature=0, stop="user")
    assert r.choices[0].message.content.endswith("Hugging Face\n")
    chunks = list(client.completions.create(model="fake-model", prompt="one two three four",
                                            temperature=0, stop=" thr", stream=True))
    assert "".join(c.choices[0].text for c in chunks) == "one two"


def test_max_tokens(client, engine):
    r = client.chat.completions.create(model="fake-model", messages=MESSAGES, max_tokens=2)
    assert r.usage.completion_tokens == 2 and r.choices[0].finish_reason == "length"
    r = client.chat.completions.create(model="fake-model", messages=MESSAGES, max_completion_tokens=3,
                                       max_tokens=50)
    assert r.usage.completion_tokens == 3  # max_completion_tokens wins
    r = client.completions.create(model="fake-model", prompt="x y", max_tokens=10**12)
    (req,) = submitted(engine, r.id)
    assert req.max_tokens == engine.max_context - r.usage.prompt_tokens  # clamped to the context


def test_sampling_fields_reach_the_engine(client, engine):
    r = client.chat.completions.create(
        model="fake-model", messages=MESSAGES, temperature=0.5, top_p=0.9, frequency_penalty=0.5,
        presence_penalty=-0.5, max_tokens=3,
        extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1, "ignore_eos": True,
                    "stop_token_ids": [7, 9]})
    (req,) = submitted(engine, r.id)
    s = req.sampling
    assert (s.temperature, s.top_p, s.top_k, s.min_p) == (0.5, 0.9, 20, 0.05)
    assert (s.repetition_penalty, s.frequency_penalty, s.presence_penalty) == (1.1, 0.5, -0.5)
    assert req.ignore_eos and req.stop_token_ids == [7, 9] and req.logprobs is None
    r = client.completions.create(model="fake-model", prompt="hi", max_tokens=1, extra_body={"top_k": -1})
    assert submitted(engine, r.id)[0].sampling.top_k == 0  # -1: off


def test_defaults(client, engine):
    r = client.completions.create(model="fake-model", prompt="hi", max_tokens=1)
    (req,) = submitted(engine, r.id)
    s = req.sampling
    assert (s.temperature, s.top_p, s.top_k, s.min_p, s.repetition_penalty) == (1.0, 1.0, 0, 0.0, 1.0)
    assert req.stop == [] and not req.ignore_eos


def test_prompt_forms(client, engine):
    ids = engine.tokenizer.encode("alpha beta")
    r = client.completions.create(model="fake-model", prompt=ids, temperature=0)
    assert r.choices[0].text == "alpha beta"
    r = client.completions.create(model="fake-model", prompt=["alpha", "beta gamma"], temperature=0, n=2)
    assert [c.text for c in r.choices] == ["alpha", "alpha", "beta gamma", "beta gamma"]
    assert r.usage.prompt_tokens == len(engine.tokenizer.encode("alpha")) + len(
        engine.tokenizer.encode("beta gamma"))
    r = client.completions.create(model="fake-model", prompt=[ids, ids[:1]], temperature=0)
    assert [c.text for c in r.choices] == ["alpha beta", "alpha"]


def test_model_is_optional(server, engine):
    status, body = post(server, "/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 1})
    assert status == 200 and body["model"] == "fake-model"


def test_json_object(client, engine):
    r = client.chat.completions.create(model="fake-model", messages=MESSAGES, temperature=0,
                                       response_format={"type": "json_object"})
    (req,) = submitted(engine, r.id)
    assert JSON_INSTRUCTION in engine.tokenizer.decode(req.prompt_ids)
    asks = [{"role": "system", "content": "Answer in JSON."}, *MESSAGES]
    r = client.chat.completions.create(model="fake-model", messages=asks, max_tokens=1,
                                       response_format={"type": "json_object"})
    assert JSON_INSTRUCTION not in engine.tokenizer.decode(submitted(engine, r.id)[0].prompt_ids)


def test_json_answer_is_the_first_json_object():
    assert _json_answer('```json\n{"a": 1}\n```') == '{"a": 1}'
    assert _json_answer('  {"a": [1, 2]}\n') == '{"a": [1, 2]}'
    assert _json_answer('Sure: {"a": {"b": "}"}} is it. {"c": 2}') == '{"a": {"b": "}"}}'
    assert _json_answer('{broken {"ok": true}') == '{"ok": true}'
    assert _json_answer("```\nnot json\n```") == "```\nnot json\n```"
    assert _json_answer("[1, 2] {") == "[1, 2] {"
    deep = '{"a":' * 5000
    assert _json_answer(deep) == deep  # nested past the parser's depth: not an object


def test_developer_role_and_content_parts(client, engine):
    parts = [{"type": "text", "text": "Hi "}, {"type": "text", "text": "you"}]
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": parts}]
    r = client.chat.completions.create(model="fake-model", messages=messages, temperature=0)
    expected = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi you"}]
    assert r.choices[0].message.content == expected_echo(engine, expected)


def test_models_health_tokenize(client, server, engine):
    (card,) = client.models.list().data
    assert card.id == "fake-model" and card.owned_by == "tattletale"
    assert client.models.retrieve("fake-model") == card
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    assert post(server, "/health", b"", method="GET") == (200, {"status": "ok"})
    status, body = post(server, "/tokenize", {"prompt": "Hello world"})
    assert status == 200 and body == {"count": 2, "max_model_len": 256,
                                      "tokens": engine.tokenizer.encode("Hello world")}
    status, body = post(server, "/tokenize", {"messages": MESSAGES})
    assert body["tokens"] == engine.chat_prompt(MESSAGES)
    status, body = post(server, "/tokenize", {"messages": [{"role": "developer", "content": "x"}]})
    assert body["tokens"] == engine.chat_prompt([{"role": "system", "content": "x"}])
    status, body = post(server, "/detokenize", {"tokens": engine.tokenizer.encode("Hello world")})
    assert status == 200 and body == {"prompt": "Hello world"}
    assert post(server, "/detokenize", {"tokens": [10**6]})[0] == 400
    assert post(server, "/tokenize", {"prompt": "x", "messages": MESSAGES})[0] == 400


def test_metrics(client, server):
    client.completions.create(model="fake-model", prompt="count me", max_tokens=3)
    status, text = post(server, "/metrics", b"", method="GET")
    assert status == 200
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    assert values['tattletale_requests_total{finish_reason="length"}'] >= 1
    assert values["tattletale_time_to_first_token_seconds_count"] >= 1
    assert values["tattletale_inter_token_latency_seconds_count"] >= 2
    assert values["tattletale_e2e_request_latency_seconds_count"] >= 1
    for name in ("requests_running", "requests_waiting", "kv_pages_total", "kv_pages_used", "kv_pages_free",
                 "batch_tokens", "batch_sequences", "prefix_cache_pages", "prefix_cache_hit_rate",
                 "prefix_cache_queries_total", "prefix_cache_hits_total", "prompt_tokens_total",
                 "generation_tokens_total", "engine_steps_total", "preemptions_total"):
        assert "tattletale_" + name in values, name
    assert values["tattletale_kv_pages_total"] == 64
    assert 0 < values["tattletale_prefix_cache_hit_rate"] < 1


def test_engine_error(client, server, engine):
    engine.fail = "out of KV pages"
    try:
        with pytest.raises(openai.InternalServerError, match="out of KV pages"):
            client.completions.create(model="fake-model", prompt="x", max_tokens=2)
        with pytest.raises(openai.APIError, match="out of KV pages"):
            list(client.completions.create(model="fake-model", prompt="x", max_tokens=2, stream=True))
    finally:
        engine.fail = None


# errors: (path, body, status, code, param)
CHAT = "/v1/chat/completions"
COMP = "/v1/completions"
LONG = " ".join(["word"] * 400)
ERRORS = [
    (CHAT, b'{"messages": [', 400, "invalid_json", None),
    (CHAT, b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', 400, "invalid_json", None),
    (CHAT, b"", 400, "invalid_json", None),
    (CHAT, b"[1, 2]", 400, "invalid_json", None),
    (CHAT, b'{"messages": ' + b"[" * 100000 + b"]" * 100000 + b"}", 400, "invalid_json", None),
    (CHAT, {"messages": []}, 400, "invalid_value", "messages"),
    (CHAT, {}, 400, "missing_required_parameter", "messages"),
    (CHAT, {"messages": "hi"}, 400, "invalid_value", "messages"),
    (CHAT, {"messages": [{"role": "wizard", "content": "hi"}]}, 400, "invalid_value", "messages[0].role"),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     400, "invalid_value", "messages[0].content[0].type"),
    (CHAT, {"messages": MESSAGES, "temperature": 2.5}, 400, "invalid_value", "temperature"),
    (CHAT, {"messages": MESSAGES, "temperature": "hot"}, 400, "invalid_value", "temperature"),
    (CHAT, {"messages": MESSAGES, "top_p": 0}, 400, "invalid_value", "top_p"),
    (CHAT, {"messages": MESSAGES, "top_p": 1.5}, 400, "invalid_value", "top_p"),
    (CHAT, {"messages": MESSAGES, "n": 0}, 400, "invalid_value", "n"),
    (CHAT, {"messages": MESSAGES, "n": 1000}, 400, "invalid_value", "n"),
    (CHAT, {"messages": MESSAGES, "n": 2.0}, 400, "invalid_value", "n"),
    (CHAT, {"messages": MESSAGES, "max_tokens": 0}, 400, "invalid_value", "max_tokens"),
    (CHAT, {"messages": MESSAGES, "max_tokens": -5}, 400, "invalid_value", "max_tokens"),
    (CHAT, {"messages": MESSAGES, "frequency_penalty": 3}, 400, "invalid_value", "frequency_penalty"),
    (CHAT, {"messages": MESSAGES, "seed": 2**70}, 400, "invalid_value", "seed"),
    (CHAT, {"messages": MESSAGES, "stop": ["x"] * 40}, 400, "invalid_value", "stop"),
    (CHAT, {"messages": MESSAGES, "top_logprobs": 2}, 400, "invalid_value", None),
    (CHAT, {"messages": MESSAGES, "logprobs": True, "top_logprobs": 50}, 400, "invalid_value",
     "top_logprobs"),
    (CHAT, {"messages": MESSAGES, "stream_options": {"include_usage": True}}, 400, "invalid_value", None),
    (CHAT, {"messages": MESSAGES, "stream": True, "stream_options": {"bogus": 1}}, 400,
     "unknown_parameter", "stream_options.bogus"),
    (CHAT, {"messages": MESSAGES, "frobnicate": True}, 400, "unknown_parameter", "frobnicate"),
    (CHAT, {"messages": MESSAGES, "tools": [{"type": "function", "function": {"name": "f"}}]}, 400,
     "invalid_value", None),
    (CHAT, {"messages": MESSAGES, "response_format": {"type": "json_schema", "json_schema": {}}}, 400,
     "invalid_value", None),
    (CHAT, {"messages": MESSAGES, "logit_bias": {"5": 10}}, 400, "invalid_value", None),
    (CHAT, {"messages": MESSAGES, "temperature": float("nan")}, 400, None, None),
    (CHAT, {"messages": [{"role": "user", "content": LONG}]}, 400, "context_length_exceeded", "messages"),
    (CHAT, {"messages": MESSAGES, "model": "gpt-4o"}, 404, "model_not_found", "model"),
    (COMP, {"prompt": LONG}, 400, "context_length_exceeded", "prompt"),
    (COMP, {"prompt": ["ok", LONG]}, 400, "context_length_exceeded", "prompt"),
    (COMP, {"prompt": ""}, 400, "empty_prompt", "prompt"),
    (COMP, {"prompt": []}, 400, "invalid_value", None),
    (COMP, {"prompt": [1, 10**7]}, 400, "invalid_value", "prompt"),
    (COMP, {"prompt": [1, -1]}, 400, "invalid_value", "prompt[1]"),
    (COMP, {"prompt": [[1], [-1]]}, 400, "invalid_value", "prompt[1][0]"),
    (COMP, {"prompt": "x", "echo": True}, 400, "invalid_value", None),
    (COMP, {"prompt": "x", "suffix": "y"}, 400, "invalid_value", None),
    (COMP, {"prompt": "x", "best_of": 3}, 400, "invalid_value", None),
    (COMP, {"prompt": "x", "logprobs": True}, 400, "invalid_value", "logprobs"),
    (COMP, {"prompt": "x", "logprobs": 21}, 400, "invalid_value", "logprobs"),
    (COMP, {"prompt": "x", "messages": MESSAGES}, 400, "unknown_parameter", "messages"),
    (COMP, {"prompt": 5}, 400, "invalid_value", "prompt"),
    ("/tokenize", {}, 400, "invalid_value", None),
    ("/v1/nothing", {}, 404, None, None),
]


@pytest.mark.parametrize("path,body,status,code,param", ERRORS, ids=[str(i) for i in range(len(ERRORS))])
def test_errors(server, path, body, status, code, param):
    got, answer = post(server, path, body)
    assert got == status, answer
    error = answer["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error")
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error


def test_errors_through_the_client(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": LONG}])
    assert info.value.code == "context_length_exceeded" and "256" in info.value.message
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="fake-model", messages=MESSAGES, temperature=-1)


def test_method_body_and_content_type(server):
    assert post(server, CHAT, b"", method="GET")[0] == 405
    status, body = post(server, CHAT, b"x" * (17 * 2**20))
    assert status == 413 and body["error"]["code"] == "body_too_large"
    # curl -d sends a form content type: read as JSON all the same
    status, _ = post(server, COMP, {"prompt": "hi", "max_tokens": 1},
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200


def test_openapi_document(server):
    status, doc = post(server, "/openapi.json", b"", method="GET")
    assert status == 200
    op = doc["paths"]["/v1/chat/completions"]["post"]
    ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.rsplit("/", 1)[1] in doc["components"]["schemas"]
    assert "ChatMessage" in doc["components"]["schemas"]


# authentication

@pytest.fixture(scope="module")
def auth_server(engine):
    live = LiveServer(create_app(FakeEngine(), api_key="s3cret"))
    yield live
    live.stop()


def test_auth(auth_server):
    assert post(auth_server, "/health", b"", method="GET")[0] == 200
    for path, method in (("/v1/models", "GET"), ("/metrics", "GET"), ("/openapi.json", "GET"),
                         (COMP, "POST"), ("/tokenize", "POST")):
        status, body = post(auth_server, path, b"{}", method=method)
        assert status == 401 and body["error"]["code"] == "invalid_api_key", path
        status, _ = post(auth_server, path, b"{}", {"Authorization": "Bearer wrong"}, method=method)
        assert status == 401
    assert post(auth_server, "/v1/models", b"", {"Authorization": "Bearer s3cret"}, method="GET")[0] == 200
    bad = openai.OpenAI(base_url=auth_server.url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    good = openai.OpenAI(base_url=auth_server.url + "/v1", api_key="s3cret", max_retries=0)
    r = good.chat.completions.create(model="fake-model", messages=MESSAGES, max_tokens=2)
    assert r.usage.completion_tokens == 2


# loading in the background

def test_health_while_loading(bundled_gguf):
    release = threading.Event()
    loaded = FakeEngine()

    def load():
        release.wait(30)
        return loaded

    live = LiveServer(create_app(load=load))
    try:
        assert post(live, "/health", b"", method="GET") == (503, {"status": "loading"})
        status, body = post(live, COMP, {"prompt": "hi"})
        assert status == 503 and body["error"]["code"] == "model_loading"
        release.set()
        deadline = time.monotonic() + 10
        while post(live, "/health", b"", method="GET")[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert loaded.started and post(live, COMP, {"prompt": "hi", "max_tokens": 1})[0] == 200
    finally:
        live.stop()
    assert loaded.shut_down


def test_load_failure(bundled_gguf):
    failures = []

    def load():
        raise RuntimeError("no such model")

    live = LiveServer(create_app(load=load, on_load_error=failures.append))
    try:
        deadline = time.monotonic() + 10
        while not failures:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        health = post(live, "/health", b"", method="GET")
        assert health == (503, {"status": "error", "error": "no such model"})
        status, body = post(live, COMP, {"prompt": "hi"})
        assert status == 503 and "no such model" in body["error"]["message"]
    finally:
        live.stop()


# client disconnects

@pytest.fixture
def slow_server(bundled_gguf):
    engine = FakeEngine(max_context=256, step_delay=0.02)
    live = LiveServer(create_app(engine))
    yield live, engine
    live.stop()


def _raw_request(live, body: dict) -> socket.socket:
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", live.port), timeout=10)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    return sock


def _wait_cancelled(engine: FakeEngine, count: int) -> list[str]:
    deadline = time.monotonic() + 10
    while len(engine.cancelled) < count:
        assert time.monotonic() < deadline, "the engine was not told to cancel"
        time.sleep(0.01)
    return engine.cancelled


def test_stream_disconnect_cancels(slow_server):
    live, engine = slow_server
    sock = _raw_request(live, {"prompt": "tick tock", "stream": True, "n": 2, "ignore_eos": True,
                               "max_tokens": 200})
    received = b""
    while b"data: " not in received:  # until streaming has begun
        chunk = sock.recv(4096)
        assert chunk, received
        received += chunk
    sock.close()
    cancelled = _wait_cancelled(engine, 2)
    assert sorted(r.request_id for r in engine.submitted) == sorted(cancelled)
    time.sleep(0.1)
    assert engine.metrics().requests_running == 0


def test_non_streaming_disconnect_cancels(slow_server):
    live, engine = slow_server
    sock = _raw_request(live, {"prompt": "tick tock", "ignore_eos": True, "max_tokens": 200})
    deadline = time.monotonic() + 10
    while not engine.submitted:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    sock.close()
    assert _wait_cancelled(engine, 1) == [engine.submitted[0].request_id]


def test_finished_requests_are_not_cancelled(slow_server):
    live, engine = slow_server
    status, _ = post(live, COMP, {"prompt": "a b", "max_tokens": 3})
    assert status == 200
    time.sleep(0.1)
    assert engine.cancelled == []


def test_shutdown_lets_streams_end(slow_server):
    """Stopping the runtime (what SIGTERM does) while a stream runs: the engine cancels what the
    timeout does not let finish, and the stream still ends properly."""
    live, engine = slow_server
    runtime = live.server.config.app.state.runtime
    runtime.shutdown_timeout = 0.1
    client = openai.OpenAI(base_url=live.url + "/v1", api_key="x", max_retries=0)
    stream = client.completions.create(model="fake-model", prompt="tick", stream=True, max_tokens=200,
                                       extra_body={"ignore_eos": True})
    first = next(iter(stream))
    assert first.choices[0].text
    asyncio.run_coroutine_threadsafe(runtime.stop(), live.loop).result(10)
    rest = list(stream)
    assert rest[-1].choices[0].finish_reason == "abort"
    assert post(live, "/health", b"", method="GET") == (503, {"status": "shutting_down"})
    assert post(live, COMP, {"prompt": "hi"})[1]["error"]["code"] == "shutting_down"
