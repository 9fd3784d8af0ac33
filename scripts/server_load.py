#!/usr/bin/env python3
"""server_load.py: a load generator for `06_batching server`, measured from the client's side.

What it teaches: how serving benchmarks (vLLM's benchmark_serving, for one) measure a server.
Open loop (the default): request i of a requests file is sent at its arrival time, counted from
the start, whether or not the earlier ones have finished, so a slow server builds a queue as it
would in production. Closed loop (--concurrency N): N clients, each sending its next request as
soon as its previous one finished (the arrival times are ignored), so the server never has more
than N requests. Every request streams (stream: true, temperature 0, prompt = its token ids,
max_tokens = its max_new). Per request it records:
  TTFT   time to first token: from just before the request is sent to the first SSE chunk that
         carries a token (so it includes connecting, the request's parsing, the queue, the prefill
         and the response's way back);
  ITL    inter-token latency: for each later token, the time since the token before it (a chunk
         that carries k tokens gives its first token the gap since the previous chunk and the
         other k-1 a gap of 0: every token counts once, as in the engine's own log);
  TPOT   time per output token: (last token - first token) / (tokens - 1), one value per request,
         as 'serve' reports it;
  finish the time of its last token.
Every request must get exactly max_new tokens (greedy, and the built-in random model never ends
early); anything else prints one error line and exits 1. --expect OUT also checks every request's
ids against the output of `06_batching serve` on the same file (greedy: the same tokens).

Output: one TSV row on stdout (--header prints the column names first):
  mode rate requests tokens_per_s ttft_p50_s ttft_p99_s itl_p50_ms itl_p99_ms tpot_p50_ms
  tpot_p99_ms client_cpu_s
mode is 'http' (open loop; rate = requests per second, given by --rate or measured from the file)
or 'http-closed' (rate = the concurrency). tokens_per_s = generated tokens / (last finish - first
send). client_cpu_s is this process's own CPU time: on a small machine the load generator takes
CPU from the server it measures.

'in-process' rows: `server_load.py serve-row --metrics M.tsv --iterations I.tsv --rate R` prints
the same columns for `06_batching serve --metrics M.tsv --iterations I.tsv` on the same requests
(simulated clock): throughput, TTFT and TPOT from M.tsv; ITL from the iteration log, each
iteration's decode tokens waiting for that iteration's duration (clock_s minus the clock_s before).

--server-ttft FILE reads the server's /metrics before and after the run and writes to FILE the
mean TTFT the server measured (engine_time_to_first_token_seconds sum / count over this run's
requests) beside the mean TTFT this client measured for the same requests.

Needs httpx (installed with the openai package; newer openai releases ship it as httpx2).
"""
import argparse
import asyncio
import json
import math
import sys
import time

try:
    import httpx2 as httpx
except ImportError:
    try:
        import httpx
    except ImportError:
        sys.exit("server_load.py: needs httpx (python3 -m venv build/venv && build/venv/bin/pip install openai)")

COLUMNS = ("mode rate requests tokens_per_s ttft_p50_s ttft_p99_s itl_p50_ms itl_p99_ms "
           "tpot_p50_ms tpot_p99_ms client_cpu_s").split()


def fail(msg):
    print(f"server_load.py: {msg}", file=sys.stderr)
    sys.exit(1)


def read_requests(path):
    """[(arrival_s, max_new, [prompt ids])] in file order; '#' starts a comment."""
    reqs = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.split("#", 1)[0].split()
            if not line:
                continue
            try:
                reqs.append((float(line[0]), int(line[1]), [int(t) for t in line[2:]]))
            except (ValueError, IndexError):
                fail(f"{path}:{lineno}: expected '<arrival_seconds> <max_new_tokens> <prompt ids...>'")
    if not reqs:
        fail(f"{path}: no requests")
    return reqs


def percentile(values, p):
    """Nearest rank (as the engine computes its own): the ceil(p/100 * n)-th smallest; nan for none."""
    if not values:
        return math.nan
    v = sorted(values)
    k = math.ceil(p / 100.0 * len(v)) - 1
    return v[min(max(k, 0), len(v) - 1)]


class Record:
    """One request's timings, in seconds of time.perf_counter()."""

    def __init__(self):
        self.send = self.first = self.last = math.nan
        self.n_tokens = 0
        self.gaps = []  # (n_tokens - 1) inter-token gaps
        self.chunks = 0
        self.ids = []


async def one_request(client, url, index, req, rec):
    _, max_new, prompt = req
    body = {"prompt": prompt, "max_tokens": max_new, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    rec.send = time.perf_counter()
    async with client.stream("POST", url, json=body) as resp:
        if resp.status_code != 200:
            text = (await resp.aread()).decode(errors="replace").strip()
            raise RuntimeError(f"request {index}: HTTP {resp.status_code}: {text[:200]}")
        done = False
        async for line in resp.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                done = True
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise RuntimeError(f"request {index}: error in the stream: {chunk['error']}")
            ids = [t for c in chunk.get("choices", []) for t in c.get("token_ids", [])]
            if not ids:
                continue
            now = time.perf_counter()
            if rec.n_tokens == 0:
                rec.first = now
            else:
                rec.gaps.append(now - rec.last)
            rec.gaps.extend([0.0] * (len(ids) - 1))
            rec.last = now
            rec.n_tokens += len(ids)
            rec.ids.extend(ids)
            rec.chunks += 1
        if not done:
            raise RuntimeError(f"request {index}: the stream ended without 'data: [DONE]'")
    if rec.n_tokens != max_new:
        raise RuntimeError(f"request {index}: {rec.n_tokens} tokens streamed, max_tokens was {max_new}")


async def open_loop(client, url, reqs, recs):
    start = time.perf_counter()

    async def at_arrival(i):
        delay = start + reqs[i][0] - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await one_request(client, url, i, reqs[i], recs[i])

    await asyncio.gather(*(at_arrival(i) for i in range(len(reqs))))


async def closed_loop(client, url, reqs, recs, concurrency):
    next_index = 0

    async def worker():
        nonlocal next_index
        while next_index < len(reqs):
            i = next_index
            next_index += 1
            await one_request(client, url, i, reqs[i], recs[i])

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def server_ttft(client, base):
    """(sum, count) of the server's engine_time_to_first_token_seconds histogram."""
    text = (await client.get(base + "/metrics")).text
    vals = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].startswith("engine_time_to_first_token_seconds_"):
            vals[parts[0].rsplit("_", 1)[1]] = float(parts[1])
    if "sum" not in vals or "count" not in vals:
        raise RuntimeError(f"{base}/metrics has no engine_time_to_first_token_seconds_sum/_count")
    return vals["sum"], vals["count"]


async def run(args, reqs, recs):
    base = args.url.rstrip("/")
    n_conn = args.concurrency if args.concurrency else len(reqs)
    limits = httpx.Limits(max_connections=n_conn, max_keepalive_connections=n_conn)
    timeout = httpx.Timeout(args.timeout, connect=10.0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        before = await server_ttft(client, base) if args.server_ttft else None
        if args.concurrency:
            await closed_loop(client, base + "/v1/completions", reqs, recs, args.concurrency)
        else:
            await open_loop(client, base + "/v1/completions", reqs, recs)
        after = await server_ttft(client, base) if args.server_ttft else None
    return before, after


def check_expected(path, recs):
    """Every request's streamed ids equal those of serve's line '<index>: <ids>' for it."""
    want = {}
    with open(path) as f:
        for line in f:
            head, _, ids = line.partition(":")
            if head.strip().isdigit():
                want[int(head)] = ids.split()
    for i, r in enumerate(recs):
        if i not in want:
            fail(f"{path}: no line for request {i}")
        if [str(t) for t in r.ids] != want[i]:
            fail(f"request {i}: the streamed ids differ from {path}'s")


def row(mode, rate, n, tokens_per_s, ttft, itl, tpot, cpu):
    """One TSV row of COLUMNS: ttft in s, itl and tpot in s (printed in ms)."""
    cells = [mode, rate, str(n), f"{tokens_per_s:.3f}",
             f"{percentile(ttft, 50):.6f}", f"{percentile(ttft, 99):.6f}",
             f"{percentile(itl, 50) * 1e3:.3f}", f"{percentile(itl, 99) * 1e3:.3f}",
             f"{percentile(tpot, 50) * 1e3:.3f}", f"{percentile(tpot, 99) * 1e3:.3f}", cpu]
    return "\t".join(cells)


def load_main(argv):
    ap = argparse.ArgumentParser(prog="server_load.py",
                                 description="Open-loop (default) or closed-loop load on 06_batching server; one TSV row.")
    ap.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8000")
    ap.add_argument("--requests", required=True, help="a requests file of '06_batching gen-requests'")
    ap.add_argument("--concurrency", type=int, default=0, help="closed loop with N clients (default 0: open loop)")
    ap.add_argument("--rate", help="the rate to print in the row (default: requests / last arrival)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds a request may take (default 600)")
    ap.add_argument("--server-ttft", metavar="FILE", help="write the server's and this client's mean TTFT to FILE")
    ap.add_argument("--expect", metavar="OUT", help="check the ids against '06_batching serve' output OUT")
    ap.add_argument("--mode", help="the mode column (default http, or http-closed with --concurrency)")
    ap.add_argument("--header", action="store_true", help="print the column names first")
    args = ap.parse_args(argv)
    reqs = read_requests(args.requests)
    recs = [Record() for _ in reqs]
    cpu0 = time.process_time()
    try:
        before, after = asyncio.run(run(args, reqs, recs))
    except (RuntimeError, httpx.HTTPError, OSError, ValueError) as e:
        fail(f"{args.url}: {type(e).__name__}: {e}")
    cpu = time.process_time() - cpu0
    generated = sum(r.n_tokens for r in recs)
    span = max(r.last for r in recs) - min(r.send for r in recs)
    ttft = [r.first - r.send for r in recs]
    itl = [g for r in recs for g in r.gaps]
    tpot = [(r.last - r.first) / (r.n_tokens - 1) for r in recs if r.n_tokens > 1]
    if args.concurrency:
        mode, rate = "http-closed", str(args.concurrency)
    else:
        last = max(a for a, _, _ in reqs)
        mode, rate = "http", args.rate or (f"{len(reqs) / last:.3f}" if last > 0 else "inf")
    if args.expect:
        check_expected(args.expect, recs)
    mode = args.mode or mode
    if args.header:
        print("\t".join(COLUMNS))
    print(row(mode, rate, len(reqs), generated / span, ttft, itl, tpot, f"{cpu:.3f}"))
    chunks = sum(r.chunks for r in recs)
    if chunks < generated:
        print(f"server_load.py: {generated} tokens came in {chunks} chunks "
              f"({generated - chunks} tokens shared a chunk with the token before)", file=sys.stderr)
    if args.server_ttft:
        count = after[1] - before[1]
        if count != len(reqs):
            fail(f"the server counted {count:g} first tokens during the run, not {len(reqs)}: other traffic?")
        with open(args.server_ttft, "w") as f:
            f.write("# metric\tvalue\n")
            f.write(f"client_ttft_mean_s\t{sum(ttft) / len(ttft):.6f}\n")
            f.write(f"server_ttft_mean_s\t{(after[0] - before[0]) / count:.6f}\n")
            f.write(f"requests\t{len(reqs)}\n")


def serve_row_main(argv):
    ap = argparse.ArgumentParser(prog="server_load.py serve-row",
                                 description="The TSV row of an in-process '06_batching serve' run.")
    ap.add_argument("--metrics", required=True, help="serve --metrics M.tsv")
    ap.add_argument("--iterations", required=True, help="serve --iterations I.tsv")
    ap.add_argument("--rate", required=True, help="the rate (or concurrency) to print in the row")
    ap.add_argument("--mode", default="in-process", help="the mode column (default in-process)")
    ap.add_argument("--header", action="store_true", help="print the column names first")
    args = ap.parse_args(argv)
    m = {}
    with open(args.metrics) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) == 2 and not parts[0].startswith("#"):
                m[parts[0]] = parts[1]
    need = ("requests_served", "requests_rejected", "output_tokens", "throughput_tokens_per_s",
            "ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s")
    missing = [k for k in need if k not in m]
    if missing:
        fail(f"{args.metrics}: no {', '.join(missing)}")
    if int(m["requests_rejected"]) != 0:
        fail(f"{args.metrics}: {m['requests_rejected']} requests rejected")
    itl, clock, decodes = [], None, 0
    with open(args.iterations) as f:
        cols = None
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if line.startswith("#"):
                cols = [c.strip("# ") for c in parts]
                continue
            r = dict(zip(cols, parts))
            c, d = float(r["clock_s"]), int(r["decode_tokens"])
            if d > 0:
                if clock is None:
                    fail(f"{args.iterations}: decode tokens in the first iteration")
                itl.extend([c - clock] * d)
            decodes += d
            clock = c
    served, out = int(m["requests_served"]), int(m["output_tokens"])
    if decodes != out - served:
        fail(f"{args.iterations}: {decodes} decode tokens, expected output_tokens - requests = {out - served}")
    if args.header:
        print("\t".join(COLUMNS))
    # serve reports TTFT and TPOT as percentiles already: they are printed as they are
    cells = [args.mode, args.rate, str(served), m["throughput_tokens_per_s"], m["ttft_p50_s"], m["ttft_p99_s"],
             f"{percentile(itl, 50) * 1e3:.3f}", f"{percentile(itl, 99) * 1e3:.3f}",
             f"{float(m['tpot_p50_s']) * 1e3:.3f}", f"{float(m['tpot_p99_s']) * 1e3:.3f}", "-"]
    print("\t".join(cells))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve-row":
        serve_row_main(sys.argv[2:])
    else:
        load_main(sys.argv[1:])
