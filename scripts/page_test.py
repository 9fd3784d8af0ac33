#!/usr/bin/env python3
"""page_test.py: chapter 06's live page (06_batching/page.html) in a real browser.

Debian's headless chromium, driven by Selenium through Debian's chromedriver (no browser is
downloaded), loads the page of a running `06_batching server` while this script sends it a scripted
workload, and checks what the page drew against the server's own numbers:

  live URL SHOT   many clients with a shared prompt prefix on a small pool (the server started with
                  few blocks): the pool grid has one cell per block of the pool (/metrics); its
                  coloured cells are exactly the blocks in use of the state it drew, and match the blocks in
                  use /metrics reports within one update (between the least and the most /metrics said
                  while that state was current, sampled every 5 ms: at least 90% of the reads), its grey ones the cached
                  blocks; blocks shared by two tables show; a preempted sequence shows as preempted
                  (in the waiting queue or as a cell of the grid); every /state the page could
                  draw keeps the engine's invariants (check_state); when the load is over, nothing
                  is coloured; no console errors; a screenshot at SHOT.
  big URL SHOT    256 sequences at once on a 4096-block pool: every block drawn, every sequence
                  listed; the page's own time to draw one update (parse excluded) is printed --
                  measured, not asserted (the repository's tests never assert timings).

Prints "ok: ..." (one line) or "FAIL: ..." and exits 1. scripts/page-test.sh runs it.
"""
import json
import sys
import threading
import time
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def metric(url, name):
    for line in get(url + "/metrics").splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    fail("/metrics has no " + name)


def check_state(st):
    """The engine's invariants in one /state: None, or what is wrong."""
    ref, owner, n = st["pool"]["ref"], st["pool"]["owner"], st["num_blocks"]
    if len(ref) != n or len(owner) != n:
        return "pool arrays of %d and %d entries for %d blocks" % (len(ref), len(owner), n)
    used = sum(1 for r in ref if r > 0)
    cached = sum(1 for r in ref if r < 0)
    free = sum(1 for r in ref if r == 0)
    if used != st["blocks_used"] or cached != st["blocks_cached"] or free + used + cached != n:
        return "free %d + used %d + cached %d of %d; the engine says used %d, cached %d" % (
            free, used, cached, n, st["blocks_used"], st["blocks_cached"])
    tables = {}
    for q in st["seqs"]:
        if q["queue"] == "waiting" and q["blocks"]:
            return "waiting request #%d holds blocks %s" % (q["tag"], q["blocks"])
        for b in q["blocks"]:
            tables[b] = tables.get(b, 0) + 1
    if len(tables) != used:
        return "the tables hold %d distinct blocks, the pool counts %d in use" % (len(tables), used)
    for b, k in tables.items():
        if ref[b] != k:
            return "block %d is in %d tables but has reference count %d" % (b, k, ref[b])
    running = [q for q in st["seqs"] if q["queue"] == "running"]
    if len(running) != st["running"] or len(st["seqs"]) - len(running) != st["waiting"]:
        return "%d running and %d waiting listed, the engine says %d and %d" % (
            len(running), len(st["seqs"]) - len(running), st["running"], st["waiting"])
    return None


class Load:
    """`clients` threads, each sending completions one after another (the prompt: a shared prefix,
    then its own tokens; streaming off, greedy): at least `per_client` each, and more until stop()."""

    def __init__(self, url, clients, per_client, prefix, own, max_tokens):
        self.url, self.errors, self.done, self.more = url, [], 0, True
        self.barrier = threading.Barrier(clients)  # every client sends its first request at once
        self.model = json.loads(get(url + "/v1/models"))["data"][0]["id"]
        self.threads = []
        for c in range(clients):
            t = threading.Thread(target=self.client, args=(c, per_client, prefix, own, max_tokens), daemon=True)
            self.threads.append(t)

    def client(self, c, per_client, prefix, own, max_tokens):
        self.barrier.wait()
        k = 0
        while k < per_client or (self.more and not self.errors):
            prompt = [1] + [(7 * i + 3) % 1000 + 10 for i in range(prefix)] + \
                     [(c * 131 + k * 17 + i * 5) % 1000 + 10 for i in range(own)]
            body = json.dumps({"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}).encode()
            req = urllib.request.Request(self.url + "/v1/completions", data=body,
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=300) as r:
                    json.loads(r.read())
                self.done += 1
            except (urllib.error.URLError, OSError, ValueError) as e:
                self.errors.append(str(e))
            k += 1

    def stop(self):
        self.more = False

    def start(self):
        for t in self.threads:
            t.start()

    def running(self):
        return any(t.is_alive() for t in self.threads)

    def join(self):
        for t in self.threads:
            t.join()


class Sampler:
    """/metrics' blocks in use every 5 ms, with the wall clock of each sample."""

    def __init__(self, url):
        self.url, self.samples, self.stop = url, [], False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop:
            try:
                t0 = time.time()
                used = metric(self.url, "engine_kv_blocks_used")
                self.samples.append((t0, time.time(), used))
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.005)

    def around(self, t, before, after):
        return {u for (a, b, u) in list(self.samples) if a >= t - before and b <= t + after}


def browser(chromium, driver):
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1100"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)


def page_view(d):
    return d.execute_script(
        "const p = window.__page; return p && {updates: p.updates, cells: p.cells, coloured: p.coloured, "
        "shared: p.shared, cached: p.cached, preemptedSeen: p.preemptedSeen, lastDrawMs: p.lastDrawMs, "
        "maxDrawMs: p.maxDrawMs, errors: p.errors, receivedAt: p.receivedAt, parts: p.parts, "
        "used: p.state && p.state.blocks_used, stCached: p.state && p.state.blocks_cached, "
        "seqs: p.state ? p.state.seqs.length : 0, total: p.state && p.state.num_blocks};")


def wait_updates(d, n, seconds):
    end = time.time() + seconds
    while time.time() < end:
        v = page_view(d)
        if v and v["updates"] >= n:
            return v
        time.sleep(0.1)
    fail("the page drew fewer than %d updates in %d s (%s)" % (n, seconds, page_view(d)))


def console_errors(d):
    return [e["message"] for e in d.get_log("browser") if e.get("level") == "SEVERE"]


def live(url, shot, d):
    sampler = Sampler(url)  # from before the page's first state on
    d.get(url + "/")
    v = wait_updates(d, 3, 20)
    total = metric(url, "engine_kv_blocks_total")
    if v["cells"] != total:
        fail("the pool grid has %d cells, the pool %d blocks" % (v["cells"], total))
    load = Load(url, clients=12, per_client=2, prefix=40, own=12, max_tokens=70)
    load.start()
    reads = matched = max_shared = 0
    bad = miss = None
    n_states = 0
    end = time.time() + 120
    while load.running():
        time.sleep(0.3)
        v = page_view(d)
        if (reads >= 30 and v["preemptedSeen"] > 0) or time.time() > end:
            load.stop()  # the clients finish the request they are in
        if v["coloured"] != v["used"] or v["cached"] != v["stCached"]:
            fail("the page drew %d coloured and %d cached cells for a state of %d used and %d cached blocks" % (
                v["coloured"], v["cached"], v["used"], v["stCached"]))
        # within one update: between the least and the most /metrics reported while that state was
        # current (it was built at most one iteration and 0.1 s before the page received it)
        near = sampler.around(v["receivedAt"] / 1000.0, 1.0, 0.1)
        reads += 1
        ok = bool(near) and min(near) <= v["coloured"] <= max(near)
        matched += ok
        if not ok:
            miss = "%d coloured, /metrics said %s around it" % (v["coloured"], sorted(near))
        max_shared = max(max_shared, v["shared"])
        if reads == 15:
            d.save_screenshot(shot)  # in the middle of the load
        st = json.loads(get(url + "/state"))
        bad = check_state(st) or bad
        n_states += 1
    load.join()
    sampler.stop = True
    if load.errors:
        fail("%d requests failed: %s" % (len(load.errors), load.errors[0]))
    if bad:
        fail("a /state broke the engine's invariants: " + bad)
    # a value the engine held only between two samples (a block freed and taken again within a few
    # ms) cannot be bracketed: at least 90% of the reads, and every state drawn exactly (above)
    if reads < 3 or matched < 0.9 * reads:
        fail("%d of %d reads of the page's coloured cells matched /metrics' blocks in use within one update (%s)" % (
            matched, reads, miss))
    preemptions = metric(url, "engine_preemptions_total")
    v = page_view(d)
    if preemptions < 1 or v["preemptedSeen"] < 1:
        fail("no preemption shown: /metrics counts %d, the page drew %d preempted entries" % (
            preemptions, v["preemptedSeen"]))
    if max_shared < 1:
        fail("no shared block drawn while 12 clients sent one prefix (prefix caching)")
    end = time.time() + 10  # the load is over: the page empties within an update or two
    while time.time() < end:
        v = page_view(d)
        if v["coloured"] == 0 and metric(url, "engine_kv_blocks_used") == 0:
            break
        time.sleep(0.2)
    cached = metric(url, "engine_kv_blocks_cached")
    if v["coloured"] != 0 or v["cached"] != cached:
        fail("after the load: %d coloured cells (0 expected), %d cached (/metrics: %d)" % (
            v["coloured"], v["cached"], cached))
    errs = console_errors(d)
    if errs or v["errors"]:
        fail("console errors: %s (failed polls: %d)" % (errs[:3], v["errors"]))
    print("ok: %d blocks drawn; %d of %d reads matched /metrics within one update; %d /state checked; "
          "%d preemptions (%d drawn); up to %d shared blocks; %d requests; screenshot %s" % (
              v["cells"], matched, reads, n_states, preemptions, v["preemptedSeen"], max_shared, load.done, shot))


def big(url, shot, d):
    d.get(url + "/")
    wait_updates(d, 2, 20)
    load = Load(url, clients=256, per_client=1, prefix=0, own=8, max_tokens=110)
    load.start()
    draws, parts, most, last = [], [], 0, -1
    end = time.time() + 120
    while load.running():
        time.sleep(0.25)
        v = page_view(d)
        if len(draws) >= 40 or time.time() > end:
            load.stop()
        if v["seqs"] >= 200 and v["updates"] != last:  # each update once
            draws.append(v["lastDrawMs"])
            parts.append(v["parts"])
        last = v["updates"]
        if v["seqs"] > most and v["seqs"] >= 256:
            d.save_screenshot(shot)  # the page at its fullest
        most = max(most, v["seqs"])
        if v["cells"] != 4096 or v["total"] != 4096:
            fail("%d cells drawn for a pool of %s blocks (4096 expected)" % (v["cells"], v["total"]))
    if most < 256:
        fail("at most %d sequences on the page at once, 256 sent" % most)
    load.join()
    if load.errors:
        fail("%d requests failed: %s" % (len(load.errors), load.errors[0]))
    errs = console_errors(d)
    if errs:
        fail("console errors: %s" % errs[:3])
    draws.sort()
    med = draws[len(draws) // 2] if draws else float("nan")
    split = {k: sorted(p[k] for p in parts)[len(parts) // 2] for k in parts[0]} if parts else {}
    print("ok: 4096 blocks and %d sequences drawn; draw time per update with >= 200 sequences: median %.1f ms "
          "(%s), max %.1f ms over %d updates (measured, not asserted); screenshot %s" % (
              most, med, ", ".join("%s %.1f" % kv for kv in split.items()), draws[-1] if draws else float("nan"),
              len(draws), shot))


def main(argv):
    if len(argv) != 6 or argv[1] not in ("live", "big"):
        print("usage: page_test.py live|big URL SCREENSHOT CHROMIUM CHROMEDRIVER", file=sys.stderr)
        return 2
    mode, url, shot, chromium, driver = argv[1:]
    d = browser(chromium, driver)
    try:
        (live if mode == "live" else big)(url, shot, d)
    finally:
        d.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
