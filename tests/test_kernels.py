"""The LLM kernel library against float64 numpy references, on every conformance backend.

Outputs are poisoned with NaN before each launch so unwritten elements fail the comparison.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import tattletale as tt
from tattletale.kernels import elementwise, softmax
from tattletale.kernels.embedding import embedding
from tattletale.kernels.matmul import linear
from tattletale.kernels.norm import rmsnorm
from tattletale.kernels.quant import FORMATS, Weight
from tattletale.kernels.rope import rope_, rope_inv_freq

SMOL = dict(hidden=576, inter=1536, heads=9, kv=3, head_dim=64, vocab=49152)
LLAMA8B = dict(hidden=4096, inter=14336, heads=32, kv=8, head_dim=128, vocab=128256)


def poisoned(dev, shape, dtype=tt.f32):
    return dev.full(shape, float("nan"), dtype)


def rel_err(out, ref) -> float:
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    assert not np.isnan(out).any(), "unwritten (NaN) elements in the output"
    return float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-30))


def reference_weight(w: np.ndarray, fmt: str) -> np.ndarray:
    """What the device holds for `w` in `fmt`, as float64."""
    if fmt == "f16":
        return w.astype(np.float16).astype(np.float64)
    if fmt == "bf16":
        return tt.from_bf16_bits(tt.to_bf16_bits(w)).astype(np.float64)
    if fmt == "f32":
        return w.astype(np.float64)
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    q = GGMLQuantizationType[fmt.upper()]
    return dequantize(quantize(w, q), q).astype(np.float64)


@pytest.mark.parametrize("rows,n", [(1, SMOL["hidden"]), (3, LLAMA8B["hidden"]), (2, 37)])
@pytest.mark.parametrize("fused", [False, True])
def test_rmsnorm(dev, rng, rows, n, fused):
    x = rng.standard_normal((rows, n)).astype(np.float32)
    r = rng.standard_normal((rows, n)).astype(np.float32)
    w = rng.standard_normal(n).astype(np.float32)
    rt = dev.tensor(r)
    out = poisoned(dev, (rows, n))
    rmsnorm(dev.tensor(x), dev.tensor(w), 1e-5, out=out, residual=rt if fused else None)
    h = x.astype(np.float64) + (r if fused else 0)
    ref = h / np.sqrt((h ** 2).mean(-1, keepdims=True) + 1e-5) * w
    assert rel_err(out.numpy(), ref) < 1e-5
    if fused:
        assert rel_err(rt.numpy(), h) < 1e-6


def test_rmsnorm_f16_io(dev, rng):
    x = rng.standard_normal((4, 576)).astype(np.float16)
    w = rng.standard_normal(576).astype(np.float32)
    out = poisoned(dev, (4, 576), tt.f16)
    rmsnorm(dev.tensor(x), dev.tensor(w), 1e-6, out=out)
    xd = x.astype(np.float64)
    ref = xd / np.sqrt((xd ** 2).mean(-1, keepdims=True) + 1e-6) * w
    assert rel_err(out.numpy(), ref) < 2e-3


def test_activations(dev, rng):
    n = 3 * 1536 + 5
    g = (rng.standard_normal(n) * 3).astype(np.float32)
    u = rng.standard_normal(n).astype(np.float32)
    outs = [poisoned(dev, n) for _ in range(5)]
    elementwise.silu_mul(dev.tensor(g), dev.tensor(u), out=outs[0])
    elementwise.gelu(dev.tensor(g), "none", out=outs[1])
    elementwise.gelu(dev.tensor(g), "tanh", out=outs[2])
    elementwise.add(dev.tensor(g), dev.tensor(u), out=outs[3])
    elementwise.mul(dev.tensor(g), dev.tensor(u), out=outs[4])
    gd = g.astype(np.float64)
    erf = np.vectorize(math.erf)
    refs = [gd / (1 + np.exp(-gd)) * u, 0.5 * gd * (1 + erf(gd / math.sqrt(2))),
            0.5 * gd * (1 + np.tanh(math.sqrt(2 / math.pi) * (gd + 0.044715 * gd ** 3))),
            gd + u, gd * u]
    for out, ref in zip(outs, refs):
        assert rel_err(out.numpy(), ref) < 2e-6


@pytest.mark.parametrize("n", [7, 1000, SMOL["vocab"], LLAMA8B["vocab"]])
def test_softmax(dev, rng, n):
    x = (rng.standard_normal((2, n)) * 8).astype(np.float32)
    out = poisoned(dev, (2, n))
    softmax.softmax(dev.tensor(x), scale=0.7, out=out)
    z = 0.7 * x.astype(np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    ref = e / e.sum(-1, keepdims=True)
    assert np.abs(out.numpy() - ref).max() < 1e-6


@pytest.mark.parametrize("neox", [True, False])
@pytest.mark.parametrize("shape", ["smol", "llama8b"])
def test_rope(dev, rng, neox, shape):
    cfg = SMOL if shape == "smol" else LLAMA8B
    T, H, D = 5, cfg["heads"], cfg["head_dim"]
    scaling = None if shape == "smol" else {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}
    inv = rope_inv_freq(D, 500000.0 if scaling else 10000.0, scaling)
    pos = rng.integers(0, 100000, T).astype(np.int32)
    x = rng.standard_normal((T, H, D)).astype(np.float32)
    xt = dev.tensor(x)
    rope_(xt, dev.tensor(pos), dev.tensor(inv), H, D, neox)
    angle = (pos[:, None].astype(np.float32) * inv[None, :]).astype(np.float64)  # f32, as models
    c, s = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
    if neox:
        x0, x1 = x[..., : D // 2], x[..., D // 2:]
        ref = np.concatenate([x0 * c - x1 * s, x0 * s + x1 * c], -1)
    else:
        x0, x1 = x[..., 0::2], x[..., 1::2]
        ref = np.stack([x0 * c - x1 * s, x0 * s + x1 * c], -1).reshape(T, H, D)
    assert np.abs(xt.numpy() - ref).max() < 2e-5


def test_rope_llama3_frequencies_match_hf_formula():
    inv = rope_inv_freq(128, 500000.0, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 4.0,
                                        "original_max_position_embeddings": 8192})
    base = 1.0 / 500000.0 ** (np.arange(0, 128, 2) / 128)
    wavelen = 2 * math.pi / base
    assert np.allclose(inv[wavelen < 8192 / 4], base[wavelen < 8192 / 4], rtol=1e-6)
    assert np.allclose(inv[wavelen > 8192], base[wavelen > 8192] / 8, rtol=1e-6)


@pytest.mark.parametrize("fmt", FORMATS)
def test_embedding_decodes_exactly(dev, rng, fmt):
    """Gathered rows equal the stored values bit for bit (gguf.quants.dequantize for blocks)."""
    table = rng.standard_normal((40, SMOL["hidden"])).astype(np.float32)
    ids = rng.integers(0, 40, 7).astype(np.int32)
    out = poisoned(dev, (7, SMOL["hidden"]))
    embedding(Weight.from_array(dev, table, fmt), dev.tensor(ids), out=out)
    ref = reference_weight(table, fmt)[ids].astype(np.float32)
    assert np.array_equal(out.numpy().view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("m,n,k", [(1, SMOL["inter"], SMOL["hidden"]), (3, 200, SMOL["inter"]),
                                   (17, 40, 256), (70, 130, 96)])
def test_linear(dev, rng, fmt, m, n, k):
    w = (rng.standard_normal((n, k)) / math.sqrt(k)).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    res = rng.standard_normal((m, n)).astype(np.float32)
    out = poisoned(dev, (m, n))
    linear(dev.tensor(x), Weight.from_array(dev, w, fmt), bias=dev.tensor(bias),
           residual=dev.tensor(res), out=out)
    ref = x.astype(np.float64) @ reference_weight(w, fmt).T + bias + res
    assert rel_err(out.numpy(), ref) < 1e-5


@pytest.mark.parametrize("fmt", ["f16", "bf16"])
def test_linear_decodes_every_16bit_value_exactly(dev, fmt):
    """Every finite f16/bf16 bit pattern (subnormals, both zeros, extremes) in W, times an identity x:
    the output is W.T exactly, whatever decoding a backend's kernel uses."""
    k, n = 64, 960
    bits = np.arange(1 << 16, dtype=np.uint16)
    bits = bits[(bits & 0x7C00) != 0x7C00] if fmt == "f16" else bits[(bits & 0x7F80) != 0x7F80]
    rows = bits[np.random.default_rng(7).permutation(bits.size)[: n * k]].reshape(n, k)
    if fmt == "f16":
        w, values = Weight(fmt, (n, k), dev.tensor(rows.view(np.float16))), rows.view(np.float16)
    else:
        w, values = Weight(fmt, (n, k), dev.tensor(rows, dtype=tt.bf16)), tt.from_bf16_bits(rows)
    out = poisoned(dev, (k, n))
    linear(dev.tensor(np.eye(k, dtype=np.float32)), w, out=out)
    want = values.astype(np.float32).T
    got = out.numpy()
    assert np.array_equal(got.view(np.uint32) & 0x7FFFFFFF, want.view(np.uint32) & 0x7FFFFFFF)
    nonzero = want != 0  # a zero's sign may differ: x·(-0) summed with +0 products is +0
    assert np.array_equal(np.signbit(got[nonzero]), np.signbit(want[nonzero]))


@pytest.mark.parametrize("fmt", ["f16", pytest.param("q4_1", marks=pytest.mark.slow)])
def test_linear_llama8b_shape(dev, rng, fmt):
    n, k = LLAMA8B["hidden"], LLAMA8B["inter"]
    w = (rng.standard_normal((n, k)) / math.sqrt(k)).astype(np.float32)
    x = rng.standard_normal((1, k)).astype(np.float32)
    out = poisoned(dev, (1, n))
    linear(dev.tensor(x), Weight.from_array(dev, w, fmt), out=out)
    assert rel_err(out.numpy(), x.astype(np.float64) @ reference_weight(w, fmt).T) < 1e-5


GEMV_SETTINGS = [dict(lanes=4, unroll=4, rows=3, pipe=True, dec="magic"),
                 dict(unroll=1, rows=1, pipe=False, dec="int"),
                 dict(lanes=8, unroll=2, rows=4, pipe=True, dec="f16"),
                 dict(unroll=2, rows=2, pipe=True, dec="magic", xs=1),  # x staged in shared memory
                 dict(lanes=8, unroll=1, rows=1, pipe=False, dec="int", xs=4)]


@pytest.mark.parametrize("fmt", ["bf16", "q4_1", "q8_0", "q4_0"])
@pytest.mark.parametrize("setting", range(len(GEMV_SETTINGS)))
def test_gemv_settings(dev, rng, fmt, setting):
    """gemv_kernel under its tuning knobs (lane groups smaller than a subgroup, unrolled steps
    with a remainder, rows past N, the three block decoders, double buffering, x staged in shared
    memory with either padding), 3 rows of x;
    K = 1568 leaves a remainder after the unrolled steps for every lane count."""
    n, k, m = 37, 1568, 3
    w = (rng.standard_normal((n, k)) / math.sqrt(k)).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    out = poisoned(dev, (m, n))
    linear(dev.tensor(x), Weight.from_array(dev, w, fmt), out=out, **GEMV_SETTINGS[setting])
    assert rel_err(out.numpy(), x.astype(np.float64) @ reference_weight(w, fmt).T) < 1e-5


def reference_attention(q, k, v, first_pos, window=0):
    """q [T, H, D] at absolute positions first_pos…; k, v [S, KV, D]; causal, float64."""
    n_q, n_heads, d = q.shape
    group = n_heads // k.shape[1]
    out = np.zeros((n_q, n_heads, d))
    for i in range(n_q):
        p = first_pos + i
        lo = max(0, p - window + 1) if window > 0 else 0
        for h in range(n_heads):
            s = (k[lo:p + 1, h // group].astype(np.float64) @ q[i, h]) / math.sqrt(d)
            w = np.exp(s - s.max())
            out[i, h] = (w / w.sum()) @ v[lo:p + 1, h // group]
    return out


@pytest.mark.parametrize("window", [0, 100])
@pytest.mark.parametrize("shape", ["smol", "odd"])
def test_decode_attention(dev, rng, window, shape):
    from tattletale.kernels.attention import decode_attention

    n_heads, n_kv, d = (SMOL["heads"], SMOL["kv"], SMOL["head_dim"]) if shape == "smol" else (8, 8, 64)
    lens = np.array([5, 700, 1300], np.int32)
    max_len = 1300
    q = rng.standard_normal((3, n_heads, d)).astype(np.float32)
    k = rng.standard_normal((3, max_len, n_kv, d)).astype(np.float32)
    v = rng.standard_normal((3, max_len, n_kv, d)).astype(np.float32)
    out = poisoned(dev, q.shape)
    decode_attention(dev.tensor(q), dev.tensor(k), dev.tensor(v), dev.tensor(lens), n_kv, out=out,
                     window=window)
    got = out.numpy()
    for b in range(3):
        ref = reference_attention(q[b:b + 1], k[b, :lens[b]], v[b, :lens[b]], lens[b] - 1, window)
        assert np.abs(got[b] - ref[0]).max() < 1e-5


def test_decode_attention_f16_cache_long(dev, rng):
    from tattletale.kernels.attention import decode_attention

    n_heads, n_kv, d, length = 4, 2, LLAMA8B["head_dim"], 4096
    q = rng.standard_normal((1, n_heads, d)).astype(np.float32)
    k = rng.standard_normal((1, length, n_kv, d)).astype(np.float16)
    v = rng.standard_normal((1, length, n_kv, d)).astype(np.float16)
    out = poisoned(dev, q.shape)
    decode_attention(dev.tensor(q), dev.tensor(k), dev.tensor(v),
                     dev.tensor(np.array([length], np.int32)), n_kv, out=out)
    ref = reference_attention(q, k[0].astype(np.float32), v[0].astype(np.float32), length - 1)
    assert np.abs(out.numpy() - ref).max() < 1e-5


@pytest.mark.parametrize("window", [0, 17])
@pytest.mark.parametrize("n_q,n_kv_tokens", [(70, 100), (1, 33), (129, 129)])
def test_prefill_attention(dev, rng, window, n_q, n_kv_tokens):
    from tattletale.kernels.attention import prefill_attention

    n_heads, n_kv, d = SMOL["heads"], SMOL["kv"], SMOL["head_dim"]
    q = rng.standard_normal((n_q, n_heads, d)).astype(np.float32)
    k = rng.standard_normal((n_kv_tokens, n_kv, d)).astype(np.float32)
    v = rng.standard_normal((n_kv_tokens, n_kv, d)).astype(np.float32)
    out = poisoned(dev, q.shape)
    prefill_attention(dev.tensor(q), dev.tensor(k), dev.tensor(v), n_kv, out=out, window=window)
    ref = reference_attention(q, k, v, n_kv_tokens - n_q, window)
    assert np.abs(out.numpy() - ref).max() < 1e-5


def test_greedy_sampling_picks_first_maximum(dev, rng):
    from tattletale.kernels.sampling import SamplingParams, sample

    logits = rng.standard_normal((3, SMOL["vocab"])).astype(np.float32)
    logits[1, [10, 20]] = 50.0  # a tie: the lower index wins
    ids = sample(dev.tensor(logits), [SamplingParams(temperature=0)] * 3, [0, 0, 0])
    assert list(ids) == [int(logits[0].argmax()), 10, int(logits[2].argmax())]


def test_sampling_distribution_and_seed(dev, rng):
    """Many seeded draws follow the filtered distribution; a seed and counter fix the draw."""
    from tattletale.kernels.sampling import SamplingParams, sample

    vocab = 1000
    logits = (rng.standard_normal((1, vocab)) * 2).astype(np.float32)
    p = SamplingParams(temperature=0.8, top_k=50, top_p=0.9, min_p=0.01, seed=1234)
    draws = np.array([sample(dev.tensor(logits), [p], [i])[0] for i in range(1500)])
    z = np.exp((logits[0].astype(np.float64) - logits.max()) / 0.8)
    keep = np.zeros(vocab, bool)
    keep[np.argsort(-z)[:50]] = True
    kept = np.where(keep & (z >= 0.01), z, 0.0)
    ordered = np.sort(kept)[::-1]
    cut = ordered[np.searchsorted(np.cumsum(ordered), 0.9 * ordered.sum())]
    target = np.where(kept >= cut, kept, 0.0)
    target /= target.sum()
    freq = np.bincount(draws, minlength=vocab) / len(draws)
    assert set(np.flatnonzero(freq)) <= set(np.flatnonzero(target))
    assert 0.5 * np.abs(freq - target).sum() < 0.08  # sampling noise at 1500 draws is ~0.04
    again = [sample(dev.tensor(logits), [p], [i])[0] for i in range(5)]
    assert list(again) == list(draws[:5])


def test_penalties(dev, rng):
    from tattletale.kernels.sampling import SamplingParams, sample

    logits = np.zeros((1, 64), np.float32)
    logits[0, 3], logits[0, 5] = 4.0, 3.5
    p = SamplingParams(temperature=0, repetition_penalty=1.5, frequency_penalty=0.1)
    # token 3: 4.0 / 1.5 - 0.1·2 ≈ 2.47 < 3.5, so the penalized history hands the argmax to 5
    assert sample(dev.tensor(logits), [p], [0], histories=[[3, 3]])[0] == 5
    assert sample(dev.tensor(logits), [SamplingParams(temperature=0)], [0])[0] == 3
