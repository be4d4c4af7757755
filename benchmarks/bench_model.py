"""End-to-end model speed: prefill and batch-1 decode tokens/s, next to the peer in the same run.

* CPU (`--cpu`): the bundled SmolLM2-135M-Instruct Q4_1 GGUF on every CPU backend, against
  llama.cpp (llama-cpp-python; `use_extra_bufts=False` avoids its AMX path, which crashes with
  SIGILL on these CPUs) with the same prompt and thread count.
* GPU (`--gpu`): randomly initialised Llama-3.2-1B- and Llama-3.1-8B-shaped models in bf16 (no
  files needed), against the bandwidth roofline (weight bytes / measured copy bandwidth) and HF
  transformers' own decode on the same GPU.

    python benchmarks/bench_model.py --cpu | --gpu [--backend ...] [--tokens 64]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from common import avoid_llama_cpp_extra_bufts, header, pick_devices, torch_cuda

import tattletale as tt
from tattletale.engine.core import Engine
from tattletale.engine.request import Request
from tattletale.kernels.sampling import SamplingParams
from tattletale.models import open_model, resolve
from tattletale.models.config import ModelConfig
from tattletale.models.llama import LlamaModel

PROMPT = ("The history of computing is a story of people building machines to help them think. "
          "From the abacus to mechanical calculators, from punched cards to transistors, each step "
          "made calculation faster and cheaper. Today, a small language model can run on a laptop "
          "and answer questions about")

SHAPES = {
    "llama-3.2-1b": ModelConfig("llama", 2048, 8192, 16, 32, 8, 64, 128256, 8192, 500000.0,
                                tie_embeddings=True),
    "llama-3.1-8b": ModelConfig("llama", 4096, 14336, 32, 32, 8, 128, 128256, 8192, 500000.0),
}


def decode_loop(model: LlamaModel, prompt_ids: list[int], n_tokens: int,
                graphs: bool = True) -> tuple[float, float]:
    """(prefill s, decode tok/s) for greedy decoding of n_tokens after the prompt through the
    engine, each decode step replayed from a recording (graphs=True) or launched kernel by
    kernel. A first request of the same shape compiles and records everything untimed."""
    engine = Engine(model, None, graphs=graphs, prefix_cache=False,
                    max_context=len(prompt_ids) + n_tokens + 16)
    for _run in ("compile and record", "timed"):
        stamps: list[float] = []
        request = Request(list(prompt_ids), SamplingParams(temperature=0), n_tokens + 1, ignore_eos=True)
        engine.submit(request, lambda out: stamps.append(time.perf_counter()))
        t0 = time.perf_counter()
        while engine.step():
            pass
    model.dev.synchronize()
    return stamps[0] - t0, n_tokens / (stamps[-1] - stamps[0])


def bench_cpu(backends, n_tokens: int) -> None:
    path = resolve(None)
    mf = open_model(path)
    tok = mf.tokenizer()
    ids = tok.encode(PROMPT)
    threads = os.cpu_count() or 1
    print(header(f"SmolLM2-135M-Instruct Q4_1, {len(ids)} prompt tokens, {n_tokens} decoded, "
                 f"{threads} threads"))
    print("| engine | device | prefill tok/s | decode tok/s | decode vs llama.cpp |")
    print("|---|---|---|---|---|")
    rows = []
    for dev in pick_devices(backends):
        if getattr(dev, "is_gpu", False):
            continue
        model = LlamaModel(dev, mf)
        decode_loop(model, ids[:8], 4)  # compile every kernel first
        prefill, tps = decode_loop(model, ids, n_tokens)
        rows.append((f"tattletale {dev.backend}", dev.name, len(ids) / prefill, tps))
        print(f"<!-- tattletale {dev.backend}: prefill {len(ids) / prefill:.1f} tok/s, decode "
              f"{tps:.1f} tok/s -->", flush=True)
    try:
        llm = llama_cpp_model(str(path), threads)
        llm.eval(ids[:8])
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        prefill = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(n_tokens):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            llm.eval([token])
        ref_tps = n_tokens / (time.perf_counter() - t0)
        rows.append(("llama.cpp (llama-cpp-python)", "CPU", len(ids) / prefill, ref_tps))
    except ImportError:
        ref_tps = None
    for engine, device, p, d in rows:
        ratio = f"{d / ref_tps:.2f}" if ref_tps else ""
        print(f"| {engine} | {device} | {p:.1f} | {d:.1f} | {ratio} |", flush=True)


def llama_cpp_model(path: str, threads: int):
    """llama-cpp-python's Llama, loaded without its AMX buffer types (see common.py)."""
    import llama_cpp

    avoid_llama_cpp_extra_bufts()
    return llama_cpp.Llama(model_path=path, n_threads=threads, n_ctx=512, verbose=False)


def bench_gpu(backends, n_tokens: int) -> None:
    torch = torch_cuda()
    print(header(f"random bf16 models, batch 1, 32-token prompt, {n_tokens} decoded"))
    print("| model | engine | weights | roofline tok/s | prefill tok/s | decode tok/s | % of roofline |")
    print("|---|---|---|---|---|---|---|")
    from bench_kernels import copy_bandwidth

    prompt = list(range(1000, 1032))
    for name, cfg in SHAPES.items():
        for dev in pick_devices(backends):
            if not getattr(dev, "is_gpu", dev.backend == "cuda"):
                continue
            _, copy_bw = copy_bandwidth(dev, 1 << 30)
            model = LlamaModel(dev, None, config=cfg, random_format="bf16")
            roof = copy_bw * 1e9 / model.weight_bytes
            decode_loop(model, prompt[:4], 2)
            for graphs in (True, False):
                prefill, tps = decode_loop(model, prompt, n_tokens, graphs)
                how = "replayed steps" if graphs else "step by step"
                print(f"| {name} | tattletale {dev.backend}, {how} | {model.weight_bytes / 1e9:.2f} GB"
                      f" | {roof:.0f} | {len(prompt) / prefill:.0f} | {tps:.1f} | {tps / roof:.0%} |",
                      flush=True)
            del model
            dev.empty_pool()
        if torch is not None:
            print(f"| {name} | HF transformers {torch.__version__} | | | | "
                  f"{hf_decode_tps(torch, cfg, prompt, n_tokens):.1f} | |", flush=True)


def hf_model(torch, cfg: ModelConfig):
    """A randomly initialised HF Llama of cfg's shape, bf16, on the GPU."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_cfg = LlamaConfig(vocab_size=cfg.vocab, hidden_size=cfg.hidden,
                         intermediate_size=cfg.intermediate, num_hidden_layers=cfg.n_layers,
                         num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
                         head_dim=cfg.head_dim, tie_word_embeddings=cfg.tie_embeddings)
    with torch.device("cuda"):
        return LlamaForCausalLM(hf_cfg).to(torch.bfloat16).eval()


def hf_generate_s(torch, model, ids, n: int) -> float:
    """Seconds HF's greedy `generate` takes for n new tokens of every row of ids."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def hf_decode_tps(torch, cfg: ModelConfig, prompt: list[int], n_tokens: int) -> float:
    model = hf_model(torch, cfg)
    ids = torch.tensor([prompt], device="cuda")
    with torch.no_grad():
        hf_generate_s(torch, model, ids, 2)
        t1, tn = hf_generate_s(torch, model, ids, 1), hf_generate_s(torch, model, ids, n_tokens + 1)
    return n_tokens / (tn - t1)


def hf_batch_generate(torch, cfg: ModelConfig, prompts: list[list[int]], n_tokens: int) -> float:
    """Output tok/s of HF's batched greedy generate over equal-length prompts (prefill included,
    as an engine's throughput includes it)."""
    model = hf_model(torch, cfg)
    ids = torch.tensor(prompts, device="cuda")
    with torch.no_grad():
        hf_generate_s(torch, model, ids[:, :8], 2)
        seconds = hf_generate_s(torch, model, ids, n_tokens)
    del model
    torch.cuda.empty_cache()
    return len(prompts) * n_tokens / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--backend", nargs="*")
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    if args.cpu or not args.gpu:
        bench_cpu(args.backend, args.tokens)
    if args.gpu:
        bench_gpu(args.backend, args.tokens)


if __name__ == "__main__":
    tt.device()  # fail early when no device is present
    main()
