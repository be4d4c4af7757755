"""Chat and legacy completions: OpenAI requests → engine Requests, engine Outputs → OpenAI responses
(whole, or streamed as chunks).

Policies (docs/server.md explains them to users):
* max_tokens is clamped to what the context leaves after the prompt; without it, chat generates
  until the context is full and legacy completions stop at 16 tokens (OpenAI's default).
* a prompt that leaves no room for one token is a 400 `context_length_exceeded`.
* with a seed, choice i samples with seed + i; without one, each choice gets a random seed.
* `response_format: json_object` adds a system instruction (unless a message already asks for
  JSON) and answers with the first JSON object in the output; the output is not constrained.
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from jinja2 import TemplateError
from starlette.responses import JSONResponse, Response

from tattletale.engine.request import Output, Request, TokenLogprob
from tattletale.kernels.sampling import SamplingParams

from .errors import APIError, error_body
from .runtime import EngineLike, Generation, Runtime
from .schemas import ChatCompletionRequest, ChatMessage, CompletionRequest, SamplingFields
from .streaming import DONE, event, sse_response

LEGACY_DEFAULT_MAX_TOKENS = 16
JSON_INSTRUCTION = "Respond with a single valid JSON object and nothing else."
JSON_ATTEMPTS = 16
LOGPROB_FLOOR = -9999.0


def check_model(engine: EngineLike, model: str | None) -> None:
    if model is not None and model != engine.model_name:
        raise APIError(404, f"The model {model!r} does not exist; this server serves "
                       f"{engine.model_name!r}", "model", "model_not_found")


def check_fits(engine: EngineLike, ids: list[int], param: str) -> None:
    if not ids:
        raise APIError(400, "The prompt is empty", param, "empty_prompt")
    if len(ids) + 1 > engine.max_context:
        raise APIError(400, f"This model's maximum context length is {engine.max_context} tokens, but "
                       f"the prompt has {len(ids)} tokens (and at least one must be left for the "
                       f"completion)", param, "context_length_exceeded")


def check_vocab(engine: EngineLike, ids: list[int], param: str) -> None:
    vocab = engine.tokenizer.vocab_size
    if any(t >= vocab for t in ids):
        raise APIError(400, f"Token ids must be below the vocabulary size, {vocab}", param, "invalid_value")


def _requests(body: SamplingFields, prompts: list[list[int]], engine: EngineLike, max_tokens: int | None,
              logprobs: int | None, rid: str) -> list[Request]:
    """n engine Requests per prompt; choice i (prompt p, sample j: i = p·n + j) gets seed + i."""
    out = []
    for p, ids in enumerate(prompts):
        room = engine.max_context - len(ids)
        for j in range(body.n):
            i = p * body.n + j
            seed = (body.seed + i) % 2**32 if body.seed is not None else secrets.randbits(32)
            sampling = SamplingParams(
                temperature=1.0 if body.temperature is None else body.temperature,
                top_k=max(body.top_k or 0, 0), top_p=1.0 if body.top_p is None else body.top_p,
                min_p=body.min_p or 0.0,
                repetition_penalty=1.0 if body.repetition_penalty is None else body.repetition_penalty,
                frequency_penalty=body.frequency_penalty or 0.0,
                presence_penalty=body.presence_penalty or 0.0, seed=seed)
            out.append(Request(prompt_ids=list(ids), sampling=sampling,
                               max_tokens=min(max_tokens or room, room), stop=body.stop_list(),
                               stop_token_ids=list(body.stop_token_ids or []), ignore_eos=body.ignore_eos,
                               logprobs=logprobs, request_id=f"{rid}-{i}"))
    return out


@dataclass
class _Choice:
    """One choice's Outputs, accumulated."""

    text: list[str] = field(default_factory=list)
    tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    cached: int = 0

    def add(self, out: Output) -> None:
        self.text.append(out.text)
        self.tokens += len(out.token_ids)
        self.logprobs.extend(out.logprobs or [])
        self.cached = max(self.cached, out.cached_tokens)
        if out.finished:
            self.finish_reason = out.finish_reason or "stop"


def _usage(prompts: list[list[int]], n: int, completion_tokens: int, cached: list[int]) -> dict:
    """Each prompt counts once however many choices it has; its cached tokens are the fewest any of
    its choices found in the prefix cache."""
    prompt_tokens = sum(len(p) for p in prompts)
    cached_tokens = sum(min(cached[p * n:(p + 1) * n]) for p in range(len(prompts)))
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


class _Tokens:
    """Token ids as the text OpenAI's logprobs show (special tokens by name)."""

    def __init__(self, engine: EngineLike):
        self.tok = engine.tokenizer
        self.cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self.cache.get(token_id)
        if text is None:
            text = self.cache[token_id] = self.tok.decode([token_id], skip_special=False)
        return text

    def chat(self, logprobs: list[TokenLogprob]) -> list[dict]:
        def entry(token_id: int, logprob: float) -> dict:
            s = self(token_id)
            return {"token": s, "logprob": _finite(logprob), "bytes": list(s.encode())}
        return [{**entry(lp.token_id, lp.logprob), "top_logprobs": [entry(t, v) for t, v in lp.top]}
                for lp in logprobs]

    def legacy(self, logprobs: list[TokenLogprob], offset: int) -> dict:
        """The legacy completions format; text offsets count from `offset` characters."""
        tokens = [self(lp.token_id) for lp in logprobs]
        offsets = []
        for t in tokens:
            offsets.append(offset)
            offset += len(t)
        return {"tokens": tokens, "token_logprobs": [_finite(lp.logprob) for lp in logprobs],
                "top_logprobs": [{self(t): _finite(v) for t, v in lp.top} for lp in logprobs],
                "text_offset": offsets}


def _finite(logprob: float) -> float:
    """A logprob JSON can carry: an impossible token (-inf) gets OpenAI's floor, -9999."""
    value = float(logprob)
    return value if math.isfinite(value) else LOGPROB_FLOOR


def _fail(out: Output) -> APIError:
    return APIError(500, f"Generation failed: {out.error}", code="engine_error", type="server_error")


def _error_event(out: Output) -> str:
    """A failure after a stream began: an error event (the status line has been sent already)."""
    err = _fail(out)
    return event(error_body(err.message, err.type, err.param, err.code))


def _json_answer(text: str) -> str:
    """The first JSON object in the answer, without the code fence or prose small models put
    around it; the text unchanged when it holds none (the output is not constrained). Only the
    first few candidate braces are tried, which bounds the time on long non-JSON answers."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    for _ in range(JSON_ATTEMPTS):
        if start < 0:
            break
        try:
            value, end = decoder.raw_decode(text, start)
            if isinstance(value, dict):
                return text[start:end]
        except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
            pass
        start = text.find("{", start + 1)
    return text


def template_messages(messages: list[ChatMessage]) -> list[dict]:
    """Messages for the chat template ("developer" is OpenAI's newer name for "system")."""
    out = []
    for m in messages:
        msg = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        if m.name is not None:
            msg["name"] = m.name
        out.append(msg)
    return out


def _chat_messages(body: ChatCompletionRequest) -> list[dict]:
    """The request's messages, with the JSON instruction when json_object asks for it."""
    messages = template_messages(body.messages)
    wants_json = body.response_format is not None and body.response_format.type == "json_object"
    if wants_json and not any("json" in m["content"].lower() for m in messages):
        if messages[0]["role"] == "system":
            messages[0]["content"] += "\n\n" + JSON_INSTRUCTION
        else:
            messages.insert(0, {"role": "system", "content": JSON_INSTRUCTION})
    return messages


async def render(engine: EngineLike, messages: list[dict]) -> list[int]:
    """The chat prompt's ids, rendered and tokenized off the event loop."""
    try:
        return await asyncio.to_thread(engine.chat_prompt, messages)
    except TemplateError as exc:
        raise APIError(400, f"The model's chat template rejected the messages: {exc}", "messages",
                       "invalid_messages") from None


async def chat_completion(runtime: Runtime, body: ChatCompletionRequest,
                          receive: Callable[[], Awaitable[dict]]) -> Response:
    engine = runtime.require()
    check_model(engine, body.model)
    ids = await render(engine, _chat_messages(body))
    check_fits(engine, ids, "messages")
    k = (body.top_logprobs or 0) if body.logprobs else None
    rid = f"chatcmpl-{uuid.uuid4().hex}"
    max_tokens = body.max_completion_tokens or body.max_tokens
    requests = _requests(body, [ids], engine, max_tokens, k, rid)
    gen = Generation(runtime, requests, receive, "messages").start()
    head = {"id": rid, "created": int(time.time()), "model": engine.model_name}
    tokens = _Tokens(engine)
    if body.stream:
        usage = body.stream_options is not None and body.stream_options.include_usage
        return sse_response(_chat_stream(gen, head, tokens, [ids], body.n, usage))
    choices = [_Choice() for _ in range(body.n)]
    async with gen:
        async for i, out in gen:
            if out.error:
                raise _fail(out)
            choices[i].add(out)
    json_mode = body.response_format is not None and body.response_format.type == "json_object"
    result = []
    for i, c in enumerate(choices):
        text = "".join(c.text)
        result.append({"index": i,
                       "message": {"role": "assistant", "content": _json_answer(text) if json_mode else text},
                       "logprobs": {"content": tokens.chat(c.logprobs)} if k is not None else None,
                       "finish_reason": c.finish_reason})
    usage = _usage([ids], body.n, sum(c.tokens for c in choices), [c.cached for c in choices])
    return JSONResponse({**head, "object": "chat.completion", "choices": result, "usage": usage})


async def _chat_stream(gen: Generation, head: dict, tokens: _Tokens, prompts: list[list[int]], n: int,
                       include_usage: bool) -> AsyncIterator[str]:
    head = {**head, "object": "chat.completion.chunk"}
    extra = {"usage": None} if include_usage else {}

    def chunk(i: int, delta: dict, logprobs: list[TokenLogprob] | None = None,
              finish: str | None = None) -> str:
        choice = {"index": i, "delta": delta,
                  "logprobs": {"content": tokens.chat(logprobs)} if logprobs else None,
                  "finish_reason": finish}
        return event({**head, "choices": [choice], **extra})

    choices = [_Choice() for _ in range(n)]
    async with gen:
        for i in range(n):
            yield chunk(i, {"role": "assistant", "content": ""})
        async for i, out in gen:
            if out.error:
                yield _error_event(out)
                yield DONE
                return
            choices[i].add(out)
            if out.text or out.logprobs:
                yield chunk(i, {"content": out.text}, out.logprobs)
            if out.finished:
                yield chunk(i, {}, finish=choices[i].finish_reason)
    if include_usage:
        usage = _usage(prompts, n, sum(c.tokens for c in choices), [c.cached for c in choices])
        yield event({**head, "choices": [], "usage": usage})
    yield DONE


async def _prompt_ids(engine: EngineLike, body: CompletionRequest) -> list[list[int]]:
    prompts = []
    for prompt in body.prompts():
        if isinstance(prompt, str):
            ids = await asyncio.to_thread(engine.tokenizer.encode, prompt)
        else:
            check_vocab(engine, prompt, "prompt")
            ids = list(prompt)
        check_fits(engine, ids, "prompt")
        prompts.append(ids)
    return prompts


async def completion(runtime: Runtime, body: CompletionRequest,
                     receive: Callable[[], Awaitable[dict]]) -> Response:
    engine = runtime.require()
    check_model(engine, body.model)
    prompts = await _prompt_ids(engine, body)
    rid = f"cmpl-{uuid.uuid4().hex}"
    max_tokens = body.max_tokens or LEGACY_DEFAULT_MAX_TOKENS
    requests = _requests(body, prompts, engine, max_tokens, body.logprobs, rid)
    gen = Generation(runtime, requests, receive, "prompt").start()
    head = {"id": rid, "created": int(time.time()), "model": engine.model_name}
    tokens = _Tokens(engine)
    count = len(prompts) * body.n
    if body.stream:
        usage = body.stream_options is not None and body.stream_options.include_usage
        return sse_response(_completion_stream(gen, head, tokens, prompts, body.n, body.logprobs is not None,
                                               usage))
    choices = [_Choice() for _ in range(count)]
    async with gen:
        async for i, out in gen:
            if out.error:
                raise _fail(out)
            choices[i].add(out)
    result = [{"index": i, "text": "".join(c.text),
               "logprobs": tokens.legacy(c.logprobs, 0) if body.logprobs is not None else None,
               "finish_reason": c.finish_reason} for i, c in enumerate(choices)]
    usage = _usage(prompts, body.n, sum(c.tokens for c in choices), [c.cached for c in choices])
    return JSONResponse({**head, "object": "text_completion", "choices": result, "usage": usage})


async def _completion_stream(gen: Generation, head: dict, tokens: _Tokens, prompts: list[list[int]], n: int,
                             logprobs: bool, include_usage: bool) -> AsyncIterator[str]:
    head = {**head, "object": "text_completion"}
    extra = {"usage": None} if include_usage else {}
    choices = [_Choice() for _ in range(len(prompts) * n)]
    offsets = [0] * len(choices)  # characters of each choice's logprob tokens so far
    async with gen:
        async for i, out in gen:
            if out.error:
                yield _error_event(out)
                yield DONE
                return
            choices[i].add(out)
            lp = None
            if logprobs:
                lp = tokens.legacy(out.logprobs or [], offsets[i])
                offsets[i] += sum(len(t) for t in lp["tokens"])
            if out.text or out.token_ids or out.finished:
                finish = choices[i].finish_reason if out.finished else None
                yield event({**head, "choices": [{"index": i, "text": out.text, "logprobs": lp,
                                                  "finish_reason": finish}], **extra})
    if include_usage:
        usage = _usage(prompts, n, sum(c.tokens for c in choices), [c.cached for c in choices])
        yield event({**head, "choices": [], "usage": usage})
    yield DONE
