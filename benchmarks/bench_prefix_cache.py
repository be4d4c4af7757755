"""Prefix cache at scale (CPU, pure Python): match / insert / evict latency vs cached prefixes.

Two workloads. `chat` imitates a chat server: a few system prompts of skewed popularity; each
request either opens a conversation (system prompt + user turn + reply) or continues a random
earlier one with a new turn (up to 8 turns), reusing that conversation's cached history.
`fanout` isolates the logarithmic part: every request is one 512-token system prompt plus its
own 256-token turn, so lengths are fixed and the system prompt's child index holds every request.
Each request runs as the engine will run it: match its tokens (all but the last), allocate pages
for the rest, insert the whole sequence, release.

The cache is grown request by request; at each size N (number of requests cached, each a
distinct sequence) it is measured in steady state, as a full cache is: every sample is one
request whose insert is followed by an eviction of as many pages as it added, so the cache
keeps its size. Reported per operation: median, 99th percentile and worst case of
min(samples, N) calls, in µs of thread CPU time (on a shared machine the wall-clock worst case
is the scheduler's, a time slice given to another process; the worst wall times are printed
too). Also shown: trie nodes, the widest child index (its WAVL root rank), the eviction index
(size and root rank), and "path", the mean number of trie nodes a request's match walks
through: the latencies should follow path x log(fan-out) + log(leaves) + the request length.

gc: the cyclic collector is disabled while the samples run (after a collection), so the worst
case is the cache's own work; a young-generation collection that happens to fall inside a call
costs 1-6 ms here (it walks the fresh token tuples), and a full one walks every object of the
process. The engine should collect between steps. --gc keeps it enabled (frozen after each build
phase, as a server with millions of long-lived objects would) to show that cost.

    python benchmarks/bench_prefix_cache.py [--workload chat|fanout] [--sizes 100 1000 100000]
                                            [--page-sizes 16 64 256] [--gc]
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

    def __init__(self, kind: str, seed: int) -> None:
        self.kind = kind
        self.rng = random.Random(seed)
        self.vocab = list(range(VOCAB))  # shared int objects: token tuples cost 8 bytes a token
        self.systems = [self.text(200, 1500) for _ in range(8)]
        self.weights = [1 / (i + 1) for i in range(len(self.systems))]
        self.seqs: list[tuple[int, tuple[int, ...], int]] = []  # (parent or -1, tokens, turns)
        if kind == "fanout":  # sequence 0: the shared system prompt, the parent of every request
            self.seqs.append((-1, self.text(512, 512), 0))

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
        if self.kind == "fanout":
            self.seqs.append((0, self.text(256, 256), 1))
            return self.tokens(len(self.seqs) - 1)
        turn = self.text(20, 300) + self.text(20, 400)
        rng = self.rng
        parent = rng.randrange(len(self.seqs)) if self.seqs and rng.random() < 0.7 else -1
        if parent >= 0 and self.seqs[parent][2] < MAX_TURNS:
            self.seqs.append((parent, turn, self.seqs[parent][2] + 1))
        else:
            system = rng.choices(self.systems, self.weights)[0]
            self.seqs.append((-1, system + turn, 1))
        return self.tokens(len(self.seqs) - 1)


class Clock:
    """Each timed call's thread CPU time and wall time, in ns."""

    def __init__(self) -> None:
        self.cpu: list[int] = []
        self.wall: list[int] = []

    def __call__(self, fn, *args):
        w0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        result = fn(*args)
        c1, w1 = time.thread_time_ns(), time.perf_counter_ns()
        self.cpu.append(c1 - c0)
        self.wall.append(w1 - w0)
        return result

    def summary(self) -> str:
        """CPU time median / p99 / worst, in µs."""
        q = sorted(self.cpu)
        p99 = q[min(len(q) - 1, int(0.99 * len(q)))]
        return f"{statistics.median(q) / 1e3:.1f} / {p99 / 1e3:.1f} / {q[-1] / 1e3:.0f}"


def serve(cache: PrefixCache, tokens: tuple[int, ...], match: Clock, insert: Clock) -> tuple[int, int]:
    """One request, the engine's way; returns (pages it added to the cache, tokens matched)."""
    m = match(cache.match, tokens[:-1])
    table = PageTable(cache.pool, m.pages)
    table.append(len(tokens) - m.n_tokens)
    before = cache.n_pages
    insert(cache.insert, tokens, table.pages)
    cache.release(m)
    table.free()
    return cache.n_pages - before, m.n_tokens


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


def run(kind: str, page_size: int, sizes: list[int], samples: int, seed: int, keep_gc: bool) -> None:
    work = Workload(kind, seed)
    requests = max(sizes) + samples * len(sizes)
    # room for every request's new tokens (about 370 on average) without evicting while building
    pool = PagePool(requests * (700 // page_size + 2) + 8 * (1500 // page_size + 1), page_size)
    cache = PrefixCache(pool)
    cached = 0
    warm, warm_work = PrefixCache(PagePool(300 * (700 // page_size + 2), page_size)), Workload(kind, ~seed)
    for _ in range(200):  # warm up the code paths and the allocator on a throwaway cache
        serve(warm, warm_work.next_request(), Clock(), Clock())
    del warm, warm_work
    for n in sizes:
        build = Clock()
        while cached < n:
            serve(cache, work.next_request(), build, build)
            cached += 1
        gc.collect()
        if keep_gc:
            gc.freeze()
        else:
            gc.disable()
        match, insert, evict = Clock(), Clock(), Clock()
        hit = total = 0
        queries = []
        for _ in range(min(samples, n)):  # at most the cache's size: a small cache is not churned over
            tokens = work.next_request()
            added, matched = serve(cache, tokens, match, insert)
            evict(cache.evict, added)
            hit += matched
            total += len(tokens) - 1
            queries.append(tokens[:-1])
        depth = statistics.mean(len(cache._walk(q, len(q) // page_size * page_size)[0]) - 1
                                for q in queries[-200:])
        fan, fan_rank = widest_index(cache)
        lru = cache._lru
        worst_wall = " / ".join(f"{max(c.wall) / 1e3:.0f}" for c in (match, insert, evict))
        mean_len, hit_rate = total // len(match.cpu), 100 * hit / total
        print(f"| {page_size} | {n:,} | {cache.n_nodes:,} | {cache.n_pages:,} | {fan:,} (rank {fan_rank}) "
              f"| {len(lru):,} (rank {lru.root.rank}) | {mean_len:,} | {hit_rate:.0f}% | {depth:.1f} "
              f"| {match.summary()} | {insert.summary()} | {evict.summary()} | {worst_wall} |", flush=True)
        gc.unfreeze()
        gc.enable()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workload", choices=["chat", "fanout"], default="chat")
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000, 3000, 10000, 30000, 100000])
    ap.add_argument("--page-sizes", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gc", action="store_true", help="keep the cyclic garbage collector enabled")
    args = ap.parse_args()
    print(f"# tattletale prefix cache — {platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()} — {datetime.date.today()}")
    print(f"# {args.workload} workload, min({args.samples}, size) steady-state requests per size, "
          f"gc {'on' if args.gc else 'off'}; "
          "µs of thread CPU time: median / p99 / worst; worst wall time: match / insert / evict")
    print()
    print("| page size | requests cached | trie nodes | cached pages | widest child index | eviction index "
          "| tokens a request | matched | path | match | insert | evict | worst wall |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for ps in args.page_sizes:
        run(args.workload, ps, args.sizes, args.samples, args.seed, args.gc)


if __name__ == "__main__":
    main()
