"""Model correctness against HF transformers (torch CPU) on tiny random models of every supported
architecture, saved with save_pretrained and loaded back through tattletale's HF loader."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tattletale.models import open_model  # noqa: E402
from tattletale.models.llama import LlamaModel  # noqa: E402

# (architecture, config overrides): odd head counts, GQA and MHA, tied and untied embeddings
CASES = [
    ("llama", dict(num_attention_heads=3, num_key_value_heads=1, tie_word_embeddings=True,
                   rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 64})),
    ("llama", dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False)),
    ("mistral", dict(num_attention_heads=5, num_key_value_heads=1, sliding_window=12)),
    ("qwen2", dict(num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=True)),
    ("qwen3", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)),
]


def tiny_model(tmp_path, arch: str, overrides: dict, seed: int):
    head_dim = 32
    cfg_cls = transformers.AutoConfig.for_model(arch).__class__
    cfg = cfg_cls(
        vocab_size=96, hidden_size=head_dim * overrides["num_attention_heads"], intermediate_size=88,
        num_hidden_layers=2, max_position_embeddings=256, rms_norm_eps=1e-6, head_dim=head_dim,
        rope_theta=10000.0, initializer_range=0.25, **overrides)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    if arch == "qwen2":  # random q/k/v biases, so that they matter
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                torch.nn.init.normal_(proj.bias, std=0.5)
    model.save_pretrained(tmp_path, safe_serialization=True)
    return model


@pytest.mark.parametrize("arch,overrides", CASES, ids=[f"{a}-{i}" for i, (a, _) in enumerate(CASES)])
def test_logits_and_greedy_match_hf(dev, tmp_path, arch, overrides):
    seed = zlib.crc32(f"{arch}{overrides}".encode()) % 1000
    hf = tiny_model(tmp_path, arch, overrides, seed)
    ours = LlamaModel(dev, open_model(tmp_path))
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 96, 110).tolist()

    with torch.no_grad():
        ref = hf(torch.tensor([tokens])).logits[0].double().numpy()
    # 80 tokens through the prefill kernel, 20 more as decode rows of one span (a prompt
    # continuing a cached prefix), then 10 single decode steps
    cache = ours.new_cache(128)
    got_prefill = ours.forward(tokens[:80], cache, all_logits=True).numpy()
    got_more = ours.forward(tokens[80:100], cache, all_logits=True).numpy()
    got_steps = [ours.forward([t], cache).numpy()[0] for t in tokens[100:]]
    got = np.concatenate([got_prefill, got_more, np.stack(got_steps)])
    scale = np.abs(ref).max()
    assert np.abs(got - ref).max() / scale < 2e-4

    # greedy continuation of 32 tokens, token for token: each of our choices must be HF's argmax
    # for the same prefix, unless HF's two best logits are tied within float32 noise there
    cache = ours.new_cache(128)
    logits = ours.forward(tokens[:8], cache)
    ids = []
    for _ in range(32):
        ids.append(int(np.argmax(logits.numpy()[0])))
        logits = ours.forward([ids[-1]], cache)
    with torch.no_grad():
        hf_logits = hf(torch.tensor([tokens[:8] + ids])).logits[0, 7:-1].double().numpy()
    for step, (ours_id, row) in enumerate(zip(ids, hf_logits)):
        best = int(row.argmax())
        if ours_id != best:
            margin = row[best] - row[ours_id]
            assert margin < 1e-4 * np.abs(row).max(), f"step {step}: {ours_id} vs HF {best}"
