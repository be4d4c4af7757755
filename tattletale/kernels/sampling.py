"""Token sampling on the device: penalties, then greedy or temperature/top-k/top-p/min-p sampling
with a counter-based random generator. Only the chosen ids cross to the host.

Each row (sequence) has its own parameters, so one launch samples a whole batch. Filtering finds
its thresholds by bisection on the (unnormalized) probabilities instead of sorting the vocabulary:
each step is one pass of block-wide counting or summing, which every backend does well.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import tattletale as tt
from tattletale.runtimes import Tensor

from .reduce import block_max, block_min, block_sum

BLOCK = 256
BISECT_STEPS = 26


@tt.func
def hash_u32(x):
    """A well-mixed 32-bit hash (a PCG output permutation)."""
    state = x * 747796405 + 2891336453
    word = ((state >> ((state >> 28) + 4)) ^ state) * 277803737
    return (word >> 22) ^ word


@tt.kernel
def penalties_kernel(logits: tt.Buffer[tt.f32], tokens: tt.Buffer[tt.i32], counts: tt.Buffer[tt.i32],
                     rows: tt.Buffer[tt.i32], rep: tt.Buffer[tt.f32], freq: tt.Buffer[tt.f32],
                     pres: tt.Buffer[tt.f32], n: tt.i32, vocab: tt.i32):
    """For each (row, token, count) of the rows' histories: repetition (HF style: divide positive
    logits, multiply negative ones), frequency (− f·count) and presence (− p) penalties."""
    i = tt.global_id(0)
    if i < n:
        r = rows[i]
        idx = r * vocab + tokens[i]
        x = logits[idx]
        x = x / rep[r] if x > 0.0 else x * rep[r]
        logits[idx] = x - freq[r] * tt.f32(counts[i]) - pres[r]


@tt.func
def kept(probs, base, vocab, threshold, WEIGHTED, BLOCK):
    """How many probabilities reach `threshold` (WEIGHTED: their total mass), workgroup-wide."""
    c = 0.0
    for i in range(tt.local_id(0), vocab, BLOCK):
        pv = probs[base + i]
        if pv >= threshold:
            c += pv if WEIGHTED else 1.0
    return block_sum(c, BLOCK)


@tt.func
def bisect_threshold(probs, base, vocab, lo, target, WEIGHTED, BLOCK, STEPS):
    """The largest threshold in [lo, 1] (to 2^-STEPS) that still keeps `target` (a count, or
    with WEIGHTED a probability mass)."""
    a = lo
    b = 1.0
    for _ in range(STEPS):
        mid = 0.5 * (a + b)
        if kept(probs, base, vocab, mid, WEIGHTED, BLOCK) >= target:
            a = mid
        else:
            b = mid
    return a


@tt.kernel
def sample_kernel(logits: tt.Buffer[tt.f32], probs: tt.Buffer[tt.f32], temperature: tt.Buffer[tt.f32],
                  top_k: tt.Buffer[tt.i32], top_p: tt.Buffer[tt.f32], min_p: tt.Buffer[tt.f32],
                  seed: tt.Buffer[tt.u32], counter: tt.Buffer[tt.u32], out: tt.Buffer[tt.i32],
                  vocab: tt.i32, BLOCK: tt.constexpr, STEPS: tt.constexpr):
    row = tt.group_id(0)
    tid = tt.local_id(0)
    base = row * vocab
    mx = -float("inf")
    for i in range(tid, vocab, BLOCK):
        mx = max(mx, logits[base + i])
    gm = block_max(mx, BLOCK)
    temp = temperature[row]
    if temp <= 0.0:  # greedy: the first index holding the maximum
        first = tt.f32(vocab)
        for i in range(tid, vocab, BLOCK):
            if logits[base + i] == gm:
                first = min(first, tt.f32(i))
        best = block_min(first, BLOCK)
        if tid == 0:
            out[row] = tt.i32(best)
        return
    inv_t = 1.0 / temp
    for i in range(tid, vocab, BLOCK):  # unnormalized probabilities, the largest is 1
        probs[base + i] = tt.exp((logits[base + i] - gm) * inv_t)
    tt.barrier()
    # thresholds on p: min-p directly, top-k and top-p by bisection
    lo = min_p[row]
    k = top_k[row]
    if k > 0 and k < vocab:
        lo = bisect_threshold(probs, base, vocab, lo, tt.f32(k), False, BLOCK, STEPS)
    tp = top_p[row]
    if tp < 1.0:
        target = kept(probs, base, vocab, lo, True, BLOCK) * tp
        lo = bisect_threshold(probs, base, vocab, lo, target, True, BLOCK, STEPS)
    # draw u in [0, total kept mass) and find it in the running sum, in vocabulary order
    chunk = (vocab + BLOCK - 1) // BLOCK
    begin = tid * chunk
    end = min(begin + chunk, vocab)
    mass = 0.0
    for i in range(begin, end):
        pv = probs[base + i]
        if pv >= lo:
            mass += pv
    scan = tt.shared((BLOCK,), tt.f32)
    scan[tid] = mass
    tt.barrier()
    off = 1
    while off < BLOCK:  # inclusive prefix sum (Hillis-Steele)
        add = scan[tid - off] if tid >= off else 0.0
        tt.barrier()
        scan[tid] += add
        tt.barrier()
        off *= 2
    total = scan[BLOCK - 1]
    r = hash_u32(seed[row] ^ hash_u32(counter[row] + 1013904223))
    u = tt.f32(r >> 8) * (1.0 / 16777216.0) * total
    prefix = scan[tid] - mass
    if u >= prefix and (u < scan[tid] or tid == BLOCK - 1) and mass > 0.0:
        acc = prefix
        pick = -1
        for i in range(begin, end):
            pv = probs[base + i]
            if pv >= lo:
                pick = i
                acc += pv
                if acc > u:
                    break
        out[row] = pick
    if tid == 0 and total <= 0.0:
        out[row] = 0


@dataclass
class SamplingParams:
    """Per-request sampling settings (temperature 0 means greedy)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int = 0


def has_penalties(p: SamplingParams) -> bool:
    return p.repetition_penalty != 1.0 or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0


def apply_penalties(logits: Tensor, params: list[SamplingParams], histories: list[list[int]]) -> None:
    """Penalize, in place, each row's logits of the tokens in its history (prompt and output)."""
    toks, cnts, rws = [], [], []
    for r, (p, hist) in enumerate(zip(params, histories)):
        if not hist or not has_penalties(p):
            continue
        uniq, c = np.unique(np.asarray(hist, np.int64), return_counts=True)
        toks.append(uniq)
        cnts.append(c)
        rws.append(np.full(len(uniq), r))
    if not toks:
        return
    dev = logits.device
    f32 = lambda xs: dev.tensor(np.asarray(xs, np.float32))  # noqa: E731
    t, c, rw = (np.concatenate(a).astype(np.int32) for a in (toks, cnts, rws))
    penalties_kernel[-(-len(t) // BLOCK), BLOCK](
        logits, dev.tensor(t), dev.tensor(c), dev.tensor(rw),
        f32([p.repetition_penalty for p in params]), f32([p.frequency_penalty for p in params]),
        f32([p.presence_penalty for p in params]), len(t), logits.shape[1])


def sample_rows(logits: Tensor, probs: Tensor, out: Tensor, temperature: Tensor, top_k: Tensor,
                top_p: Tensor, min_p: Tensor, seed: Tensor, counter: Tensor) -> None:
    """Launch the sampler over logits [R, V] with per-row settings already on the device."""
    rows, vocab = logits.shape
    sample_kernel[rows, BLOCK](logits, probs, temperature, top_k, top_p, min_p, seed, counter, out,
                               vocab, BLOCK, BISECT_STEPS)


def sample(logits: Tensor, params: list[SamplingParams], counters: list[int],
           histories: list[list[int]] | None = None) -> np.ndarray:
    """Choose one token id per row of logits [R, V] (modified in place by penalties).

    `counters` numbers the draws of each row (e.g. its generated-token count), so a seeded
    request is reproducible whatever batch it runs in.
    """
    dev = logits.device
    rows, vocab = logits.shape
    if histories is not None:
        apply_penalties(logits, params, histories)
    f32 = lambda xs: dev.tensor(np.asarray(xs, np.float32))  # noqa: E731
    out = dev.empty(rows, tt.i32)
    sample_rows(logits, dev.empty((rows, vocab), tt.f32), out, f32([p.temperature for p in params]),
                dev.tensor(np.asarray([p.top_k for p in params], np.int32)), f32([p.top_p for p in params]),
                f32([p.min_p for p in params]), dev.tensor(np.asarray([p.seed for p in params], np.uint32)),
                dev.tensor(np.asarray(counters, np.uint32)))
    return out.numpy()


def logprobs(logits: np.ndarray, chosen: int, top: int) -> tuple[float, list[tuple[int, float]]]:
    """The chosen token's log-probability under softmax(logits) and the `top` most likely tokens."""
    x = logits.astype(np.float64)
    m = x.max()
    lse = m + np.log(np.exp(x - m).sum())
    best = np.argpartition(-x, top)[:top] if 0 < top < len(x) else np.arange(len(x))[:top]
    best = best[np.argsort(-x[best], kind="stable")]
    return float(x[chosen] - lse), [(int(i), float(x[i] - lse)) for i in best]
