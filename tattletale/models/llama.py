"""The Llama-family transformer (Llama 2/3, SmolLM, Mistral, Qwen2/2.5, Qwen3), built from the
kernel library. Differences between the architectures are switches in ModelConfig: attention
biases (Qwen2), per-head q/k RMSNorm (Qwen3), tied embeddings, rope layout and scaling.

    h = embed(tokens)
    for each layer:
        x = rmsnorm(h);  q, k, v = x·Wqᵀ (+b), x·Wkᵀ (+b), x·Wvᵀ (+b)
        [q, k = rmsnorm_per_head(q), rmsnorm_per_head(k)]          (Qwen3)
        q, k = rope(q), rope(k);  cache k, v
        h = h + attention(q, cache)·Woᵀ
        x = rmsnorm(h);  h = h + (silu(x·Wgᵀ) ⊙ x·Wuᵀ)·Wdᵀ
    logits = rmsnorm(h)·Wₒᵤₜᵀ
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

import tattletale as tt
from tattletale.kernels.attention import decode_attention, prefill_attention
from tattletale.kernels.elementwise import silu_mul
from tattletale.kernels.embedding import embedding
from tattletale.kernels.matmul import linear
from tattletale.kernels.norm import rmsnorm
from tattletale.kernels.quant import Weight
from tattletale.kernels.rope import rope_, rope_inv_freq
from tattletale.runtimes import Device, Tensor

from .config import ModelConfig, UnsupportedModel
from .loader import HostTensor, ModelFile


@dataclass
class Layer:
    attn_norm: Tensor
    wq: Weight
    wk: Weight
    wv: Weight
    wo: Weight
    ffn_norm: Tensor
    w_gate: Weight
    w_up: Weight
    w_down: Weight
    bq: Tensor | None = None
    bk: Tensor | None = None
    bv: Tensor | None = None
    q_norm: Tensor | None = None
    k_norm: Tensor | None = None


class KVCache:
    """Contiguous K/V storage for one sequence: per layer [max_len, n_kv_heads, head_dim]."""

    def __init__(self, dev: Device, cfg: ModelConfig, max_len: int, dtype=tt.f32):
        self.max_len = max_len
        shape = (max_len, cfg.n_kv_heads, cfg.head_dim)
        self.k = [dev.empty(shape, dtype) for _ in range(cfg.n_layers)]
        self.v = [dev.empty(shape, dtype) for _ in range(cfg.n_layers)]
        self.length = 0  # tokens whose K/V are stored


def _upload(dev: Device, t: HostTensor) -> Weight:
    if t.fmt in ("f32", "f16", "bf16"):
        data = t.data
        if t.fmt == "bf16":
            return Weight("bf16", t.shape, dev.tensor(np.ascontiguousarray(data), tt.bf16))
        return Weight(t.fmt, t.shape, dev.tensor(np.ascontiguousarray(data)))
    return Weight.from_gguf_blocks(dev, t.data, t.fmt, t.shape)


def _random_source(dev: Device, cfg: ModelConfig, fmt: str):
    """(names, weight, vector) factories producing random weights of cfg's shapes on the device."""
    from tattletale.kernels.random import fill_uniform_

    hd = cfg.head_dim
    shapes = {"token_embd": (cfg.vocab, cfg.hidden), "attn_q": (cfg.n_heads * hd, cfg.hidden),
              "attn_k": (cfg.n_kv_heads * hd, cfg.hidden), "attn_v": (cfg.n_kv_heads * hd, cfg.hidden),
              "attn_output": (cfg.hidden, cfg.n_heads * hd), "ffn_gate": (cfg.intermediate, cfg.hidden),
              "ffn_up": (cfg.intermediate, cfg.hidden), "ffn_down": (cfg.hidden, cfg.intermediate)}
    seed = iter(range(1, 1 << 30))

    def weight(name: str) -> Weight:
        n, k = shapes[name.rsplit(".", 1)[-1]]
        bound = 1.0 / np.sqrt(k)
        if fmt in ("f32", "f16", "bf16"):
            data = fill_uniform_(dev.empty((n, k), fmt), next(seed), -bound, bound)
            return Weight(fmt, (n, k), data)
        words = fill_uniform_(dev.empty((n, k // (4 if fmt == "q8_0" else 8)), tt.u32), next(seed))
        scales = fill_uniform_(dev.empty((n, k // 32), tt.f16), next(seed), 0.0, bound / 8)
        mins = fill_uniform_(dev.empty((n, k // 32), tt.f16), next(seed), -bound, 0.0) \
            if fmt == "q4_1" else None
        return Weight(fmt, (n, k), words, scales, mins)

    def vector(name: str) -> Tensor:
        return fill_uniform_(dev.empty(cfg.hidden, tt.f32), next(seed), 0.9, 1.1)

    return set(), weight, vector


def _vector(dev: Device, t: HostTensor) -> Tensor:
    """Norm weights and biases, small: kept as f32."""
    data = t.data
    if t.fmt == "bf16":
        data = tt.from_bf16_bits(data)
    elif t.fmt not in ("f32", "f16"):
        raise UnsupportedModel(f"a quantized vector ({t.fmt}) is not supported")
    return dev.tensor(np.ascontiguousarray(data, dtype=np.float32).reshape(-1))


class LlamaModel:
    def __init__(self, dev: Device, model: ModelFile | None, progress: bool = False,
                 config: ModelConfig | None = None, random_format: str | None = None):
        """Upload `model`'s weights layer by layer; or, with `config` and `random_format` instead
        of a file, fill every weight with random values of that format on the device (for
        benchmarking real model shapes without their files)."""
        self.dev = dev
        self.cfg = cfg = model.config if model is not None else config
        if model is not None:
            names = set(model.names())
            weight = lambda name: _upload(dev, model.get(name))  # noqa: E731
            vector = lambda name: _vector(dev, model.get(name))  # noqa: E731
        else:
            names, weight, vector = _random_source(dev, cfg, random_format)
        self.embed = weight("token_embd")
        layers = []
        for i in range(cfg.n_layers):
            p = f"blk.{i}."

            def opt(name, p=p):
                return vector(p + name) if p + name in names else None

            if progress:
                print(f"\rloading layer {i + 1}/{cfg.n_layers}", end="", file=sys.stderr, flush=True)
            layers.append(Layer(
                attn_norm=vector(p + "attn_norm"), wq=weight(p + "attn_q"), wk=weight(p + "attn_k"),
                wv=weight(p + "attn_v"), wo=weight(p + "attn_output"), ffn_norm=vector(p + "ffn_norm"),
                w_gate=weight(p + "ffn_gate"), w_up=weight(p + "ffn_up"), w_down=weight(p + "ffn_down"),
                bq=opt("attn_q.bias"), bk=opt("attn_k.bias"), bv=opt("attn_v.bias"),
                q_norm=opt("attn_q_norm"), k_norm=opt("attn_k_norm")))
        if progress:
            print("", file=sys.stderr)
        self.layers = layers
        self.out_norm = vector("output_norm")
        self.lm_head = self.embed if cfg.tie_embeddings or "output" not in names else weight("output")
        freqs = rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
        if "rope_freqs" in names:  # GGUF Llama 3.1+: per-pair frequency divisors
            freqs = (freqs / model.get("rope_freqs").data.astype(np.float32)).astype(np.float32)
        self.inv_freq = dev.tensor(freqs)

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights a decode step reads (embeddings: one row; tied lm_head: all)."""
        total = self.lm_head.nbytes + self.out_norm.nbytes
        for layer in self.layers:
            for w in (layer.wq, layer.wk, layer.wv, layer.wo, layer.w_gate, layer.w_up, layer.w_down):
                total += w.nbytes
        return total

    def new_cache(self, max_len: int | None = None) -> KVCache:
        return KVCache(self.dev, self.cfg, max_len or self.cfg.max_positions)

    def forward(self, tokens: list[int] | np.ndarray, cache: KVCache, all_logits: bool = False
                ) -> Tensor:
        """Run tokens (appended after the cache's current length); returns f32 logits for the last
        token ([1, vocab]) or for every token ([T, vocab])."""
        cfg, dev = self.cfg, self.dev
        n = len(tokens)
        start = cache.length
        if start + n > cache.max_len:
            raise ValueError(f"context overflow: {start + n} tokens > {cache.max_len}")
        ids = dev.tensor(np.asarray(tokens, np.int32))
        positions = dev.tensor(np.arange(start, start + n, dtype=np.int32))
        hd, nh, nkv = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
        h = embedding(self.embed, ids)
        x = dev.empty((n, cfg.hidden), tt.f32)
        q = dev.empty((n, nh * hd), tt.f32)
        attn = dev.empty((n, nh, hd), tt.f32)
        lengths = dev.tensor(np.array([start + n], np.int32)) if n == 1 else None
        for i, layer in enumerate(self.layers):
            rmsnorm(h, layer.attn_norm, cfg.rms_eps, out=x)
            k = cache.k[i].view(start * nkv * hd, (n, nkv * hd))
            v = cache.v[i].view(start * nkv * hd, (n, nkv * hd))
            linear(x, layer.wq, bias=layer.bq, out=q)
            linear(x, layer.wk, bias=layer.bk, out=k)
            linear(x, layer.wv, bias=layer.bv, out=v)
            if layer.q_norm is not None:
                rmsnorm(q.reshape(n * nh, hd), layer.q_norm, cfg.rms_eps, out=q.reshape(n * nh, hd))
                rmsnorm(k.reshape(n * nkv, hd), layer.k_norm, cfg.rms_eps, out=k.reshape(n * nkv, hd))
            rope_(q, positions, self.inv_freq, nh, hd, cfg.rope_neox)
            rope_(k, positions, self.inv_freq, nkv, hd, cfg.rope_neox)
            q3 = q.reshape(n, nh, hd)
            if n == 1:
                kc = cache.k[i].reshape(1, cache.max_len, nkv, hd)
                vc = cache.v[i].reshape(1, cache.max_len, nkv, hd)
                decode_attention(q3.reshape(1, nh, hd), kc, vc, lengths, nkv, out=attn,
                                 window=cfg.sliding_window, longest=start + n)
            else:
                kc = cache.k[i].view(0, (start + n, nkv, hd))
                vc = cache.v[i].view(0, (start + n, nkv, hd))
                prefill_attention(q3, kc, vc, nkv, out=attn, window=cfg.sliding_window)
            linear(attn.reshape(n, nh * hd), layer.wo, residual=h, out=h)
            rmsnorm(h, layer.ffn_norm, cfg.rms_eps, out=x)
            gate = linear(x, layer.w_gate)
            up = linear(x, layer.w_up)
            linear(silu_mul(gate, up, out=gate), layer.w_down, residual=h, out=h)
        cache.length = start + n
        last = h if all_logits else h.view((n - 1) * cfg.hidden, (1, cfg.hidden))
        normed = rmsnorm(last, self.out_norm, cfg.rms_eps)
        return linear(normed, self.lm_head)
