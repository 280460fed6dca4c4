"""Runs llama-bench and `backstop bench` alternately and compares medians (see bench-peers)."""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

DEFAULT_MODELS = ["models/SmolLM2-135M-Instruct.Q4_1.gguf", "models/gemma-3-270m-q4_k_m.gguf"]


def run_jsonl(cmd, env=None):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return [json.loads(l) for l in out.splitlines() if l.startswith("{")]


def test_name(r):
    p, g, d = r["n_prompt"], r["n_gen"], r.get("n_depth", 0)
    name = f"pp{p}" if g == 0 else f"tg{g}" if p == 0 else f"pp{p}+tg{g}"
    return name + (f" @ d{d}" if d else "")


def cold(cmd, env=None):
    """Wall time of a whole process (start to exit) and its peak RSS in MiB."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _, status, ru = os.wait4(p.pid, 0)
    if status != 0:
        raise SystemExit(f"bench-peers: {' '.join(cmd)} failed ({status})")
    return time.perf_counter() - t0, ru.ru_maxrss / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-bin", required=True)
    ap.add_argument("--backstop", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-t", default="1,2")
    ap.add_argument("-p", default="512")
    ap.add_argument("-n", default="128")
    ap.add_argument("-d", default="0")
    ap.add_argument("-r", default="3")
    ap.add_argument("--busy", type=int, default=0,
                    help="keep N other processes busy-looping (one core each) during the runs")
    ap.add_argument("models", nargs="*")
    a = ap.parse_args()
    # A busy neighbour: an engine that spins or pins its threads collapses when a core is taken
    # (candle 0.11 fell from 60 to 2-4 t/s here); a well-behaved one slows in proportion.
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(a.busy)]
    try:
        run(a)
    finally:
        for b in burners:
            b.kill()
            b.wait()


def run(a):
    models = a.models or DEFAULT_MODELS
    env = dict(os.environ, LD_LIBRARY_PATH=a.llama_bin)
    common = ["-p", a.p, "-n", a.n, "-d", a.d, "-t", a.t, "-r", a.r, "-o", "jsonl"]
    samples = {}  # (model, test, threads, engine) -> [avg_ts per round]
    for rnd in range(a.rounds):
        for m in models:
            for engine, cmd, e in [
                ("llama.cpp", [f"{a.llama_bin}/llama-bench", "-m", m] + common, env),
                ("backstop", [a.backstop, "bench", "-m", m] + common, None),
            ]:
                print(f"round {rnd + 1}/{a.rounds}: {engine} {os.path.basename(m)}", file=sys.stderr)
                for r in run_jsonl(cmd, e):
                    key = (os.path.basename(m), test_name(r), r["n_threads"], engine)
                    samples.setdefault(key, []).append(r["avg_ts"])
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    flags = open("/proc/cpuinfo").read()
    print(f"CPU: {cpu}, {os.cpu_count()} logical cores, AVX-512: {'yes' if 'avx512f' in flags else 'no'}; "
          f"{a.rounds} rounds, llama-bench -r {a.r} per round; medians of the per-round means (t/s)"
          + (f"; {a.busy} busy-looping neighbour process(es) running throughout" if a.busy else "")
          + "\n")
    print("| model | test | threads | llama.cpp | backstop | ratio |")
    print("|---|---|---:|---:|---:|---:|")
    for (m, test, t, engine) in sorted(samples):
        if engine != "llama.cpp":
            continue
        l = statistics.median(samples[(m, test, t, "llama.cpp")])
        b = statistics.median(samples.get((m, test, t, "backstop"), [float("nan")]))
        print(f"| {m} | {test} | {t} | {l:.2f} | {b:.2f} | {b / l:.2f} |")
    print("\n| model | engine | cold start to first token (s, median of 3) | peak RSS at -c 2048 (MiB) |")
    print("|---|---|---:|---:|")
    for m in models:
        runs = {
            "llama.cpp": [f"{a.llama_bin}/llama-completion", "-m", m, "-c", "2048", "-n", "1",
                          "-p", "Hello", "-no-cnv", "--no-warmup", "-t", a.t.split(",")[-1]],
            "backstop": [a.backstop, "run", "-m", m, "-c", "2048", "-n", "1", "--raw", "--temp", "0",
                         "-t", a.t.split(",")[-1], "Hello"],
        }
        for engine, cmd in runs.items():
            res = [cold(cmd, env if engine == "llama.cpp" else None) for _ in range(3)]
            print(f"| {os.path.basename(m)} | {engine} | {statistics.median(r[0] for r in res):.3f} | "
                  f"{max(r[1] for r in res):.0f} |")


if __name__ == "__main__":
    main()
