"""Small model files written with numpy alone (no torch): an HF directory (config, safetensors,
tokenizer) and a GGUF file of the same random Llama, both with a byte-level BPE tokenizer.

The loader, `tt.LLM` and `tt run` error tests start from these and damage them on purpose; the
two formats hold identical weights (GGUF's q/k rows permuted as llama.cpp's converter does), so
they must also give identical logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, FFN, CONTEXT = 64, 2, 2, 1, 32, 96, 128
SPECIALS = ["<|im_start|>", "<|im_end|>"]
VOCAB = 256 + len(SPECIALS)
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def byte_tokens() -> list[str]:
    """GPT-2's byte → printable character map, in byte order: token i is byte i."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def hf_config(**overrides) -> dict:
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
           "intermediate_size": FFN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
           "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM, "vocab_size": VOCAB,
           "max_position_embeddings": CONTEXT, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
           "tie_word_embeddings": False, "bos_token_id": None, "eos_token_id": 257}
    cfg.update(overrides)
    return cfg


def random_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """HF tensor names → f32 arrays of the tiny Llama."""
    rng = np.random.default_rng(seed)
    q, kv = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM

    def mat(n, k):
        return (rng.uniform(-1, 1, (n, k)) / np.sqrt(k)).astype(np.float32)

    def norm(n):
        return rng.uniform(0.8, 1.2, n).astype(np.float32)

    w = {"model.embed_tokens.weight": rng.normal(0, 1, (VOCAB, HIDDEN)).astype(np.float32),
         "model.norm.weight": norm(HIDDEN), "lm_head.weight": mat(VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        w |= {p + "input_layernorm.weight": norm(HIDDEN),
              p + "post_attention_layernorm.weight": norm(HIDDEN),
              p + "self_attn.q_proj.weight": mat(q, HIDDEN), p + "self_attn.k_proj.weight": mat(kv, HIDDEN),
              p + "self_attn.v_proj.weight": mat(kv, HIDDEN), p + "self_attn.o_proj.weight": mat(HIDDEN, q),
              p + "mlp.gate_proj.weight": mat(FFN, HIDDEN), p + "mlp.up_proj.weight": mat(FFN, HIDDEN),
              p + "mlp.down_proj.weight": mat(HIDDEN, FFN)}
    return w


def write_tokenizer(path: Path) -> None:
    """tokenizer.json (byte-level BPE, no merges: one token per byte) and tokenizer_config.json."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(byte_tokens())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": None, "eos_token": "<|im_end|>", "add_bos_token": False,
         "chat_template": CHATML}))


def write_hf(path: Path, seed: int = 0, weights: dict[str, np.ndarray] | None = None,
             **config) -> Path:
    """An HF model directory; `weights` replaces the random ones, `config` overrides keys."""
    from safetensors.numpy import save_file

    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(hf_config(**config)))
    save_file(weights if weights is not None else random_weights(seed),
              str(path / "model.safetensors"))
    write_tokenizer(path)
    return path


def _gguf_names(hf: str) -> str:
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if hf in top:
        return top[hf]
    layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    _, _, i, rest = hf.split(".", 3)
    return f"blk.{i}.{layer[rest.removesuffix('.weight')]}.weight"


def _to_pairs(w: np.ndarray, heads: int) -> np.ndarray:
    """HF's rotate-half q/k rows → GGUF Llama's interleaved pairs (llama.cpp's convert permute)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path: Path, seed: int = 0, arch: str = "llama",
               dtypes: dict[str, type] | None = None, tokenizer: str = "gpt2") -> Path:
    """A GGUF file of the same model as write_hf(seed); `dtypes` stores some tensors (GGUF
    names) with another numpy dtype (np.float16, or np.int32 for an unsupported type);
    `tokenizer` is the tokenizer.ggml.model it declares."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(LAYERS)
    w.add_context_length(CONTEXT)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    w.add_tokenizer_model(tokenizer)
    w.add_tokenizer_pre("gpt2")
    w.add_token_list([*byte_tokens(), *SPECIALS])
    w.add_token_types([1] * 256 + [3] * len(SPECIALS))
    w.add_token_merges([])
    w.add_eos_token_id(257)
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML)
    for name, value in random_weights(seed).items():
        gname = _gguf_names(name)
        if gname.endswith("attn_q.weight"):
            value = _to_pairs(value, HEADS)
        elif gname.endswith("attn_k.weight"):
            value = _to_pairs(value, KV_HEADS)
        dtype = (dtypes or {}).get(gname)
        w.add_tensor(gname, value.astype(dtype) if dtype is not None else value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
