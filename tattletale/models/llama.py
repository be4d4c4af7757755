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
from tattletale.kernels.attention import (
    DECODE_CHUNK,
    decode_attention,
    decode_splits,
    kv_write,
    prefill_attention,
)
from tattletale.kernels.elementwise import silu_mul
from tattletale.kernels.embedding import embedding
from tattletale.kernels.matmul import linear
from tattletale.kernels.norm import rmsnorm
from tattletale.kernels.quant import Weight
from tattletale.kernels.rope import rope_, rope_inv_freq
from tattletale.runtimes import Device, Tensor

from .config import ModelConfig, ModelFileError, UnsupportedModel
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

    shapes = expected_shapes(cfg)
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


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Tensor kind (the last part of its short name) → the shape the config implies."""
    hd, q, kv = cfg.head_dim, cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    return {"token_embd": (cfg.vocab, cfg.hidden), "output": (cfg.vocab, cfg.hidden),
            "attn_q": (q, cfg.hidden), "attn_k": (kv, cfg.hidden), "attn_v": (kv, cfg.hidden),
            "attn_output": (cfg.hidden, q), "ffn_gate": (cfg.intermediate, cfg.hidden),
            "ffn_up": (cfg.intermediate, cfg.hidden), "ffn_down": (cfg.hidden, cfg.intermediate),
            "attn_norm": (cfg.hidden,), "ffn_norm": (cfg.hidden,), "output_norm": (cfg.hidden,),
            "attn_q.bias": (q,), "attn_k.bias": (kv,), "attn_v.bias": (kv,),
            "attn_q_norm": (hd,), "attn_k_norm": (hd,)}


def _checked(t: HostTensor, name: str, shapes: dict) -> HostTensor:
    """A tensor whose shape disagrees with the config would fail deep inside a kernel (or read out
    of bounds): refuse it at load, naming it."""
    kind = name.split(".", 2)[-1] if name.startswith("blk.") else name
    want = shapes.get(kind)
    got = tuple(t.shape)
    if want is not None and (got != want if len(want) > 1 else int(np.prod(got)) != want[0]):
        raise ModelFileError(f"tensor {name} has shape {got}, but the model config implies {want} "
                             f"(a corrupt file, or a config that does not match the weights)")
    return t


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
            shapes = expected_shapes(cfg)
            weight = lambda name: _upload(dev, _checked(model.get(name), name, shapes))  # noqa: E731
            vector = lambda name: _vector(dev, _checked(model.get(name), name, shapes))  # noqa: E731
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
        n = len(tokens)
        start = cache.length
        if start + n > cache.max_len:
            raise ValueError(f"context overflow: {start + n} tokens > {cache.max_len}")
        ws = Workspace(self, n)
        ws.set_tokens(tokens, start)
        self.run(ws, cache, start, all_logits)
        cache.length = start + n
        return ws.logits if not all_logits else ws.all_logits

    def run(self, ws: Workspace, cache: KVCache, start: int | None, all_logits: bool = False) -> None:
        """The forward pass over ws's tokens, launching kernels only (no host transfers), so a
        decode step can be recorded and replayed. `start` is the cache position of the first token
        for prefill; None means a decode step whose position lives in ws.positions on the device
        (its K/V are written there, and attention covers ws.splits chunks)."""
        cfg = self.cfg
        n = ws.n
        hd, nh, nkv = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
        h, x, q, attn = ws.h, ws.x, ws.q, ws.attn
        embedding(self.embed, ws.ids, out=h)
        for i, layer in enumerate(self.layers):
            rmsnorm(h, layer.attn_norm, cfg.rms_eps, out=x)
            if start is not None:  # prefill: project K/V straight into their cache rows
                k = cache.k[i].view(start * nkv * hd, (n, nkv * hd))
                v = cache.v[i].view(start * nkv * hd, (n, nkv * hd))
            else:
                k, v = ws.k, ws.v
            linear(x, layer.wq, bias=layer.bq, out=q)
            linear(x, layer.wk, bias=layer.bk, out=k)
            linear(x, layer.wv, bias=layer.bv, out=v)
            if layer.q_norm is not None:
                rmsnorm(q.reshape(n * nh, hd), layer.q_norm, cfg.rms_eps, out=q.reshape(n * nh, hd))
                rmsnorm(k.reshape(n * nkv, hd), layer.k_norm, cfg.rms_eps, out=k.reshape(n * nkv, hd))
            rope_(q, ws.positions, self.inv_freq, nh, hd, cfg.rope_neox)
            rope_(k, ws.positions, self.inv_freq, nkv, hd, cfg.rope_neox)
            if start is None:
                kv_write(k, cache.k[i], ws.positions, nkv, hd)
                kv_write(v, cache.v[i], ws.positions, nkv, hd)
            if n == 1:
                kc = cache.k[i].reshape(1, cache.max_len, nkv, hd)
                vc = cache.v[i].reshape(1, cache.max_len, nkv, hd)
                graph = start is None
                decode_attention(q.reshape(1, nh, hd), kc, vc, ws.lengths, nkv, out=attn,
                                 window=cfg.sliding_window,
                                 longest=ws.splits * DECODE_CHUNK if graph else start + 1,
                                 partials=ws.partials if graph else None)
            else:
                kc = cache.k[i].view(0, (start + n, nkv, hd))
                vc = cache.v[i].view(0, (start + n, nkv, hd))
                prefill_attention(q.reshape(n, nh, hd), kc, vc, nkv, out=attn,
                                  window=cfg.sliding_window)
            linear(attn.reshape(n, nh * hd), layer.wo, residual=h, out=h)
            rmsnorm(h, layer.ffn_norm, cfg.rms_eps, out=x)
            linear(x, layer.w_gate, out=ws.gate)
            linear(x, layer.w_up, out=ws.up)
            linear(silu_mul(ws.gate, ws.up, out=ws.gate), layer.w_down, residual=h, out=h)
        if all_logits:
            rmsnorm(h, self.out_norm, cfg.rms_eps, out=x)
            ws.all_logits = linear(x, self.lm_head)
        else:
            last = h.view((n - 1) * cfg.hidden, (1, cfg.hidden))
            rmsnorm(last, self.out_norm, cfg.rms_eps, out=ws.normed)
            linear(ws.normed, self.lm_head, out=ws.logits)


class Workspace:
    """Every activation of a forward pass over n tokens, allocated up front: a decode step then
    allocates nothing, and recorded launches keep pointing at live memory."""

    def __init__(self, model: LlamaModel, n: int, splits: int = 0):
        cfg, dev = model.cfg, model.dev
        hd = cfg.head_dim
        self.n, self.splits = n, splits
        # token ids, positions and the sequence length in one buffer: one upload per step
        self.step = dev.empty(2 * n + 1, tt.i32)
        self.ids = self.step.view(0, n)
        self.positions = self.step.view(n, n)
        self.lengths = self.step.view(2 * n, 1)
        self.h = dev.empty((n, cfg.hidden), tt.f32)
        self.x = dev.empty((n, cfg.hidden), tt.f32)
        self.q = dev.empty((n, cfg.n_heads * hd), tt.f32)
        self.k = dev.empty((n, cfg.n_kv_heads * hd), tt.f32)
        self.v = dev.empty((n, cfg.n_kv_heads * hd), tt.f32)
        self.attn = dev.empty((n, cfg.n_heads, hd), tt.f32)
        self.gate = dev.empty((n, cfg.intermediate), tt.f32)
        self.up = dev.empty((n, cfg.intermediate), tt.f32)
        self.normed = dev.empty((1, cfg.hidden), tt.f32)
        self.logits = dev.empty((1, cfg.vocab), tt.f32)
        self.all_logits: Tensor | None = None
        rows = cfg.n_heads * max(splits, 1)
        self.partials = (dev.empty((rows, hd), tt.f32), dev.empty((rows, 2), tt.f32))

    def set_tokens(self, tokens, start: int) -> None:
        """Upload the tokens to run and their positions (start, start+1, …)."""
        n = self.n
        pos = np.arange(start, start + n, dtype=np.int32)
        self.step.copy_from(np.concatenate([np.asarray(tokens, np.int32), pos, [start + n]]))


class DecodeGraph:
    """Decode steps that run as one recorded launch sequence (a CUDA graph, an OpenCL launch
    list, a Vulkan command buffer…), sampling included: per step the host uploads the token and
    its position (12 bytes), replays, and reads back the next token (4 bytes).

    Attention's workgroup count depends on the history length, so one recording is kept per
    split count; each is recorded the first time its length range is reached (that step runs
    eagerly, which also compiles every kernel before any capture).
    """

    def __init__(self, model: LlamaModel, cache: KVCache, params):
        from tattletale.kernels.sampling import BISECT_STEPS, BLOCK

        dev = model.dev
        self.model, self.cache = model, cache
        self.ws = Workspace(model, 1, decode_splits(cache.max_len))
        self.probs = dev.empty((1, model.cfg.vocab), tt.f32)
        self.next_id = dev.empty(1, tt.i32)
        f32 = lambda v: dev.tensor(np.array([v], np.float32))  # noqa: E731
        self.sampling = (f32(params.temperature), dev.tensor(np.array([params.top_k], np.int32)),
                         f32(params.top_p), f32(params.min_p),
                         dev.tensor(np.array([params.seed & 0xFFFFFFFF], np.uint32)))
        self.block, self.bisect = BLOCK, BISECT_STEPS
        self.recordings: dict[int, object] = {}

    def _launch(self) -> None:
        from tattletale.kernels.sampling import sample_kernel

        self.model.run(self.ws, self.cache, None)
        temperature, top_k, top_p, min_p, seed = self.sampling
        counter = self.ws.positions.bitview(tt.u32)  # the position numbers the draws
        sample_kernel[1, self.block](self.ws.logits, self.probs, temperature, top_k, top_p, min_p,
                                     seed, counter, self.next_id, self.model.cfg.vocab, self.block,
                                     self.bisect)

    def step(self, token: int) -> int:
        """Append `token` at the cache's end and return the sampled next token."""
        pos = self.cache.length
        if pos + 1 > self.cache.max_len:
            raise ValueError(f"context overflow: {pos + 1} tokens > {self.cache.max_len}")
        splits = decode_splits(pos + 1)
        self.ws.set_tokens([token], pos)
        rec = self.recordings.get(splits)
        if rec is None:
            self.ws.splits = splits
            self._launch()
            with self.model.dev.record() as rec:
                self._launch()
            self.recordings[splits] = rec
        else:
            rec.replay()
        self.cache.length = pos + 1
        return int(self.next_id.numpy()[0])
