"""The real SmolLM2-135M-Instruct GGUF (Q4_1, bundled) against HF transformers loading the same
file, and the `tt.LLM` Python API (generate, stream, chat prompts, stop strings, seeds, prefix
re-use, interruption, context limits) on it and on tiny HF/GGUF models.

Tolerance of the logit comparison. Our Q4_1 and Q8_0 block decoding is exact (HF dequantizes
the same blocks to the same f32 values), so the two runs compute the same function and differ
only by f32 rounding in a different accumulation order: a dot product of length K carries a
relative error of about sqrt(K)·2⁻²⁴ (~2e-6 for K = 1536), compounded through 30 layers of
residual sums, norms and softmax. Measured on PoCL, Vulkan (lavapipe) and WebGPU, the largest
difference over the 64 positions is ~8e-6 of the row's logit scale (max |logit|, ~35 here);
TOLERANCE = 1e-4 of the scale leaves >10x headroom, while real bugs (a wrong weight layout,
an off-by-one position, a missing norm) move logits by whole units. Top-1 may differ only where
HF's two best logits are within that same tolerance (a tie in float32 terms).
"""

from __future__ import annotations

import numpy as np
import pytest
from tiny_models import write_gguf, write_hf

import tattletale as tt
from tattletale.engine.llm import ContextOverflow
from tattletale.models import open_model
from tattletale.models.llama import LlamaModel
from tattletale.models.tokenizer import render_chat

TOLERANCE = 1e-4  # of the logit scale (see the module doc)
TEXT = ("The history of the printing press begins in the fifteenth century, when Johannes "
        "Gutenberg combined movable metal type, oil-based ink and a wooden screw press. Within "
        "fifty years, presses had spread to more than two hundred cities across Europe, and the "
        "price of books fell sharply. Literacy rose, new ideas travelled faster than ever before.")
PARIS = "The capital of France is"
# default run: OpenCL (PoCL); the other CPU backends take ~15 s more each (kernel compilation)
BACKENDS = [pytest.param("opencl"), pytest.param("vulkan", marks=pytest.mark.slow),
            pytest.param("webgpu", marks=pytest.mark.slow)]
CONTEXT = 512  # the test LLMs' context: small KV caches


def _device(backend: str) -> tt.Device:
    try:
        return tt.device(backend)
    except Exception as exc:
        pytest.skip(f"{backend}: {str(exc).splitlines()[0]}")


@pytest.fixture(scope="module")
def llm(bundled_gguf):
    _device("opencl")
    return tt.LLM(str(bundled_gguf), backend="opencl", max_context=CONTEXT)


@pytest.fixture(scope="module")
def sequence(bundled_gguf) -> list[int]:
    ids = open_model(bundled_gguf).tokenizer().encode(TEXT)
    assert len(ids) >= 64
    return ids[:64]


@pytest.fixture(scope="module")
def hf_model(bundled_gguf):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # transformers needs it to load GGUF files
    model = transformers.AutoModelForCausalLM.from_pretrained(
        bundled_gguf.parent, gguf_file=bundled_gguf.name, dtype=torch.float32).eval()
    return model


def _hf_logits(hf_model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return hf_model(torch.tensor([ids])).logits[0].double().numpy()


@pytest.fixture(scope="module")
def hf_reference(hf_model, sequence) -> np.ndarray:
    return _hf_logits(hf_model, sequence)


def _check_logits(got: np.ndarray, ref: np.ndarray, what: str) -> None:
    scale = np.abs(ref).max(axis=1)
    rel = np.abs(got - ref).max(axis=1) / scale
    assert rel.max() < TOLERANCE, f"{what}: logits differ by {rel.max():.2e} of the scale"
    ours, theirs = got.argmax(axis=1), ref.argmax(axis=1)
    wrong = np.flatnonzero(ours != theirs)
    assert len(wrong) <= 1, f"{what}: top-1 differs at positions {wrong}"  # ≥ 63 of 64 agree
    for pos in wrong:  # only at float32 ties of HF's two best
        margin = ref[pos, theirs[pos]] - ref[pos, ours[pos]]
        assert margin < TOLERANCE * scale[pos], f"{what}: position {pos}, margin {margin}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_smollm2_teacher_forced_matches_hf(backend, bundled_gguf, sequence, hf_reference):
    """64 fixed tokens, teacher-forced: the first 48 through the prefill path (one call), the
    last 16 through the decode path (one token per call); top-1 and logits against HF."""
    model = LlamaModel(_device(backend), open_model(bundled_gguf))
    cache = model.new_cache(128)
    rows = [model.forward(sequence[:48], cache, all_logits=True).numpy()]
    rows += [model.forward([t], cache).numpy() for t in sequence[48:]]
    _check_logits(np.concatenate(rows).astype(np.float64), hf_reference, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_smollm2_greedy_matches_hf(backend, bundled_gguf, hf_model):
    """tt.LLM's greedy decoding (recorded decode steps with on-device sampling) picks HF's
    argmax at every step, and says " Paris"."""
    _device(backend)
    llm = tt.LLM(str(bundled_gguf), backend=backend, max_context=CONTEXT, kv_dtype="f32")
    prompt = llm.tokenizer.encode(PARIS)
    out = llm.generate(prompt, max_tokens=24, temperature=0, ignore_eos=True)
    assert out.text.startswith(" Paris")
    ref = _hf_logits(hf_model, prompt + out.ids)[len(prompt) - 1:-1]
    for step, (token, row) in enumerate(zip(out.ids, ref)):
        best = int(row.argmax())
        assert token == best or row[best] - row[token] < TOLERANCE * np.abs(row).max(), \
            f"step {step}: {token} vs HF {best}"


# --- the Python API --------------------------------------------------------------------------


def test_generate_returns_text_ids_and_stats(llm):
    out = llm.generate(PARIS, max_tokens=8, temperature=0)
    assert out.text.startswith(" Paris")
    assert 1 <= len(out.ids) <= 8
    assert out.finish_reason in ("stop", "length")
    assert llm.tokenizer.decode(out.ids) == out.text
    assert out.stats.prompt_tokens == len(llm.tokenizer.encode(PARIS))
    assert out.stats.generated_tokens == len(out.ids)
    assert out.stats.prefill_tps > 0


def test_prompt_as_ids_or_text(llm):
    a = llm.generate(PARIS, max_tokens=6, temperature=0)
    b = llm.generate(llm.tokenizer.encode(PARIS), max_tokens=6, temperature=0)
    assert a.ids == b.ids and a.text == b.text


def test_stream_yields_the_generated_text(llm):
    pieces = list(llm.stream(PARIS, max_tokens=12, temperature=0, ignore_eos=True))
    assert all(isinstance(p, str) and p for p in pieces)
    assert "".join(pieces) == llm.generate(PARIS, max_tokens=12, temperature=0, ignore_eos=True).text
    assert llm.stats.generated_tokens == 12


def test_max_tokens_and_eos(llm):
    out = llm.generate(PARIS, max_tokens=3, temperature=0, ignore_eos=True)
    assert len(out.ids) == 3 and out.finish_reason == "length"
    saved = llm.engine.eos_ids
    try:
        llm.engine.eos_ids = {out.ids[1]}  # pretend the second token ends the answer
        stopped = llm.generate(PARIS, max_tokens=8, temperature=0)
    finally:
        llm.engine.eos_ids = saved
    assert stopped.finish_reason == "stop" and stopped.ids == out.ids[:2]
    assert stopped.text == llm.tokenizer.decode(out.ids[:1])  # the end token is not text


def test_stop_strings(llm):
    full = llm.generate(PARIS, max_tokens=16, temperature=0, ignore_eos=True).text
    stop = full[8:11]  # three characters from the middle of the answer
    out = llm.generate(PARIS, max_tokens=16, temperature=0, ignore_eos=True, stop=[stop, "@@@"])
    assert out.finish_reason == "stop"
    assert out.text == full[:full.index(stop)]
    streamed = "".join(llm.stream(PARIS, max_tokens=16, temperature=0, ignore_eos=True, stop=[stop]))
    assert streamed == out.text


def test_seeded_sampling_is_reproducible(llm):
    kw = dict(max_tokens=12, temperature=1.0, top_p=0.95, ignore_eos=True)
    story = "Once upon a time, in a village at the edge of a great forest, there lived a"
    llm.generate(story, max_tokens=1)  # cache the story's whole pages: a and b run alike
    # (a prompt computed from scratch and one continuing a cached prefix attend through
    # different kernels, whose float rounding differs in the last bits: enough to move a
    # temperature-1 draw that lands at a boundary, never a greedy choice outside float ties)
    a = llm.generate(story, seed=7, **kw)
    b = llm.generate(story, seed=7, **kw)
    assert a.stats.reused_tokens == b.stats.reused_tokens > 0
    assert a.ids == b.ids
    c = llm.generate(story, seed=8, **kw)
    assert c.ids != a.ids


def test_prefix_reuse_matches_a_fresh_model(llm, bundled_gguf):
    """A prompt that extends the previous prompt and answer computes only the new tokens, and
    its greedy answer is the one a fresh model gives."""
    prompt1 = TEXT + " " + PARIS
    out1 = llm.generate(prompt1, max_tokens=6, temperature=0, ignore_eos=True)
    prompt2 = prompt1 + out1.text + " The capital of Germany is"
    out2 = llm.generate(prompt2, max_tokens=8, temperature=0, ignore_eos=True)
    page = llm.engine.pool.page_size
    assert out2.stats.reused_tokens >= len(llm.tokenizer.encode(prompt1)) // page * page > 0
    fresh = tt.LLM(str(bundled_gguf), backend="opencl", max_context=CONTEXT)
    out3 = fresh.generate(prompt2, max_tokens=8, temperature=0, ignore_eos=True)
    assert out3.stats.reused_tokens == 0
    assert out2.ids == out3.ids


def _idle_and_consistent(llm) -> None:
    """No request left running, and every KV page free or owned by the prefix cache."""
    sched = llm.engine.scheduler
    assert not sched.has_work()
    sched.verify()
    assert llm.engine.pool.n_used == llm.engine.prefix_cache.n_pages


def test_interrupted_stream_leaves_a_consistent_cache(llm):
    colors = TEXT + " In painting and in printing, the three primary colors are"
    expected = llm.generate(colors, max_tokens=10, temperature=0).ids
    llm.generate("Something else entirely.", max_tokens=2, temperature=0)
    pieces = llm.stream(colors, max_tokens=10, temperature=0)
    for _ in range(3):
        next(pieces)
    pieces.close()
    assert llm.finish_reason == "interrupted" and len(llm.last_ids) == 3
    _idle_and_consistent(llm)
    again = llm.generate(colors, max_tokens=10, temperature=0)
    assert again.stats.reused_tokens > 0
    assert again.ids == expected


def test_interrupt_inside_a_step_keeps_the_cache_exact(llm, monkeypatch):
    """Ctrl-C lands inside a step most of the time: the token that step was computing must not
    count as cached, or a later prompt would re-use a position never written."""
    from tattletale.engine.runner import ModelRunner

    page = llm.engine.pool.page_size
    original, calls = ModelRunner.execute, []

    def execute(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ModelRunner, "execute", execute)
    prompt = llm.tokenizer.encode("Tell me about the three primary colors and why they matter.")
    with pytest.raises(KeyboardInterrupt):
        llm.generate(prompt, max_tokens=10, temperature=0, ignore_eos=True)
    monkeypatch.undo()
    assert len(llm.last_ids) == 2 and llm.finish_reason == "interrupted"
    _idle_and_consistent(llm)
    follow = prompt + llm.last_ids + llm.tokenizer.encode(" and")
    reused = llm.generate(follow, max_tokens=6, temperature=0, ignore_eos=True)
    computed = len(prompt) + 1  # the second token was being computed when the interrupt came
    assert reused.stats.reused_tokens == computed // page * page
    llm.engine.prefix_cache.evict(llm.engine.pool.n_pages)  # forget everything: compute it all
    fresh = llm.generate(follow, max_tokens=6, temperature=0, ignore_eos=True)
    assert fresh.stats.reused_tokens == 0 and fresh.ids == reused.ids


def test_recorded_and_eager_decode_agree(llm):
    try:
        llm.engine.runner.graphs = False
        eager = llm.generate(PARIS, max_tokens=16, temperature=0, ignore_eos=True).ids
    finally:
        llm.engine.runner.graphs = True
    assert llm.generate(PARIS, max_tokens=16, temperature=0, ignore_eos=True).ids == eager


def test_repetition_penalty_runs(llm):
    out = llm.generate("one one one one one", max_tokens=8, temperature=0, repetition_penalty=1.3,
                       ignore_eos=True)
    assert len(out.ids) == 8


def test_chat_prompt(llm):
    messages = [{"role": "user", "content": "Hi!"}]
    ids = llm.chat_prompt(messages)
    text = render_chat(llm.template, messages, llm.tokenizer)
    assert ids == llm.tokenizer.encode(text, add_special=False)
    assert llm.tokenizer.decode(ids, skip_special=False).endswith(
        "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n")
    assert ids.count(llm.tokenizer.token_id("<|im_start|>")) == 3  # system, user, assistant


def test_context_limit(bundled_gguf):
    small = tt.LLM(str(bundled_gguf), backend="opencl", max_context=16)
    with pytest.raises(ContextOverflow, match="16"):
        small.generate(list(range(100, 116)), max_tokens=4)
    assert small.engine.pool.n_used == 0  # refused before any computation
    out = small.generate(list(range(100, 115)), max_tokens=4, temperature=0, ignore_eos=True)
    assert len(out.ids) == 1 and out.finish_reason == "length"  # the context is full
    with pytest.raises(ValueError, match="empty"):
        small.generate("", max_tokens=4)


@pytest.mark.parametrize("kind", ["hf", "gguf"])
def test_tiny_model_files(tmp_path, kind):
    """The API on tiny models of both formats (the same weights): same greedy ids."""
    _device("opencl")
    hf = tt.LLM(str(write_hf(tmp_path / "hf")), backend="opencl")
    other = hf if kind == "hf" else tt.LLM(str(write_gguf(tmp_path / "m.gguf")), backend="opencl")
    ids = other.chat_prompt([{"role": "user", "content": "héllo 👋"}])
    assert other.tokenizer.decode(ids, skip_special=False) == \
        "<|im_start|>user\nhéllo 👋<|im_end|>\n<|im_start|>assistant\n"
    a = other.generate(ids, max_tokens=8, temperature=0, ignore_eos=True)
    b = hf.generate(ids, max_tokens=8, temperature=0, ignore_eos=True)
    assert a.ids == b.ids and len(a.ids) == 8
