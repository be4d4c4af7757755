"""Prefix cache at scale (CPU, pure Python): match / insert / evict latency vs cached prefixes.

The workload imitates a chat server: a few system prompts of skewed popularity; each request
either opens a conversation (system prompt + user turn + reply) or continues a random earlier
one with a new turn (up to 8 turns). Each request runs as the engine will run it: match its
tokens (all but the last), allocate pages for the rest, insert the whole sequence, release.

The cache is grown request by request; at each size N (number of requests cached, each a
distinct sequence) it is measured in steady state, as a full cache is: every sample is one
request whose insert is followed by an eviction of as many pages as it added, so N stays put.
Reported per operation: median, 99th percentile and worst case of min(samples, N) calls, in µs. Also
shown: trie nodes, the widest child index (its WAVL root rank) and the eviction index (size and
root rank), the structures whose logarithmic depth the latencies should follow.

gc: the cyclic collector is disabled while the samples run (after a collection), so the worst
case is the cache's own work; a young-generation collection that happens to fall inside a call
costs 1-6 ms here (it walks the fresh token tuples), and a full one walks every object of the
process. The engine should collect between steps. --gc keeps it enabled (frozen after each build
phase, as a server with millions of long-lived objects would) to show that cost.

    python benchmarks/bench_prefix_cache.py [--sizes 100 1000 10000 100000] [--page-sizes 16 64 256]
"""

from __future__ import annotations

import argparse
import datetime
import gc
import platform
import random
import statistics
import time

from tattletale.cache import PagePool, PageTable, PrefixCache

VOCAB = 32000
MAX_TURNS = 8


class Workload:
    """Requests of a chat server; a sequence is stored as (parent id, new tokens) to share memory."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.vocab = list(range(VOCAB))  # shared int objects: token tuples cost 8 bytes a token
        self.systems = [self.text(200, 1500) for _ in range(8)]
        self.weights = [1 / (i + 1) for i in range(len(self.systems))]
        self.seqs: list[tuple[int, tuple[int, ...], int]] = []  # (parent or -1, tokens, turns)

    def text(self, lo: int, hi: int) -> tuple[int, ...]:
        return tuple(self.rng.choices(self.vocab, k=self.rng.randint(lo, hi)))

    def tokens(self, i: int) -> tuple[int, ...]:
        parts = []
        while i >= 0:
            i, part, _ = self.seqs[i]
            parts.append(part)
        return tuple(t for part in reversed(parts) for t in part)

    def next_request(self) -> tuple[int, ...]:
        """A new sequence (prompt + reply): a new conversation 30% of the time, else a new turn."""
        turn = self.text(20, 300) + self.text(20, 400)
        rng = self.rng
        parent = rng.randrange(len(self.seqs)) if self.seqs and rng.random() < 0.7 else -1
        if parent >= 0 and self.seqs[parent][2] < MAX_TURNS:
            self.seqs.append((parent, turn, self.seqs[parent][2] + 1))
        else:
            system = rng.choices(self.systems, self.weights)[0]
            self.seqs.append((-1, system + turn, 1))
        return self.tokens(len(self.seqs) - 1)


def serve(cache: PrefixCache, tokens: tuple[int, ...]) -> tuple[int, int, int, int]:
    """One request, the engine's way; returns (match ns, insert ns, pages added, tokens matched)."""
    pool = cache.pool
    t0 = time.perf_counter_ns()
    m = cache.match(tokens[:-1])
    t1 = time.perf_counter_ns()
    table = PageTable(pool, m.pages)
    table.append(len(tokens) - m.n_tokens)
    before = cache.n_pages
    t2 = time.perf_counter_ns()
    cache.insert(tokens, table.pages)
    t3 = time.perf_counter_ns()
    cache.release(m)
    table.free()
    return t1 - t0, t3 - t2, cache.n_pages - before, m.n_tokens


def stats(ns: list[int]) -> str:
    q = sorted(ns)
    p99 = q[min(len(q) - 1, int(0.99 * len(q)))]
    return f"{statistics.median(q) / 1e3:.1f} / {p99 / 1e3:.1f} / {q[-1] / 1e3:.0f}"


def widest_index(cache: PrefixCache) -> tuple[int, int]:
    """(size, root rank) of the largest child index in the trie."""
    best = (len(cache.root.children), cache.root.children.root.rank if cache.root.children.root else -1)
    stack = [cache.root]
    while stack:
        node = stack.pop()
        for child in node.children:
            stack.append(child)
            if len(child.children) > best[0]:
                best = (len(child.children), child.children.root.rank)
    return best


def run(page_size: int, sizes: list[int], samples: int, seed: int, keep_gc: bool) -> None:
    work = Workload(seed)
    requests = max(sizes) + samples * len(sizes)
    # room for every request's new tokens (about 370 on average) without evicting while building
    pool = PagePool(requests * (700 // page_size + 2) + 8 * (1500 // page_size + 1), page_size)
    cache = PrefixCache(pool)
    cached = 0
    for n in sizes:
        while cached < n:
            serve(cache, work.next_request())
            cached += 1
        gc.collect()
        if keep_gc:
            gc.freeze()
        else:
            gc.disable()
        match_ns, insert_ns, evict_ns = [], [], []
        hit = total = 0
        for _ in range(min(samples, n)):  # at most the cache's size: a small cache is not churned over

            tokens = work.next_request()
            m_ns, i_ns, added, matched = serve(cache, tokens)
            t0 = time.perf_counter_ns()
            cache.evict(added)
            evict_ns.append(time.perf_counter_ns() - t0)
            match_ns.append(m_ns)
            insert_ns.append(i_ns)
            hit += matched
            total += len(tokens) - 1
        fan, fan_rank = widest_index(cache)
        lru = cache._lru
        print(f"| {page_size} | {n:,} | {cache.n_nodes:,} | {cache.n_pages:,} | {fan:,} (rank {fan_rank}) "
              f"| {len(lru):,} (rank {lru.root.rank}) | {100 * hit / total:.0f}% | {stats(match_ns)} "
              f"| {stats(insert_ns)} | {stats(evict_ns)} |", flush=True)
        gc.unfreeze()
        gc.enable()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000, 3000, 10000, 30000, 100000])
    ap.add_argument("--page-sizes", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gc", action="store_true", help="keep the cyclic garbage collector enabled")
    args = ap.parse_args()
    print(f"# tattletale prefix cache — {platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()} — {datetime.date.today()}")
    print(f"# min({args.samples}, size) steady-state requests per size, gc {'on' if args.gc else 'off'}; "
          "latencies in µs: median / p99 / worst")
    print()
    print("| page size | requests cached | trie nodes | cached pages | widest child index | eviction index "
          "| tokens matched | match | insert | evict |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for ps in args.page_sizes:
        run(ps, args.sizes, args.samples, args.seed, args.gc)


if __name__ == "__main__":
    main()
