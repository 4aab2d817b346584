"""The docs cannot drift silently from the code.

Conventions the docs follow (docs/glossary.md states them):
- a config key is a dotted path in backticks, `merge.methods`, `evaluate.limit`, with `<lang>`,
  `{code}` or `*` for any key of a map (`languages.<lang>.budgets`); a span may go on with
  `: value` (`evaluate.limit: 200`). Every such path whose first segment is a top-level property of
  the schema must resolve in the schema. File names (`merge.yaml`) are not keys.
- the engine methods are listed in markdown tables whose header's first cell is "engine method",
  one backticked name a row; each such table lists exactly the engine's methods.
- relative links point to files that exist.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from lrmerge.config import schema_path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
FILE_SUFFIXES = {"yaml", "yml", "json", "jsonl", "csv", "tsv", "png", "pdf", "md", "py", "smk",
                 "bin", "rst", "html", "zip", "txt", "safetensors", "gguf", "sh"}
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
SPAN = re.compile(r"`([^`\n]+)`")
KEY = re.compile(r"^([a-z_][a-z0-9_]*(?:\.[^\s.:`]+)+)(?::\s.*)?$")
PLACEHOLDER = re.compile(r"^(<[^>]+>|\{[^}]+\}|\*)$")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def engine_methods() -> set[str]:
    """The engine's methods: the method table where it exists, else the merge config's tuple."""
    try:
        from lrmerge.merge.table import METHOD_TABLE
    except ImportError:
        from lrmerge.merge.merge_config import METHODS
        return set(METHODS)
    return set(METHOD_TABLE)


def prose(path: Path) -> str:
    """The file without its fenced code blocks (YAML and shell, not prose)."""
    return FENCE.sub("", path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# (a) config keys


def load_schema() -> dict:
    with open(schema_path(), encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _deref(node: dict, root: dict) -> dict:
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        target = root
        for part in ref[2:].split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _branches(node: dict, root: dict) -> list[dict]:
    """The node and every schema it is combined with (allOf/anyOf/oneOf, $ref, array items)."""
    node = _deref(node, root)
    out = [node]
    for key in ("allOf", "anyOf", "oneOf"):
        for sub in node.get(key, []):
            out += _branches(sub, root)
    if isinstance(node.get("items"), dict):
        out += _branches(node["items"], root)
    return out


def _children(node: dict, segment: str, root: dict) -> list[dict]:
    """The schemas that `segment` names below `node`."""
    found = []
    for branch in _branches(node, root):
        props = branch.get("properties", {})
        if PLACEHOLDER.match(segment):
            found += list(props.values())
            if isinstance(branch.get("additionalProperties"), dict):
                found.append(branch["additionalProperties"])
            found += list(branch.get("patternProperties", {}).values())
            continue
        if segment in props:
            found.append(props[segment])
            continue
        for pattern, sub in branch.get("patternProperties", {}).items():
            if re.search(pattern, segment):
                found.append(sub)
        if isinstance(branch.get("additionalProperties"), dict):
            names = branch.get("propertyNames", {})
            if ("pattern" not in names or re.search(names["pattern"], segment)) and \
                    names.get("not", {}).get("const", object()) != segment:
                found.append(branch["additionalProperties"])
    return found


def resolves(schema: dict, path: str) -> bool:
    nodes = [schema]
    for segment in path.split("."):
        nodes = [child for node in nodes for child in _children(node, segment, schema)]
        if not nodes:
            return False
    return True


def key_mentions(text: str, top: set[str]) -> list[str]:
    keys = []
    for span in SPAN.findall(text):
        m = KEY.match(span.strip())
        if not m:
            continue
        path = m.group(1)
        if path.split(".")[0] not in top or path.rsplit(".", 1)[1] in FILE_SUFFIXES:
            continue
        keys.append(path)
    return keys


def test_doc_config_keys_exist_in_schema():
    schema = load_schema()
    top = set(schema["properties"])
    checked, bad = 0, []
    for doc in DOCS:
        for path in key_mentions(prose(doc), top):
            checked += 1
            if not resolves(schema, path):
                bad.append(f"{doc.relative_to(ROOT)}: `{path}`")
    assert checked > 20, f"only {checked} config keys found in the docs: is the convention kept?"
    assert not bad, "config keys the schema does not have:\n" + "\n".join(bad)


@pytest.mark.parametrize("path,ok", [
    ("merge.methods", True), ("languages.<lang>.budgets", True), ("languages.bn.corpus.kind", True),
    ("merge.methods.ties_auto.target_discarded", True), ("pretrain.attention", True),
    ("resources.<rule>.gpu", True), ("merge.multi.tokens", True), ("evaluate.limit", True),
    ("evaluate.num_fewshot", False), ("languages.<lang>.budget", False), ("merge.method", False),
    ("languages.en.name", False), ("sft.data.allow_repeat", True), ("plan.nonsense", False),
])
def test_key_resolver(path, ok):
    assert resolves(load_schema(), path) is ok


def test_key_mentions_follow_the_convention():
    top = {"merge", "evaluate", "languages", "data"}
    text = ("`merge.methods` `evaluate.limit: 200` `merge.yaml` `lrmerge.merge.table` "
            "`languages.<lang>.gaps` `data.shard_tokens`")
    assert key_mentions(text, top) == ["merge.methods", "evaluate.limit",
                                       "languages.<lang>.gaps", "data.shard_tokens"]


# ---------------------------------------------------------------------------------------------
# (b) the engine method table


def method_tables(text: str) -> list[list[str]]:
    """The first cells of every table whose header's first cell is 'engine method'."""
    tables, rows = [], None
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.lstrip().startswith("|") else None
        if cells is None:
            rows = None
            continue
        if rows is None:
            if cells[0].lower() == "engine method":
                rows = []
                tables.append(rows)
            else:
                rows = False
            continue
        if rows is False or set(cells[0]) <= {"-", ":"}:
            continue
        rows.append(cells[0])
    return tables


def test_method_tables_list_exactly_the_engine_methods():
    engine = engine_methods()
    tables = [(doc, t) for doc in DOCS for t in method_tables(prose(doc))]
    assert tables, "no method table (header 'engine method') in README.md or docs/"
    for doc, rows in tables:
        names = []
        for cell in rows:
            m = re.fullmatch(r"`([a-z_]+)`", cell)
            assert m, f"{doc.relative_to(ROOT)}: method table cell {cell!r} is not one `name`"
            names.append(m.group(1))
        assert len(names) == len(set(names)), f"{doc.relative_to(ROOT)}: a method listed twice"
        assert set(names) == engine, (
            f"{doc.relative_to(ROOT)}: method table differs from the engine: "
            f"undocumented {sorted(engine - set(names))}, unknown {sorted(set(names) - engine)}")


# ---------------------------------------------------------------------------------------------
# (c) links


def test_relative_links_exist():
    bad = []
    for doc in DOCS:
        for target in LINK.findall(prose(doc)):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            file = target.split("#", 1)[0]
            if not (doc.parent / file).exists():
                bad.append(f"{doc.relative_to(ROOT)}: {target}")
    assert not bad, "links to missing files:\n" + "\n".join(bad)


def test_readme_test_command_is_the_make_target():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make test " in readme or "make test\n" in readme
    assert re.search(r"^test:", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M)
