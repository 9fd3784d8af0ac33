#!/usr/bin/env python3
"""server_client.py: `06_batching server` held to `06_batching serve`'s tokens by real clients.

scripts/server-test.sh runs one command of this file per check group; each prints one line,
"ok: <what was checked, with the counts measured>" (exit 0) or "FAIL: <what differed>" (exit 1).
The completions go through the official openai client (OpenAI and AsyncOpenAI, any version from
1.55.3); the raw checks (idle and refused connections) through plain sockets; the error bodies and
the metrics are read with the standard library only (those commands do not import openai).

  greedy URL IDS EXPECTED [--limit N]   each request of the requests file IDS, greedy, stream off
                                        and on: token_ids equal serve's (EXPECTED), the streamed
                                        text concatenates to the whole text, usage counts right
  text URL TEXT EXPECTED                text prompts (a server with --tokenizer): serve's text
  seeded URL IDS                        temperature 0.8 with a seed: the same tokens every time
  sampled URL REQS EXPECTED             the requests of REQS, each with its own temperature=,
                                        top_p=, top_k= and seed=, all streaming at once: token_ids
                                        equal serve's for the same file (EXPECTED)
  many URL IDS EXPECTED --clients N     N clients streaming at once (AsyncOpenAI): greedy and
                                        seeded requests, each equal to its solo run
  disconnect URL IDS EXPECTED           a client closes its stream after 2 chunks while others
                                        stream: theirs unchanged, its request aborted, no block
                                        left held (GET /metrics)
  inflight URL READY N                  N streams; writes the file READY once one of them has two
                                        chunks (the caller then sends SIGTERM); every stream must
                                        end (finished, an error event or a 503, refused, or cut),
                                        none may hang; the line counts each kind of end
  error-bodies LIST                     each line of LIST, FILE PARAM FRAGMENT WHAT (tab-separated):
                                        FILE holds OpenAI's error object naming PARAM ('-': none)
                                        with FRAGMENT in its message
  counter URL NAME                      prints the value of the /metrics sample NAME
  idle HOST PORT                        a silent connection is closed by the server within 3.5 s
  connlimit HOST PORT                   with --max-connections 2 and two connections held, a third
                                        is not served (closed at once, or left waiting until one
                                        of the two closes, then served at once); the two still work

Requests files are `06_batching serve`'s: `<arrival> <max_new> <prompt ids...>`, or with a
tokenizer `<arrival> <max_new> <text>` (\\n, \\t, \\\\ escapes); its output, the EXPECTED files,
is `<i>: <ids>` or `<i>: <escaped text>`.
"""
import asyncio
import json
import socket
import sys
import threading
import time
import urllib.request


class Fail(Exception):
    """A check that did not hold: its message is the one line printed."""


# ==== the fixture's files ====================================================================


def unescape(s):
    """serve's text escapes (\\n, \\t, \\\\) undone, as text_unescape in common/tokenizer_text.c."""
    out, k = [], 0
    while k < len(s):
        if s[k] == "\\" and k + 1 < len(s) and s[k + 1] in "nt\\":
            out.append({"n": "\n", "t": "\t", "\\": "\\"}[s[k + 1]])
            k += 2
        else:
            out.append(s[k])
            k += 1
    return "".join(out)


def read_requests(path, text):
    """[(prompt, max_new)]: prompt a list of ids, or with text=True the unescaped text."""
    reqs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            _arrival, max_new, rest = (line.split(" ", 2) + [""])[:3]
            prompt = unescape(rest) if text else [int(t) for t in rest.replace(",", " ").split()]
            reqs.append((prompt, int(max_new)))
    return reqs


def read_expected(path, text):
    """serve's output lines `<i>: ...`: a list of id lists, or with text=True of texts."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\r\n")
            head, _, rest = line.partition(":")
            if int(head) != len(out) or rest.startswith(" rejected:"):
                raise Fail(f"{path}: unexpected line {line!r}")
            out.append(unescape(rest[1:]) if text else [int(t) for t in rest.split()])
    return out


def ids_text(ids):
    """The text of ids from a server without a tokenizer: ' id id id'."""
    return "".join(f" {t}" for t in ids)


# ==== one completion through the openai client ===============================================


class Result:
    """What a completion returned: its text, token ids, finish_reason and usage."""

    def __init__(self):
        self.text, self.ids, self.finish, self.usage, self.chunks = "", [], None, None, 0


def client_for(url, asynchronous=False):
    import openai  # only the commands that send completions need it

    kind = openai.AsyncOpenAI if asynchronous else openai.OpenAI
    return kind(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)


def model_id(url):
    """The served model's name, from GET /v1/models through the client."""
    models = client_for(url).models.list().data
    if len(models) != 1:
        raise Fail(f"GET /v1/models lists {len(models)} models, expected 1")
    return models[0].id


def token_ids(choice):
    ids = getattr(choice, "token_ids", None)  # the server's extension; pydantic keeps extra fields
    if ids is None:
        raise Fail("a choice without token_ids")
    return list(ids)


def take_whole(resp):
    r = Result()
    if resp.object != "text_completion":
        raise Fail(f"object {resp.object!r}, expected 'text_completion'")
    if len(resp.choices) != 1:
        raise Fail(f"{len(resp.choices)} choices, expected 1")
    c = resp.choices[0]
    r.text, r.ids, r.finish, r.usage = c.text, token_ids(c), c.finish_reason, resp.usage
    return r


def take_chunk(r, chunk):
    """Adds one streamed chunk to r; a finish_reason must come last, usage after it."""
    r.chunks += 1
    if chunk.object != "text_completion":
        raise Fail(f"a chunk's object is {chunk.object!r}, expected 'text_completion'")
    if r.usage is not None:
        raise Fail("a chunk after the usage chunk")
    if chunk.usage is not None:
        r.usage = chunk.usage
    for c in chunk.choices:
        if r.finish is not None:
            raise Fail("a chunk after the one with the finish_reason")
        r.text += c.text
        r.ids += token_ids(c)
        r.finish = c.finish_reason


def complete(client, model, prompt, max_tokens, stream, **sampling):
    """One completion, whole or streamed (with usage), as a Result."""
    args = dict(model=model, prompt=prompt, max_tokens=max_tokens, **sampling)
    if not stream:
        return take_whole(client.completions.create(**args))
    r = Result()
    for chunk in client.completions.create(stream=True, stream_options={"include_usage": True}, **args):
        take_chunk(r, chunk)
    return r


async def complete_async(client, model, prompt, max_tokens, first=None, **sampling):
    """One streamed completion (with usage) through AsyncOpenAI, as a Result; sets the event
    first (when given) at its first chunk."""
    r = Result()
    stream = await client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, stream=True,
                                             stream_options={"include_usage": True}, **sampling)
    async for chunk in stream:
        take_chunk(r, chunk)
        if first is not None:
            first.set()
    return r


def check_result(what, r, want_ids, n_prompt, max_tokens, want_text=None):
    """r against the expected tokens (and text); finish_reason and usage must agree with them."""
    if want_ids is not None and r.ids != want_ids:
        raise Fail(f"{what}: token_ids {r.ids}, expected {want_ids}")
    if want_text is not None and r.text != want_text:
        raise Fail(f"{what}: text {r.text!r}, expected {want_text!r}")
    finish = "length" if len(r.ids) == max_tokens else "stop"
    if r.finish != finish:
        raise Fail(f"{what}: finish_reason {r.finish!r} after {len(r.ids)} of {max_tokens} tokens, expected {finish}")
    u = r.usage
    if u is None:
        raise Fail(f"{what}: no usage")
    if n_prompt is not None and u.prompt_tokens != n_prompt:
        raise Fail(f"{what}: usage.prompt_tokens {u.prompt_tokens}, the prompt has {n_prompt} tokens")
    if u.completion_tokens != len(r.ids) or u.total_tokens != u.prompt_tokens + u.completion_tokens:
        raise Fail(f"{what}: usage {u.prompt_tokens}+{u.completion_tokens}={u.total_tokens} for {len(r.ids)} tokens")


# ==== (a) greedy, (b) text, (e) seeded ========================================================


def cmd_greedy(url, ids_path, expected_path, limit=None):
    reqs, expected = read_requests(ids_path, False), read_expected(expected_path, False)
    if len(reqs) != len(expected):
        raise Fail(f"{len(reqs)} requests but {len(expected)} expected lines")
    client, model = client_for(url), model_id(url)
    n = len(reqs) if limit is None else min(limit, len(reqs))
    tokens = 0
    for i in range(n):
        prompt, max_new = reqs[i]
        for stream in (False, True):
            r = complete(client, model, prompt, max_new, stream, temperature=0)
            check_result(f"request {i} (stream {'on' if stream else 'off'})", r, expected[i], len(prompt), max_new,
                         ids_text(expected[i]))
            tokens += len(r.ids)
    return f"{n} greedy requests, stream off and on: token_ids equal serve's ({tokens} tokens), text and usage right"


def cmd_text(url, text_path, expected_path):
    reqs, expected = read_requests(text_path, True), read_expected(expected_path, True)
    if len(reqs) != len(expected):
        raise Fail(f"{len(reqs)} requests but {len(expected)} expected lines")
    client, model = client_for(url), model_id(url)
    stops = 0
    for i, (prompt, max_new) in enumerate(reqs):
        whole = complete(client, model, prompt, max_new, False, temperature=0)
        check_result(f"text request {i} (stream off)", whole, None, None, max_new, expected[i])
        streamed = complete(client, model, prompt, max_new, True, temperature=0)
        check_result(f"text request {i} (stream on)", streamed, whole.ids, whole.usage.prompt_tokens, max_new,
                     expected[i])
        stops += whole.finish == "stop"
    return (f"{len(reqs)} text prompts, stream off and on: serve's text exactly "
            f"({stops} stopped at BOS/EOS, {len(reqs) - stops} at max_tokens)")


def cmd_seeded(url, ids_path):
    reqs = read_requests(ids_path, False)
    client, model = client_for(url), model_id(url)
    differ = 0
    picks = [reqs[k] for k in (0, len(reqs) // 2, len(reqs) - 1)]
    for k, (prompt, _) in enumerate(picks):
        max_new = 40
        seed = 1234 + k
        first = complete(client, model, prompt, max_new, False, temperature=0.8, seed=seed)
        again = complete(client, model, prompt, max_new, False, temperature=0.8, seed=seed)
        streamed = complete(client, model, prompt, max_new, True, temperature=0.8, seed=seed)
        check_result(f"seeded request {k} (first)", first, None, len(prompt), max_new)
        check_result(f"seeded request {k} (the same again)", again, first.ids, len(prompt), max_new)
        check_result(f"seeded request {k} (streamed)", streamed, first.ids, len(prompt), max_new)
        greedy = complete(client, model, prompt, max_new, False, temperature=0)
        differ += greedy.ids != first.ids
    if differ == 0:
        raise Fail("temperature 0.8 gave the greedy tokens for every prompt: is the temperature used?")
    return (f"{len(picks)} prompts sampled at temperature 0.8 with a seed, 3 times each (stream off, off, on): "
            f"the same tokens each time; {differ} of {len(picks)} differ from greedy")


def read_sampled(path):
    """[(prompt ids, max_new, sampling)] of a requests file whose lines carry temperature=, top_p=,
    top_k= and seed= before the ids (docs/contracts.md §2.6); sampling as the API's fields."""
    reqs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            words = line.split()
            sampling, ids = {}, []
            for w in words[2:]:
                name, eq, value = w.partition("=")
                if eq:
                    sampling[name] = float(value) if name in ("temperature", "top_p") else int(value)
                else:
                    ids.append(int(w))
            if set(sampling) != {"temperature", "top_p", "top_k", "seed"}:
                raise Fail(f"{path}: each line must give temperature=, top_p=, top_k= and seed=: {line.strip()}")
            reqs.append((ids, int(words[1]), sampling))
    return reqs


def cmd_sampled(url, reqs_path, expected_path):
    reqs, expected = read_sampled(reqs_path), read_expected(expected_path, False)
    model = model_id(url)
    # top_k is not a parameter of OpenAI's API: the client sends it in extra_body, as for vLLM
    jobs = [(p, m, {"temperature": sp["temperature"], "top_p": sp["top_p"], "seed": sp["seed"],
                    "extra_body": {"top_k": sp["top_k"]}}) for p, m, sp in reqs]
    results, _ = asyncio.run(run_streams(url, model, jobs))
    for k, ((p, m, sp), (r, _)) in enumerate(zip(reqs, results)):
        check_result(f"sampled request {k} ({sp})", r, expected[k], len(p), m)
    kinds = sorted({(sp["top_p"], sp["top_k"]) for _, _, sp in reqs})
    return (f"{len(reqs)} requests with their own temperature, top_p, top_k and seed, streaming at once: "
            f"serve's tokens exactly ({len(kinds)} top_p/top_k settings)")


# ==== (c) many clients at once, (d) one that leaves =========================================


def solo_specs(client, model, reqs, expected):
    """Requests with their solo results: serve's greedy ones, longer greedy ones and seeded
    sampled ones (these two run alone here first): [(what, prompt, max_tokens, sampling, ids)]."""
    specs = [(f"serve request {i}", p, m, {"temperature": 0}, expected[i]) for i, (p, m) in enumerate(reqs)]
    for i, (p, _) in enumerate(reqs):
        m = min(90, 127 - len(p))
        specs.append((f"long request {i}", p, m, {"temperature": 0}, None))
        specs.append((f"seeded request {i}", p, m // 2, {"temperature": 0.8, "seed": 77 + i}, None))
    for k, (what, p, m, sampling, ids) in enumerate(specs):
        if ids is None:
            specs[k] = (what, p, m, sampling, complete(client, model, p, m, False, **sampling).ids)
    return specs


async def run_streams(url, model, jobs, first=None):
    """Streams jobs [(prompt, max_tokens, sampling)] at once with AsyncOpenAI; ([(Result, t_end)],
    t_start). The event first (when given) is set at the first chunk of any of them."""
    client = client_for(url, asynchronous=True)

    async def one(prompt, max_tokens, sampling):
        r = await complete_async(client, model, prompt, max_tokens, first, **sampling)
        return r, time.monotonic()

    t0 = time.monotonic()
    out = await asyncio.gather(*(one(p, m, s) for p, m, s in jobs))
    await client.close()
    return out, t0


def check_streams(specs, results):
    """Each streamed result against its spec's solo tokens."""
    for (what, prompt, m, _, ids), (r, _) in zip(specs, results):
        check_result(f"{what}, among concurrent streams", r, ids, len(prompt), m)


def cmd_many(url, ids_path, expected_path, n_clients):
    reqs, expected = read_requests(ids_path, False), read_expected(expected_path, False)
    client, model = client_for(url), model_id(url)
    specs = solo_specs(client, model, reqs, expected)
    chosen = [specs[k % len(specs)] for k in range(n_clients)]
    results, t0 = asyncio.run(run_streams(url, model, [s[1:4] for s in chosen]))
    check_streams(chosen, results)
    tokens = sum(len(r.ids) for r, _ in results)
    seconds = max(t for _, t in results) - t0
    return (f"{n_clients} clients streaming at once ({len(specs)} kinds: serve's greedy requests, longer greedy, "
            f"seeded sampling): each equal to its solo run, {tokens} tokens in {seconds:.2f} s")


def metrics(url):
    """GET /metrics as {sample name with its labels: value}."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


ABORTED = 'engine_requests_total{outcome="aborted"}'


def leave_after_two_chunks(client, model, prompt, max_tokens, out):
    """Opens a stream, reads 2 chunks, closes the connection; appends what it saw to out. Runs in
    its own thread, so that it leaves at once rather than when the event loop of the other
    streams gets to it."""
    stream = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, stream=True,
                                       temperature=0)
    r = Result()
    for chunk in stream:
        take_chunk(r, chunk)
        if r.chunks == 2:
            break
    stream.close()
    out.append(r)


def settled(url, aborted_before, expect_abort):
    """Polls /metrics until nothing runs or waits and no KV block is held (and, with expect_abort,
    a request was aborted since aborted_before), for 3 s at most; the metrics, and whether one
    was aborted."""
    deadline = time.monotonic() + 3
    while True:
        m = metrics(url)
        idle = m["engine_requests_running"] == 0 and m["engine_requests_waiting"] == 0
        free = idle and m["engine_kv_blocks_used"] == 0
        if free and (m[ABORTED] > aborted_before or not expect_abort):
            return m, m[ABORTED] > aborted_before
        if time.monotonic() > deadline:
            if free:
                return m, False
            raise Fail(f"3 s after the streams: running {m['engine_requests_running']:g}, waiting "
                       f"{m['engine_requests_waiting']:g}, kv blocks used {m['engine_kv_blocks_used']:g}, expected 0")
        time.sleep(0.05)


def cmd_disconnect(url, ids_path, expected_path):
    """Up to 5 tries: the model is tiny, so the leaving client's request may finish before the
    client leaves (between its second chunk and its close, or all at once when the client's
    thread is starved on a busy machine); a try counts when the server aborted it."""
    reqs, expected = read_requests(ids_path, False), read_expected(expected_path, False)
    client, model = client_for(url), model_id(url)
    specs = [s for s in solo_specs(client, model, reqs, expected) if s[0].startswith("long")] * 2
    prompt = reqs[0][0]
    m_tokens = 127 - len(prompt)

    sys.setswitchinterval(0.0005)  # the leaving thread gets the interpreter soon after its chunk

    async def together():  # the others first: alone, the leaving request would finish in a few ms
        out, first = [], asyncio.Event()
        others = asyncio.ensure_future(run_streams(url, model, [s[1:4] for s in specs], first))
        await first.wait()
        leaver = threading.Thread(target=leave_after_two_chunks, args=(client, model, prompt, m_tokens, out))
        leaver.start()
        others = await others
        leaver.join()
        if not out:
            raise Fail("the leaving client failed (see its stderr)")
        return out[0], others

    tries = []
    for attempt in range(1, 6):
        aborted_before = metrics(url)[ABORTED]
        left, (results, _) = asyncio.run(together())
        check_streams(specs, results)
        m, aborted = settled(url, aborted_before, left.finish is None)
        if left.finish is not None:  # all its tokens came before the client could leave
            tries.append(f"it had all {len(left.ids)} tokens in {left.chunks} chunks")
        elif not aborted:
            tries.append("it was not aborted")
        else:
            before = f"; before: {'; '.join(tries)}" if tries else ""
            return (f"a client left after 2 chunks of {m_tokens} while {len(specs)} streamed (try {attempt}{before}): "
                    f"their tokens equal their solo runs; /metrics: aborted {m[ABORTED]:.0f}, running 0, waiting 0, "
                    f"kv blocks used 0")
    raise Fail(f"5 tries of a client leaving mid-stream: {'; '.join(tries)} (/metrics aborted {m[ABORTED]:g})")


# ==== SIGTERM with streams in flight =========================================================


async def inflight(url, ready_path, n):
    import openai

    client = client_for(url, asynchronous=True)
    model = (await client.models.list()).data[0].id
    seen_two = asyncio.Event()

    async def one(k):
        r = Result()
        try:
            stream = await client.completions.create(model=model, prompt=[1 + k], max_tokens=126, stream=True,
                                                     temperature=0)
            async for chunk in stream:
                take_chunk(r, chunk)
                if r.chunks >= 2:
                    seen_two.set()
        except openai.APIStatusError:  # an answer with an error status (503 while stopping)
            return "error status", r
        except openai.APIConnectionError as e:  # refused (no longer listening), or cut without an answer
            if type(e.__cause__).__name__ == "ConnectError":
                return "refused", r
            # closed before any chunk: a connection whose request the server had not taken yet
            return ("closed before an answer" if r.chunks == 0 else "cut without the error event"), r
        except openai.APIError as e:  # the error event in the stream
            return ("error event" if "shutting down" in str(e) else f"error: {e}"), r
        except Exception as e:  # the connection cut mid-body: httpx's own error (httpx2 in openai 3)
            if type(e).__module__.split(".")[0] in ("httpx", "httpcore", "httpx2", "httpcore2"):
                return "cut without the error event", r
            raise
        if r.finish == "length" and len(r.ids) == 126:
            return "finished", r
        return f"ended after {len(r.ids)} tokens without an error", r

    tasks = [asyncio.ensure_future(one(k)) for k in range(n)]
    await asyncio.wait_for(seen_two.wait(), 60)
    with open(ready_path, "w") as f:
        f.write("ready\n")
    t0 = time.monotonic()
    try:
        ends = await asyncio.wait_for(asyncio.gather(*tasks), 20)
    except asyncio.TimeoutError:
        raise Fail("streams still open 20 s after the server was told to stop: a client hangs")
    seconds = time.monotonic() - t0
    await client.close()
    return ends, seconds


def cmd_inflight(url, ready_path, n):
    ends, seconds = asyncio.run(inflight(url, ready_path, n))
    kinds = {}
    for how, _ in ends:
        kinds[how] = kinds.get(how, 0) + 1
    # a stream the server had taken must end with its error event (server_drain), never cut
    ends_ok = ("finished", "error event", "error status", "refused", "closed before an answer")
    odd = [k for k in kinds if k not in ends_ok]
    if odd:
        raise Fail(f"streams ended unexpectedly: {kinds}")
    if kinds.get("finished", 0) == n:
        raise Fail(f"all {n} streams finished before SIGTERM: none was in flight")
    summary = ", ".join(f"{v} {k}" for k, v in sorted(kinds.items()))
    return f"SIGTERM with {n} streams open: every stream ended within {seconds:.2f} s ({summary})"


# ==== raw checks: error bodies, metrics, sockets =============================================


def check_error_body(path, param, fragment):
    """The body in path is OpenAI's error object {"error": {message, type, param, code}} naming
    param ('-': none, so null) with fragment in its message."""
    with open(path, encoding="utf-8") as f:
        body = f.read()
    try:
        err = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        raise Fail(f"not OpenAI's error object: {body[:200]!r}")
    if not isinstance(err, dict) or sorted(err) != ["code", "message", "param", "type"]:
        raise Fail(f"the error object's keys are not OpenAI's (message, type, param, code): {body[:200]}")
    if not isinstance(err["message"], str) or not isinstance(err["type"], str):
        raise Fail(f"the error's message or type is not a string: {body[:200]}")
    if fragment not in err["message"]:
        raise Fail(f"the message {err['message']!r} lacks {fragment!r}")
    want = None if param == "-" else param
    if err["param"] != want:
        raise Fail(f"param {err['param']!r}, expected {want!r}: {body[:200]}")
    if err["code"] is not None and not isinstance(err["code"], str):
        raise Fail(f"code {err['code']!r} is neither null nor a string")


def cmd_error_bodies(list_path):
    """Each line of list_path: FILE<TAB>PARAM<TAB>FRAGMENT<TAB>WHAT."""
    n = 0
    with open(list_path, encoding="utf-8") as f:
        for line in f:
            path, param, fragment, what = line.rstrip("\n").split("\t")
            try:
                check_error_body(path, param, fragment)
            except Fail as e:
                raise Fail(f"{what}: {e}")
            n += 1
    return f"{n} error bodies"


def cmd_counter(url, name):
    m = metrics(url)
    if name not in m:
        raise Fail(f"/metrics has no sample {name}")
    print(f"{m[name]:.0f}")
    return None


def cmd_idle(host, port):
    with socket.create_connection((host, int(port)), timeout=10) as s:
        t0 = time.monotonic()
        s.settimeout(6)
        try:
            got = s.recv(1)
        except ConnectionResetError:
            got = b""
        except socket.timeout:
            raise Fail("a silent connection was still open after 6 s (--idle-timeout 1)")
        seconds = time.monotonic() - t0
    if got != b"":
        raise Fail(f"a silent connection received {got!r}")
    if seconds > 3.5:
        raise Fail(f"a silent connection was closed after {seconds:.2f} s (--idle-timeout 1), expected within 3.5 s")
    return f"a silent connection was closed after {seconds:.2f} s (--idle-timeout 1)"


HEALTH = b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def http_over(s, send=True):
    """Sends GET /health over the open socket s (unless sent already); the answer's status line."""
    if send:
        s.sendall(HEALTH)
    data = b""
    while True:
        piece = s.recv(4096)
        if not piece:
            break
        data += piece
    return data.split(b"\r\n", 1)[0].decode(errors="replace")


def cmd_connlimit(host, port):
    """Two connections held, a third one must not be served: closed at once (refused), or, as
    libmicrohttpd 0.9.75 does, left unaccepted in the kernel's listen queue until a slot frees --
    then answered at once. The ok line says which happened."""
    held = [socket.create_connection((host, int(port)), timeout=10) for _ in range(2)]
    time.sleep(0.3)  # the server accepts both and gives each its thread
    third = socket.create_connection((host, int(port)), timeout=10)
    third.settimeout(1.5)
    t0 = time.monotonic()
    try:
        third.sendall(HEALTH)
        got = third.recv(1)
    except (ConnectionResetError, BrokenPipeError):
        got = b""
    except socket.timeout:
        got = None  # not served: waiting to be accepted
    seconds = time.monotonic() - t0
    if got not in (b"", None):
        raise Fail(f"a third connection was served while 2 were held (--max-connections 2): {got!r}")
    if got == b"" and seconds > 1:
        raise Fail(f"a third connection was closed only after {seconds:.2f} s")
    status = http_over(held[0])  # Connection: close: this slot frees
    held[0].close()
    if " 200 " not in status:
        raise Fail(f"a held connection answered {status!r}, expected 200")
    if got is None:
        third.settimeout(2)
        t0 = time.monotonic()
        try:
            late = http_over(third, send=False)
        except socket.timeout:
            raise Fail("a third connection was still not served 2 s after a held one closed (--max-connections 2)")
        if " 200 " not in late:
            raise Fail(f"the third connection answered {late!r} once a slot was free, expected 200")
        how = (f"a third was not served for {seconds:.1f} s (left waiting to be accepted, not refused) and "
               f"answered 200 {time.monotonic() - t0:.3f} s after one of them closed")
    else:
        how = f"a third was closed after {seconds:.3f} s"
    third.close()
    status = http_over(held[1])
    held[1].close()
    if " 200 " not in status:
        raise Fail(f"the second held connection answered {status!r}, expected 200")
    return f"with 2 connections held (--max-connections 2) {how}; the held ones answer 200"


# ==== main ===================================================================================


def main(argv):
    commands = {
        "greedy": lambda a: cmd_greedy(a[0], a[1], a[2], int(a[4]) if a[3:4] == ["--limit"] else None),
        "text": lambda a: cmd_text(a[0], a[1], a[2]),
        "seeded": lambda a: cmd_seeded(a[0], a[1]),
        "sampled": lambda a: cmd_sampled(a[0], a[1], a[2]),
        "many": lambda a: cmd_many(a[0], a[1], a[2], int(a[4]) if a[3:4] == ["--clients"] else 64),
        "disconnect": lambda a: cmd_disconnect(a[0], a[1], a[2]),
        "inflight": lambda a: cmd_inflight(a[0], a[1], int(a[2])),
        "error-bodies": lambda a: cmd_error_bodies(a[0]),
        "counter": lambda a: cmd_counter(a[0], a[1]),
        "idle": lambda a: cmd_idle(a[0], a[1]),
        "connlimit": lambda a: cmd_connlimit(a[0], a[1]),
    }
    if len(argv) < 2 or argv[1] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        said = commands[argv[1]](argv[2:])
    except Fail as e:
        print(f"FAIL: {e}")
        return 1
    except Exception as e:  # a client error (connection refused, an unexpected status): one line too
        print(f"FAIL: {type(e).__name__}: {e}")
        return 1
    if said:
        print(f"ok: {said}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
