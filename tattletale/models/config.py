"""Model hyper-parameters, read from an HF `config.json` or from GGUF metadata.

Architectures of the Llama family differ in a handful of switches, expressed here as data so one
model definition (llama.py) serves them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# architecture name (HF `model_type` / GGUF `general.architecture`) -> family switches
ARCHITECTURES = {
    "llama": {},
    "mistral": {},
    "smollm": {},
    "qwen2": {"attention_bias": True, "gguf_neox": True},
    "qwen3": {"qk_norm": True, "gguf_neox": True},
}


class UnsupportedModel(ValueError):
    """The model's architecture or one of its tensors is not supported."""


class ModelFileError(ValueError):
    """A model path that is missing, unreadable, truncated or corrupt (incomplete config included)."""


def _need(cfg: dict, key: str, where: str):
    """cfg[key], or a ModelFileError naming the missing key (a KeyError would end in a traceback)."""
    value = cfg.get(key)
    if value is None:
        raise ModelFileError(f"{where} lacks {key!r}")
    return value


@dataclass
class ModelConfig:
    arch: str
    hidden: int
    intermediate: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab: int
    max_positions: int = 4096
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    rms_eps: float = 1e-5
    tie_embeddings: bool = False
    attention_bias: bool = False
    qk_norm: bool = False
    sliding_window: int = 0
    rope_neox: bool = True  # half-split rotation (HF); GGUF Llama weights are permuted for pairs
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)

    @staticmethod
    def _family(arch: str) -> dict:
        if arch not in ARCHITECTURES:
            raise UnsupportedModel(f"unsupported architecture {arch!r}; supported: "
                                   f"{', '.join(sorted(ARCHITECTURES))}")
        return ARCHITECTURES[arch]

    @classmethod
    def from_hf(cls, cfg: dict, source: str = "config.json") -> ModelConfig:
        arch = cfg.get("model_type", "llama")
        fam = cls._family(arch)
        need = lambda key: _need(cfg, key, source)  # noqa: E731
        if cfg.get("quantization_config"):
            method = cfg["quantization_config"].get("quant_method", "?")
            raise UnsupportedModel(f"quantized HF checkpoints ({method}) are not supported; use an "
                                   f"f32/f16/bf16 checkpoint or a GGUF file")
        n_heads = need("num_attention_heads")
        eos = cfg.get("eos_token_id")
        window = cfg.get("sliding_window") if cfg.get("use_sliding_window", arch == "mistral") else 0
        # transformers ≥ 5 writes `rope_parameters` (with rope_theta inside); older `rope_scaling`
        rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
        theta = float(rope.pop("rope_theta", cfg.get("rope_theta", 10000.0)))
        scaling = rope if rope.get("rope_type", rope.get("type", "default")) != "default" else None
        return cls(
            arch=arch, hidden=need("hidden_size"), intermediate=need("intermediate_size"),
            n_layers=need("num_hidden_layers"), n_heads=n_heads,
            n_kv_heads=cfg.get("num_key_value_heads") or n_heads,
            head_dim=cfg.get("head_dim") or need("hidden_size") // n_heads,
            vocab=need("vocab_size"), max_positions=cfg.get("max_position_embeddings", 4096),
            rope_theta=theta, rope_scaling=scaling,
            rms_eps=float(cfg.get("rms_norm_eps", 1e-5)),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bool(cfg.get("attention_bias", fam.get("attention_bias", False))),
            qk_norm=fam.get("qk_norm", False), sliding_window=int(window or 0), rope_neox=True,
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=list(eos) if isinstance(eos, list) else ([eos] if eos is not None else []),
        )

    @classmethod
    def from_gguf(cls, meta: dict, has_output: bool, n_vocab: int | None = None,
                  source: str = "the GGUF metadata") -> ModelConfig:
        """`n_vocab`: the token-embedding rows, for files without `{arch}.vocab_size` (older ones)."""
        arch = meta.get("general.architecture", "llama")
        fam = cls._family(arch)

        def get(key, default=None):
            return meta.get(f"{arch}.{key}", default)

        def need(key):
            return _need(meta, f"{arch}.{key}", source)

        hidden = int(need("embedding_length"))
        n_heads = int(need("attention.head_count"))
        scaling = None
        kind = get("rope.scaling.type")
        if kind in ("linear", "yarn") or get("rope.scaling.factor"):
            scaling = {"rope_type": kind or "linear", "factor": float(get("rope.scaling.factor", 1.0))}
        vocab = get("vocab_size") or n_vocab
        if not vocab:
            raise ModelFileError(f"{source} lacks '{arch}.vocab_size' and there is no token_embd "
                                 f"tensor")
        eos = meta.get("tokenizer.ggml.eos_token_id")
        return cls(
            arch=arch, hidden=hidden, intermediate=int(need("feed_forward_length")),
            n_layers=int(need("block_count")), n_heads=n_heads,
            n_kv_heads=int(get("attention.head_count_kv", n_heads)),
            head_dim=int(get("attention.key_length", hidden // n_heads)), vocab=int(vocab),
            max_positions=int(get("context_length", 4096)),
            rope_theta=float(get("rope.freq_base", 10000.0)), rope_scaling=scaling,
            rms_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
            tie_embeddings=not has_output, attention_bias=fam.get("attention_bias", False),
            qk_norm=fam.get("qk_norm", False), sliding_window=0,
            rope_neox=fam.get("gguf_neox", False),
            bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
            eos_token_ids=[int(eos)] if eos is not None else [],
        )
