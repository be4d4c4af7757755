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
from tattletale.cache.kv import PagedKV
from tattletale.cache.pages import KVLayout, PagePool, PageTable
from tattletale.dsl.types import as_type
from tattletale.kernels.attention import (
    decode_attention,
    decode_plan,
    kv_write,
    prefill_attention,
    prefill_splits,
)
from tattletale.kernels.elementwise import swiglu
from tattletale.kernels.embedding import embedding
from tattletale.kernels.matmul import linear
from tattletale.kernels.norm import rmsnorm, rmsnorm_heads_
from tattletale.kernels.quant import Weight
from tattletale.kernels.rope import rope_, rope_inv_freq
from tattletale.runtimes import Device, Tensor

from .batch import Batch, Span
from .config import ModelConfig, ModelFileError, UnsupportedModel
from .loader import HostTensor, ModelFile


@dataclass
class Layer:
    """One block's weights. Q, K and V (and gate and up) are fused row-wise into one matrix, so a
    step runs one GEMV for each pair of projections instead of three (two)."""

    attn_norm: Tensor
    wqkv: Weight  # rows: q (n_heads·head_dim), k, v (n_kv_heads·head_dim each)
    wo: Weight
    ffn_norm: Tensor
    w_gate_up: Weight  # rows: gate (intermediate), up (intermediate)
    w_down: Weight
    bqkv: Tensor | None = None
    q_norm: Tensor | None = None
    k_norm: Tensor | None = None


def _upload(dev: Device, t: HostTensor) -> Weight:
    if t.fmt in ("f32", "f16", "bf16"):
        data = t.data
        if t.fmt == "bf16":
            return Weight("bf16", t.shape, dev.tensor(np.ascontiguousarray(data), tt.bf16))
        return Weight(t.fmt, t.shape, dev.tensor(np.ascontiguousarray(data)))
    return Weight.from_gguf_blocks(dev, t.data, t.fmt, t.shape)


def _fuse(parts: list[HostTensor]) -> HostTensor:
    """Stack matrices (or vectors) row-wise. Rows of every format are independent, so same-format
    parts concatenate as stored; mixed formats meet in f16."""
    if len(parts) == 1:
        return parts[0]
    rows = sum(p.shape[0] for p in parts)
    if len({p.fmt for p in parts}) == 1:
        data = np.concatenate([np.asarray(p.data).reshape(p.shape[0], -1) for p in parts])
        shape = (rows, *parts[0].shape[1:])
        return HostTensor(parts[0].fmt, shape, data.reshape(shape) if parts[0].fmt in
                          ("f32", "f16", "bf16") else data)
    data = np.concatenate([_host_float(p) for p in parts]).astype(np.float16)
    return HostTensor("f16", (rows, *parts[0].shape[1:]), data)


def _host_float(t: HostTensor) -> np.ndarray:
    if t.fmt == "bf16":
        return tt.from_bf16_bits(t.data).reshape(t.shape)
    if t.fmt in ("f32", "f16"):
        return np.asarray(t.data, np.float32).reshape(t.shape)
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    return dequantize(np.asarray(t.data), GGMLQuantizationType[t.fmt.upper()]).reshape(t.shape)


def _random_source(dev: Device, cfg: ModelConfig, fmt: str):
    """(names, weight, vector) factories producing random weights of cfg's shapes on the device."""
    from tattletale.kernels.random import fill_uniform_

    shapes = expected_shapes(cfg)
    seed = iter(range(1, 1 << 30))

    def weight(*names: str) -> Weight:
        n = sum(shapes[name.rsplit(".", 1)[-1]][0] for name in names)
        k = shapes[names[0].rsplit(".", 1)[-1]][1]
        bound = 1.0 / np.sqrt(k)
        if fmt in ("f32", "f16", "bf16"):
            data = fill_uniform_(dev.empty((n, k), fmt), next(seed), -bound, bound)
            return Weight(fmt, (n, k), data)
        words = fill_uniform_(dev.empty((n, k // (4 if fmt == "q8_0" else 8)), tt.u32), next(seed))
        scales = fill_uniform_(dev.empty((n, k // 32), tt.f16), next(seed), 0.0, bound / 8)
        mins = fill_uniform_(dev.empty((n, k // 32), tt.f16), next(seed), -bound, 0.0) \
            if fmt == "q4_1" else None
        return Weight(fmt, (n, k), words, scales, mins)

    def vector(*names: str) -> Tensor:
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

            def weight(*names: str) -> Weight:
                return _upload(dev, _fuse([_checked(model.get(n), n, shapes) for n in names]))

            def vector(*names: str) -> Tensor:
                return _vector(dev, _fuse([_checked(model.get(n), n, shapes) for n in names]))

        else:
            names, weight, vector = _random_source(dev, cfg, random_format)
        self.embed = weight("token_embd")
        layers = []
        for i in range(cfg.n_layers):
            p = f"blk.{i}."

            def opt(*kinds, p=p):
                return vector(*(p + k for k in kinds)) if p + kinds[0] in names else None

            if progress:
                print(f"\rloading layer {i + 1}/{cfg.n_layers}", end="", file=sys.stderr, flush=True)
            layers.append(Layer(
                attn_norm=vector(p + "attn_norm"),
                wqkv=weight(p + "attn_q", p + "attn_k", p + "attn_v"), wo=weight(p + "attn_output"),
                ffn_norm=vector(p + "ffn_norm"), w_gate_up=weight(p + "ffn_gate", p + "ffn_up"),
                w_down=weight(p + "ffn_down"),
                bqkv=opt("attn_q.bias", "attn_k.bias", "attn_v.bias"),
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
            for w in (layer.wqkv, layer.wo, layer.w_gate_up, layer.w_down):
                total += w.nbytes
        return total

    def kv_layout(self, page_size: int, dtype=tt.f32) -> KVLayout:
        cfg = self.cfg
        return KVLayout(cfg.n_layers, cfg.n_kv_heads, cfg.head_dim, as_type(dtype).itemsize,
                        page_size)

    def new_cache(self, max_len: int | None = None, page_size: int = 16) -> SequenceCache:
        """Paged KV storage for one sequence of up to max_len tokens (see SequenceCache)."""
        return SequenceCache(self, max_len or self.cfg.max_positions, page_size)

    def forward(self, tokens: list[int] | np.ndarray, cache: SequenceCache, all_logits: bool = False
                ) -> Tensor:
        """Run tokens appended after the cache's current length, without the engine; returns f32
        logits for the last token ([1, vocab]) or for every token ([T, vocab])."""
        n = len(tokens)
        start = cache.length
        if start + n > cache.max_len:
            raise ValueError(f"context overflow: {start + n} tokens > {cache.max_len}")
        cache.kv.copy_pages(cache.table.append(n))
        batch = Batch([Span(list(tokens), start, cache.table.pages, "all" if all_logits else "last")],
                      cache.kv.layout.page_size)
        ws = Workspace(self, n, n, batch.n_rows, decode_plan(start + n)[0])
        buffer = self.dev.empty(batch.host.size + 1, tt.i32)
        batch.bind(buffer)
        self.run(ws, cache.kv, batch)
        return ws.logits.view(0, (batch.n_rows, self.cfg.vocab))

    def run(self, ws: Workspace, kv: PagedKV, batch: Batch, longest: int | None = None) -> None:
        """The forward pass over a bound batch, through ws.logits (its first batch.n_rows rows).

        Kernel launches only (no host transfers), so a step can be recorded and replayed.
        `longest` bounds the decode spans' context lengths (default: the batch's own longest;
        a recording passes the bound of its bucket)."""
        cfg = self.cfg
        n, nd = batch.n_tokens, batch.n_decode
        hd, nh, nkv = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
        ps = kv.layout.page_size
        v = batch.views
        qkv_width = (nh + 2 * nkv) * hd  # a token's row of the fused projection: q | k | v
        h = ws.h.view(0, (n, cfg.hidden))
        x = ws.x.view(0, (n, cfg.hidden))
        qkv = ws.qkv.view(0, (n, qkv_width))
        attn = ws.attn.view(0, (n, nh, hd))
        gate_up = ws.gate_up.view(0, (n, 2 * cfg.intermediate))
        act = ws.act.view(0, (n, cfg.intermediate))
        k_new = qkv.view(nh * hd, (n, nkv * hd))
        v_new = qkv.view((nh + nkv) * hd, (n, nkv * hd))
        splits, chunk = decode_plan(longest or batch.longest_decode)
        # CPU devices (no subgroups) gain nothing from more workgroups than cores
        prefill_split = prefill_splits(batch.n_work, nh, batch.longest_prefill, ws.max_splits) \
            if self.dev.caps.subgroup_size > 1 else 1
        embedding(self.embed, v["ids"], out=h)
        for i, layer in enumerate(self.layers):
            rmsnorm(h, layer.attn_norm, cfg.rms_eps, out=x)
            linear(x, layer.wqkv, bias=layer.bqkv, out=qkv)
            if layer.q_norm is not None:
                rmsnorm_heads_(qkv, layer.q_norm, cfg.rms_eps, n, nh, hd, qkv_width)
                rmsnorm_heads_(k_new, layer.k_norm, cfg.rms_eps, n, nkv, hd, qkv_width)
            # q's and k's heads are adjacent in each row: one rotation launch covers both
            rope_(qkv, v["positions"], self.inv_freq, nh + nkv, hd, cfg.rope_neox, row_stride=qkv_width)
            kc, vc = kv.k_layers[i], kv.v_layers[i]
            kv_write(k_new, v_new, kc, vc, v["slots"], nkv, hd, qkv_width)
            if nd:
                decode_attention(qkv.view(0, (nd, nh, hd)), kc, vc, v["lengths"], nkv,
                                 out=attn.view(0, (nd, nh, hd)), window=cfg.sliding_window,
                                 longest=splits * chunk, chunk=chunk, partials=ws.partials,
                                 q_stride=qkv_width, tables=v["tables"], page_size=ps)
            if batch.n_work:
                prefill_attention(qkv.view(0, (n, nh, hd)), kc, vc, nkv, out=attn,
                                  window=cfg.sliding_window, q_stride=qkv_width, work=v["work"],
                                  tables=v["tables"], page_size=ps, row_base=nd,
                                  splits=prefill_split, partials=ws.partials)
            linear(attn.reshape(n, nh * hd), layer.wo, residual=h, out=h)
            rmsnorm(h, layer.ffn_norm, cfg.rms_eps, out=x)
            linear(x, layer.w_gate_up, out=gate_up)
            linear(swiglu(gate_up, cfg.intermediate, out=act), layer.w_down, residual=h, out=h)
        rows = batch.n_rows
        if rows == 0:  # a step of prompt chunks only: nothing to sample yet
            return
        picked = ws.picked.view(0, (rows, cfg.hidden))
        embedding(Weight("f32", (n, cfg.hidden), h), v["logit_rows"], out=picked)
        normed = ws.normed.view(0, (rows, cfg.hidden))
        rmsnorm(picked, self.out_norm, cfg.rms_eps, out=normed)
        linear(normed, self.lm_head, out=ws.logits.view(0, (rows, cfg.vocab)))


class SequenceCache:
    """Paged KV storage for a single sequence, with its own small page pool: for tests, scripts
    and benchmarks that run one sequence through `LlamaModel.forward` without the engine."""

    def __init__(self, model: LlamaModel, max_len: int, page_size: int = 16):
        n_pages = -(-max_len // page_size)
        self.max_len = max_len
        self.kv = PagedKV(model.dev, model.kv_layout(page_size), n_pages)
        self.table = PageTable(PagePool(n_pages, page_size))

    @property
    def length(self) -> int:
        """Tokens whose K/V are stored."""
        return self.table.n_tokens


class Workspace:
    """Every activation of a forward pass over up to `max_tokens` tokens (`max_decode` of them
    decode-attention rows) with `max_rows` logit rows, allocated up front: a step then allocates
    nothing, and recorded launches keep pointing at live memory. Steps use the leading rows."""

    def __init__(self, model: LlamaModel, max_tokens: int, max_decode: int, max_rows: int,
                 max_splits: int):
        cfg, dev = model.cfg, model.dev
        hd, n = cfg.head_dim, max_tokens
        self.h = dev.empty((n, cfg.hidden), tt.f32)
        self.x = dev.empty((n, cfg.hidden), tt.f32)
        self.qkv = dev.empty((n, (cfg.n_heads + 2 * cfg.n_kv_heads) * hd), tt.f32)
        self.attn = dev.empty((n, cfg.n_heads, hd), tt.f32)
        self.gate_up = dev.empty((n, 2 * cfg.intermediate), tt.f32)
        self.act = dev.empty((n, cfg.intermediate), tt.f32)
        rows = max(max_rows, 1)
        self.picked = dev.empty((rows, cfg.hidden), tt.f32)
        self.normed = dev.empty((rows, cfg.hidden), tt.f32)
        self.logits = dev.empty((rows, cfg.vocab), tt.f32)
        self.max_splits = max(max_splits, 1)  # also bounds prefill attention's key splits
        partial_rows = max_decode * cfg.n_heads * self.max_splits
        self.partials = (dev.empty((partial_rows, hd), tt.f32), dev.empty((partial_rows, 2), tt.f32))
