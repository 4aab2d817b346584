"""Read and validate a workflow config against the schema shipped in this package.

`load_config` validates against `schema.yaml` (the file Snakemake's `validate()` uses too), filling
defaults the same way, then runs `check_config` for what a schema cannot express. Defaults live in
the schema only: code that reads a validated config indexes its keys.
"""

from __future__ import annotations

import copy
import os
from functools import cache
from pathlib import Path

import yaml

from .checks import ConfigError, check_config

SCHEMA = Path(__file__).resolve().parent / "schema.yaml"


def schema_path() -> Path:
    """The workflow config's JSON schema (YAML), shipped inside the package."""
    return SCHEMA


@cache
def load_schema() -> dict:
    with open(schema_path(), encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _validator(schema: dict):
    from jsonschema import Draft202012Validator, validators

    validate_properties = Draft202012Validator.VALIDATORS["properties"]

    # Fill defaults while validating, as Snakemake's validate() does (copies, so that two configs
    # never share a default object).
    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    cls = validators.extend(Draft202012Validator, {"properties": set_defaults})
    return cls(schema)


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def expand_variants(config: dict, source: str = "config") -> dict:
    """Fill each vocabulary variant (a language entry with `based_on`) in place with the keys it
    does not set from the entry it is based on (copies), before validation; return the config.
    Refuses a `based_on` that names no language, or a variant."""
    langs = config.get("languages") if isinstance(config, dict) else None
    if not isinstance(langs, dict):
        return config
    for lang, entry in langs.items():
        if not isinstance(entry, dict) or "based_on" not in entry:
            continue
        key, base = f"languages.{lang}.based_on", entry["based_on"]
        if base not in langs:
            raise ConfigError(f"{source}: {key}: {base!r} is not in languages "
                              f"(configured: {', '.join(langs)})")
        if not isinstance(langs[base], dict) or "based_on" in langs[base]:
            raise ConfigError(f"{source}: {key}: {base!r} is a variant itself; name the "
                              "language it is based on")
        if "tokenizer" not in entry:
            raise ConfigError(f"{source}: languages.{lang}.tokenizer: a variant of {base!r} "
                              "must set its own tokenizer (e.g. tokenizer: {extend: 16000})")
        for name, value in langs[base].items():
            entry.setdefault(name, copy.deepcopy(value))
    return config


def validate_config(config: dict, source: str = "config") -> dict:
    """Validate `config` in place against the schema (defaults filled) and check it; return it.
    Vocabulary variants are filled from the entries they are based on first."""
    if not isinstance(config, dict):
        raise ConfigError(f"{source}: a config must be a mapping, got {type(config).__name__}")
    expand_variants(config, source)
    errors = sorted(_validator(load_schema()).iter_errors(config),
                    key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"{source}: {_key(e.absolute_path)}: {e.message}" for e in errors]
        raise ConfigError("invalid config\n" + "\n".join(lines))
    check_config(config, source)
    return config


def load_config(path: str | os.PathLike) -> dict:
    """Read a workflow config file and return it validated, with defaults filled."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            config = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return validate_config(config, str(path))
