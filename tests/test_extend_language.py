"""The workflow's extend_tokenizer job (`lrmerge data extend-tokenizer`): a vocabulary variant's
tokenizer learned from its base language's text, and what it records for training."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
from stage_helpers import quiet, tiny_config, write_config

from lrmerge.data import sources, synthetic, tokenize
from lrmerge.data.vocab import VocabError, extend_language


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    cfg = tiny_config()
    out = tmp_path_factory.mktemp("tok") / "base"
    tokenize.train_tokenizer(cfg, out, log=quiet)
    return cfg, out


def test_a_variant_learns_from_its_base_languages_text(tmp_path, base):
    cfg, tok = base
    # the same documents as bo (a variant reads its base's text), not a text of its own
    first = list(itertools.islice(sources.corpus_documents(cfg, "bo-v90"), 50))
    assert first == list(itertools.islice(sources.corpus_documents(cfg, "bo"), 50))
    record = extend_language(cfg, "bo-v90", tok, tmp_path / "ext", log=quiet)
    want = cfg["languages"]["bo-v90"]["tokenizer"]["sample_chars"]
    docs, chars = [], 0
    for doc in sources.corpus_documents(cfg, "bo"):  # whole documents up to sample_chars
        if chars >= want:
            break
        docs.append(doc)
        chars += len(doc)
    assert record["corpus"]["documents"] == len(docs) and record["corpus"]["characters"] == chars
    assert record["added"] == 90 and len(record["tokens"]) == 90
    # the base's identity: token folders made with the base read as the same ids in CT
    ident = tokenize.tokenizer_identity(tokenize.load_tokenizer(str(tok)))
    assert record["base_tokenizer"] == ident
    on_disk = json.loads((tmp_path / "ext" / "vocab_extension.json").read_text())
    assert on_disk == json.loads(json.dumps(record))
    # Tibetan read as bytes by the base, several characters a token once extended
    assert record["corpus"]["tokens_extended"] * 3 < record["corpus"]["tokens_base"]
    # its script found in the text; the English words code-switched into it keep their tokens
    assert record["scripts"] == ["Tibetan"] and record["scripts_from"] == "sample"
    assert record["sample_letters"]["Latin"] > 0 and record["latin_unchanged"]
    from tokenizers import Tokenizer

    base_tok, ext_tok = (Tokenizer.from_file(str(d / "tokenizer.json")) for d in
                         (tok, tmp_path / "ext"))
    words = [f"{w} {n}" for n, w in enumerate(synthetic.english_words())]
    assert [base_tok.encode(w).ids for w in words] == [ext_tok.encode(w).ids for w in words]


def test_scripts_named_in_the_config(tmp_path, base):
    cfg, tok = base
    cfg = json.loads(json.dumps(cfg))
    cfg["languages"]["bo-v90"]["tokenizer"]["scripts"] = ["Tibetan"]
    record = extend_language(cfg, "bo-v90", tok, tmp_path / "ext", log=quiet)
    assert record["scripts"] == ["Tibetan"] and record["scripts_from"] == "config"
    cfg["languages"]["bo-v90"]["tokenizer"]["scripts"] = ["Tibetn"]
    with pytest.raises(VocabError, match=r"languages\.bo-v90\.tokenizer\.scripts: .*'Tibetn' is "
                                         "not the name of a language's Unicode script"):
        extend_language(cfg, "bo-v90", tok, tmp_path / "typo", log=quiet)


def test_more_tokens_than_the_text_yields_names_the_key(tmp_path, base):
    cfg, tok = base
    cfg = json.loads(json.dumps(cfg))
    cfg["languages"]["bo-v90"]["tokenizer"].update(extend=5000, sample_chars=2000)
    with pytest.raises(VocabError, match=r"languages\.bo-v90\.tokenizer\.extend: .*fewer than "
                                         r"k=5000.*2\d{3} of tokenizer\.sample_chars=2000"):
        extend_language(cfg, "bo-v90", tok, tmp_path / "ext", log=quiet)
    assert not (tmp_path / "ext").exists()


def test_the_command_reads_only_its_slice(tmp_path, base):
    cfg, tok = base
    path = write_config(tmp_path / "c.yaml", cfg)
    out = tmp_path / "ext"
    run = subprocess.run([str(Path(sys.executable).parent / "lrmerge"), "data", "extend-tokenizer", "--config",
                          str(path), "--lang", "bo-v90", "--base", str(tok), "--out", str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "bo-v90: 90 new tokens (byte_level_bpe, Tibetan script from the sample)" in run.stdout
    assert json.loads((out / "vocab_extension.json").read_text())["added"] == 90
