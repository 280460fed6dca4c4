"""Load benchmark over the HTTP API: backstop serve against llama-server, same model, same
threads, same run. See scripts/bench-load for usage.

Scenarios, per model and engine:
  burst N   N concurrent streaming clients (raw completions, fixed distinct prompts,
            greedy, max_tokens each): aggregate generated tokens/s over the burst, time to
            first token and inter-token latency (p50/p99); the median burst of --repeat.
  longprompt  4 running streams; a ~4000-token prompt arrives: p99 inter-token latency of
            the 4 while it is read, against their p50 without it (over 4 s, and over a window
            as long as the read, during which the streams deepen as they did beside it).
  prefix    a ~2000-token prompt cold, then another sharing that prefix: time to first token.
  rss       (not by default) peak RSS at --parallel 8 -c 4096 / -np 8 -c 32768 after 8 clients
            sent ~1300-token prompts at once.
Only the standard library: http.client streaming over loopback.
"""

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


class Server:
    def __init__(self, cmd, port):
        self.port = port
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise SystemExit(f"server did not become ready: {' '.join(cmd)}")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def stream(port, prompt, max_tokens, out, start_at=None, stop=None):
    """One streaming completion; appends (t_sent, [chunk arrival times], n_tokens) to out.
    With `stop` (a threading.Event), the client hangs up once it is set."""
    if start_at:
        time.sleep(max(0.0, start_at - time.time()))
    body = json.dumps({
        "model": "m", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
        "stream": True, "stream_options": {"include_usage": True},
        # Fixed lengths: a stream that ended early would leave fewer running than intended.
        "ignore_eos": True,
    })
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.time()
    c.request("POST", "/v1/completions", body, {"content-type": "application/json"})
    r = c.getresponse()
    arrivals, n_usage = [], None
    for line in r:
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]" or (stop is not None and stop.is_set()):
            break
        ev = json.loads(data)
        if ev.get("usage"):
            n_usage = ev["usage"].get("completion_tokens")
        ch = ev.get("choices") or []
        if ch and ch[0].get("text"):
            arrivals.append(time.time())
    out.append((t0, arrivals, n_usage if n_usage else len(arrivals)))


PROMPTS = [
    "The history of lighthouses begins",
    "Write a short story about a robot who learns to paint.",
    "List the planets of the solar system and describe each one:",
    "Once upon a time, in a small village at the edge of a great forest,",
    "The recipe for a good bread starts with",
    "In computer science, a hash table is",
    "Dear diary, today was",
    "The three most important rules of mountain climbing are",
]


def burst(port, n, max_tokens):
    out = []
    start = time.time() + 0.2
    th = [threading.Thread(target=stream, args=(port, PROMPTS[i % len(PROMPTS)] + f" ({i})",
                                                max_tokens, out, start)) for i in range(n)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    t_first = min(o[0] for o in out)
    t_last = max(o[1][-1] for o in out if o[1])
    tokens = sum(o[2] for o in out)
    ttft = [o[1][0] - o[0] for o in out if o[1]]
    itl = [b - a for o in out for a, b in zip(o[1], o[1][1:])]
    return {"tok_s": tokens / (t_last - t_first), "tokens": tokens,
            "ttft_p50": pct(ttft, 50), "ttft_p99": pct(ttft, 99),
            "itl_p50": pct(itl, 50), "itl_p99": pct(itl, 99)}


def longprompt(port, filler):
    """p50 ITL of 4 streams alone, then p99 ITL of 4 streams while a long prompt is read.
    The streams run until the measurement window ends (then their clients hang up), so they
    cover the whole read however fast the model decodes."""
    def four(extra=None, alone_s=4.0):
        out = []
        stop = threading.Event()
        start = time.time() + 0.1
        th = [threading.Thread(target=stream, args=(port, PROMPTS[i], 3000, out, start, stop))
              for i in range(4)]
        for t in th:
            t.start()
        window = None
        time.sleep(2.0)
        if extra:
            t0 = time.time()
            extra()
            window = (t0, time.time())
        else:
            time.sleep(alone_s)
        stop.set()
        for t in th:
            t.join()
        return out, window
    base, _ = four()
    itl_base = [b - a for o in base for a, b in zip(o[1], o[1][1:])]

    def long_request():
        o = []
        stream(port, filler, 1, o)
    loaded, (w0, w1) = four(long_request)
    itl_loaded = [b - a for o in loaded for a, b in zip(o[1], o[1][1:]) if w0 <= b <= w1]
    # The streams deepen while the prompt is read (their own attention grows), so also: the
    # same streams alone over the same window (2 s, then as long as the read took).
    same, _ = four(alone_s=w1 - w0)
    t_start = min(o[0] for o in same)
    itl_same = [b - a for o in same for a, b in zip(o[1], o[1][1:])
                if t_start + 2.0 <= b <= t_start + 2.0 + (w1 - w0)]
    return {"itl_p50_alone": pct(itl_base, 50), "itl_p99_during": pct(itl_loaded, 99),
            "ratio": pct(itl_loaded, 99) / pct(itl_base, 50), "prompt_read_s": w1 - w0,
            "samples": len(itl_loaded), "itl_p50_alone_same_window": pct(itl_same, 50),
            "ratio_same_window": pct(itl_loaded, 99) / pct(itl_same, 50)}


def peak_rss(server, filler):
    """Peak resident memory (VmHWM) after 8 clients each sent a ~1300-token prompt at once."""
    out = []
    start = time.time() + 0.2
    th = [threading.Thread(target=stream, args=(server.port, f"({i}) " + filler, 16, out, start))
          for i in range(8)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    with open(f"/proc/{server.proc.pid}/status") as f:
        hwm = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
    return {"peak_rss_mib": hwm / 1024}


def prefix(port, shared):
    def ttft(prompt):
        o = []
        stream(port, prompt, 4, o)
        return o[0][1][0] - o[0][0]
    cold = ttft(shared + " Question one: why?")
    warm = ttft(shared + " Question two: how?")
    return {"cold_s": cold, "warm_s": warm, "ratio": warm / cold}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backstop", required=True)
    ap.add_argument("--llama-bin", required=True)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--clients", default="1,8")
    ap.add_argument("-n", "--max-tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3, help="bursts per client count (median)")
    ap.add_argument("--scenarios", default="burst,longprompt,prefix")
    ap.add_argument("--engines", default="backstop,llama.cpp")
    ap.add_argument("models", nargs="+")
    a = ap.parse_args()
    clients = [int(x) for x in a.clients.split(",")]
    scen = a.scenarios.split(",")
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), "?")
    flags = open("/proc/cpuinfo").read()
    print(f"# CPU: {cpu}, AVX-512: {'yes' if 'avx512f' in flags else 'no'}, "
          f"threads: {a.threads}, max_tokens: {a.max_tokens}")
    filler_unit = "The quick brown fox jumps over the lazy dog near the riverbank. "
    results = []
    for model in a.models:
        name = os.path.basename(model)
        for engine in a.engines.split(","):
            def start(np_, ctx):
                port = free_port()
                if engine == "backstop":
                    cmd = [a.backstop, "serve", "-m", model, "--port", str(port), "-t",
                           str(a.threads), "--parallel", str(np_), "-c", str(ctx),
                           "--queue", "64"]
                else:
                    cmd = [os.path.join(a.llama_bin, "llama-server"), "-m", model, "--port",
                           str(port), "-t", str(a.threads), "-np", str(np_), "-c",
                           str(ctx * np_), "--no-webui"]
                return Server(cmd, port)
            for n in clients if "burst" in scen else []:
                s = start(n, 1024)
                try:
                    burst(s.port, n, 8)  # warm-up
                    # The median of several bursts: one burst of one client is a single
                    # request, and the figure the 8:1 ratio divides by.
                    runs = sorted((burst(s.port, n, a.max_tokens) for _ in range(a.repeat)),
                                  key=lambda r: r["tok_s"])
                    r = runs[len(runs) // 2]
                finally:
                    s.stop()
                results.append((name, engine, f"burst {n}", r))
                print(json.dumps({"model": name, "engine": engine, "test": f"burst {n}", **r}),
                      flush=True)
            if "longprompt" in scen:
                s = start(5, 4608)
                try:
                    r = longprompt(s.port, filler_unit * 300)
                finally:
                    s.stop()
                results.append((name, engine, "longprompt", r))
                print(json.dumps({"model": name, "engine": engine, "test": "longprompt", **r}),
                      flush=True)
            if "rss" in scen:
                s = start(8, 4096)
                try:
                    r = peak_rss(s, filler_unit * 100)
                finally:
                    s.stop()
                results.append((name, engine, "rss", r))
                print(json.dumps({"model": name, "engine": engine, "test": "rss", **r}),
                      flush=True)
            if "prefix" in scen:
                s = start(2, 4096)
                try:
                    r = prefix(s.port, filler_unit * 150)
                finally:
                    s.stop()
                results.append((name, engine, "prefix", r))
                print(json.dumps({"model": name, "engine": engine, "test": "prefix", **r}),
                      flush=True)
    print()
    print("| model | engine | test | result |")
    print("|---|---|---|---|")
    for name, engine, test, r in results:
        if test.startswith("burst"):
            txt = (f"{r['tok_s']:.1f} tok/s aggregate; TTFT p50/p99 {r['ttft_p50']*1e3:.0f}/"
                   f"{r['ttft_p99']*1e3:.0f} ms; ITL p50/p99 {r['itl_p50']*1e3:.1f}/"
                   f"{r['itl_p99']*1e3:.1f} ms")
        elif test == "longprompt":
            txt = (f"ITL p50 alone {r['itl_p50_alone']*1e3:.1f} ms, p99 while a "
                   f"{r['prompt_read_s']:.1f} s prompt is read {r['itl_p99_during']*1e3:.1f} ms "
                   f"({r['ratio']:.1f}x); alone over the same window p50 "
                   f"{r['itl_p50_alone_same_window']*1e3:.1f} ms ({r['ratio_same_window']:.1f}x)")
        elif test == "rss":
            txt = f"peak RSS {r['peak_rss_mib']:.0f} MiB (8 slots of 4096 / one shared 32768 context)"
        else:
            txt = (f"TTFT cold {r['cold_s']*1e3:.0f} ms, shared prefix {r['warm_s']*1e3:.0f} ms "
                   f"({r['ratio']*100:.0f} %)")
        print(f"| {name} | {engine} | {test} | {txt} |")


if __name__ == "__main__":
    sys.exit(main())
