"""The engine (continuous batching over paged KV memory with the prefix cache) on a tiny random
Llama, on every CPU backend: batching, chunked prefill, prefix re-use and preemption must be
invisible in the outputs (greedy, token for token), pages must never leak, and an idle engine
thread must sleep.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from tiny_models import write_hf

import tattletale as tt
from tattletale.engine.core import Engine
from tattletale.engine.request import Output, Request
from tattletale.kernels.sampling import SamplingParams
from tattletale.models import open_model
from tattletale.models.llama import LlamaModel

CONTEXT = 1024
BACKENDS = ["opencl", "vulkan", "webgpu", "cuda"]
GREEDY = SamplingParams(temperature=0.0)


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    return open_model(write_hf(tmp_path_factory.mktemp("tiny"), seed=3,
                               max_position_embeddings=CONTEXT))


_models: dict[str, LlamaModel] = {}


def engine_on(backend: str, tiny_file, **options) -> Engine:
    try:
        dev = tt.device(backend)
    except Exception as exc:
        pytest.skip(f"{backend}: {str(exc).splitlines()[0]}")
    if backend not in _models:
        _models[backend] = LlamaModel(dev, tiny_file)
    options.setdefault("kv_memory", 256 * _models[backend].kv_layout(16).bytes_per_page)
    return Engine(_models[backend], tiny_file.tokenizer(), tiny_file.chat_template(),
                  eos_ids=set(), **options)


def run(engine: Engine, requests: list[Request]) -> dict[str, list[Output]]:
    """Submit all requests at once and step until every one has finished."""
    outs: dict[str, list[Output]] = {r.request_id: [] for r in requests}
    for r in requests:
        engine.submit(r, outs[r.request_id].append)
    while engine.step():
        pass
    assert all(o[-1].finished for o in outs.values())
    return outs


def ids(outputs: list[Output]) -> list[int]:
    return [t for o in outputs for t in o.token_ids]


def assert_no_leaks(engine: Engine) -> None:
    """Idle: every page is free or the prefix cache's; evicting everything empties the pool."""
    engine.scheduler.verify()
    cached = engine.prefix_cache.n_pages if engine.prefix_cache is not None else 0
    assert engine.pool.n_used == cached
    if engine.prefix_cache is not None:
        engine.prefix_cache.evict(engine.pool.n_pages)
    assert engine.pool.n_free == engine.pool.n_pages


def random_requests(seed: int, n: int, max_prompt: int = 200) -> list[Request]:
    rng = np.random.default_rng(seed)
    return [Request(rng.integers(0, 256, int(rng.integers(1, max_prompt))).tolist(), GREEDY,
                    int(rng.integers(1, 24)), ignore_eos=True) for _ in range(n)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_batching_is_invisible(backend, tiny_file):
    """16 concurrent requests of different lengths, with a small token budget per step (prompts
    are prefilled in chunks, long ones through the prefill kernel and short ones as decode rows,
    mixed with other sequences' decode steps) give the greedy outputs of the same requests run
    one at a time."""
    batched = engine_on(backend, tiny_file, max_batch_tokens=100, prefix_cache=False)
    reqs = random_requests(1, 16)
    together = run(batched, reqs)
    assert batched.metrics().steps_total < sum(r.max_tokens for r in reqs)  # it did batch
    alone = engine_on(backend, tiny_file, prefix_cache=False)
    for r in reqs:
        single = run(alone, [Request(r.prompt_ids, GREEDY, r.max_tokens, ignore_eos=True)])
        assert ids(together[r.request_id]) == ids(next(iter(single.values())))
        assert len(ids(together[r.request_id])) == r.max_tokens
    assert_no_leaks(batched)


@pytest.mark.parametrize("backend", BACKENDS)
def test_prefix_cache_is_invisible(backend, tiny_file):
    """A second prompt sharing 0, page−1, page, page+1, … tokens with a first one re-uses exactly
    the shared whole pages, and its greedy output equals that of an engine without the cache."""
    cached = engine_on(backend, tiny_file)
    plain = engine_on(backend, tiny_file, prefix_cache=False)
    page = cached.pool.page_size
    rng = np.random.default_rng(7)
    base = rng.integers(0, 256, 3 * page + 5).tolist()
    for shared in (0, page - 1, page, page + 1, 2 * page, 2 * page + 1, 3 * page + 5):
        second = base[:shared] + rng.integers(0, 256, 9).tolist()
        for engine in (cached, plain):
            run(engine, [Request(base, GREEDY, 3, ignore_eos=True)])
        got = run(cached, [Request(second, GREEDY, 6, ignore_eos=True)])
        want = run(plain, [Request(second, GREEDY, 6, ignore_eos=True)])
        (g,), (w,) = got.values(), want.values()
        assert ids(g) == ids(w), shared
        assert g[-1].cached_tokens == min(shared, len(second) - 1) // page * page, shared
    assert_no_leaks(cached)


def test_memory_pressure_preempts_and_recovers(tiny_file):
    """Far fewer KV pages than the running requests need: the newest are preempted and
    recomputed later; every request still completes with the output it has alone."""
    engine = engine_on("opencl", tiny_file)
    small = engine_on("opencl", tiny_file, kv_memory=14 * engine.kv.layout.bytes_per_page)
    reqs = [Request(r.prompt_ids[:60], GREEDY, 30, ignore_eos=True) for r in random_requests(2, 8)]
    together = run(small, reqs)
    assert small.metrics().preemptions > 0
    for r in reqs:
        (single,) = run(engine, [Request(r.prompt_ids, GREEDY, r.max_tokens, ignore_eos=True)]).values()
        assert ids(together[r.request_id]) == ids(single)
    assert_no_leaks(small)


def test_cancel_ends_a_request_and_frees_its_pages(tiny_file):
    engine = engine_on("opencl", tiny_file)
    reqs = random_requests(3, 3)
    for r in reqs:
        r.max_tokens = 40
    outs = {r.request_id: [] for r in reqs}
    for r in reqs:
        engine.submit(r, outs[r.request_id].append)
    for _ in range(3):
        engine.step()
    engine.cancel(reqs[1].request_id)
    engine.cancel("no-such-request")
    while engine.step():
        pass
    assert outs[reqs[1].request_id][-1].finish_reason == "abort"
    assert len(ids(outs[reqs[1].request_id])) < 40
    assert [outs[r.request_id][-1].finish_reason for r in (reqs[0], reqs[2])] == ["length"] * 2
    assert_no_leaks(engine)


def test_logprobs_and_stop_token_ids(tiny_file):
    """Log-probabilities are those of the model's logits (checked against a plain forward pass);
    a stop token id ends the request."""
    engine = engine_on("opencl", tiny_file)
    prompt = list(range(40, 70))
    (out,) = run(engine, [Request(prompt, GREEDY, 5, ignore_eos=True, logprobs=3)]).values()
    tokens = ids(out)
    lps = [lp for o in out for lp in o.logprobs or []]
    assert [lp.token_id for lp in lps] == tokens
    model = engine.model
    cache = model.new_cache(64)
    logits = model.forward(prompt + tokens[:-1], cache, all_logits=True).numpy()[len(prompt) - 1:]
    for row, lp in zip(logits.astype(np.float64), lps):
        ref = row - row.max() - np.log(np.exp(row - row.max()).sum())
        assert abs(lp.logprob - ref[lp.token_id]) < 1e-4
        assert [t for t, _ in lp.top] == np.argsort(-ref, kind="stable")[:3].tolist()
        assert lp.top[0][0] == lp.token_id  # greedy picks the most likely
    (stopped,) = run(engine, [Request(prompt, GREEDY, 5, stop_token_ids=[tokens[2]])]).values()
    assert ids(stopped) == tokens[:3] and stopped[-1].finish_reason == "stop"


def test_idle_engine_thread_sleeps_and_wakes(tiny_file):
    """With nothing to do the engine thread blocks (no CPU); a request wakes it at once."""
    engine = engine_on("opencl", tiny_file)
    run(engine, [Request([1, 2, 3], GREEDY, 2, ignore_eos=True)])  # compile outside the timing
    engine.start()
    try:
        time.sleep(0.2)
        thread = engine._thread
        cpu0, t0 = time.process_time(), time.monotonic()
        time.sleep(1.5)
        cpu = time.process_time() - cpu0
        assert thread.is_alive()
        assert cpu < 0.05 * (time.monotonic() - t0), f"idle engine used {cpu:.3f} s of CPU"
        done = threading.Event()
        outs: list[Output] = []

        def sink(o: Output) -> None:
            outs.append(o)
            if o.finished:
                done.set()

        engine.submit(Request([5, 6, 7], GREEDY, 4, ignore_eos=True), sink)
        assert done.wait(30)
        assert len(ids(outs)) == 4
    finally:
        engine.shutdown(timeout=5)
    assert not thread.is_alive()
    assert_no_leaks(engine)
