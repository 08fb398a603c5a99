"""The configuration reference and the example config stay in step with the pydantic schema."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from lbhealthd.config import Config

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "configuration.md"
EXAMPLE = ROOT / "config.example.yaml"
SIGNAL = "<signal>"


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model an annotation holds directly or in an Optional, else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _shape(annotation: Any) -> tuple[str, type[BaseModel] | None]:
    """('model'|'list'|'dict'|'scalar', the model inside it or None)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is list and args:
        return "list", _model_in(args[0])
    if origin is dict and len(args) == 2:
        return "dict", _model_in(args[1])
    model = _model_in(annotation)
    return ("model", model) if model is not None else ("scalar", None)


def schema_paths(model: type[BaseModel] = Config, prefix: str = "") -> set[str]:
    """Every key path of the schema, written as in docs/configuration.md."""
    paths: set[str] = set()
    for name, field in model.model_fields.items():
        path = prefix + (field.alias or name)
        paths.add(path)
        kind, inner = _shape(field.annotation)
        if inner is None:
            continue
        if kind == "model":
            paths |= schema_paths(inner, path + ".")
        elif kind == "list":
            paths |= schema_paths(inner, path + "[].")
        elif kind == "dict":
            paths |= schema_paths(inner, f"{path}.{SIGNAL}.")
    return paths


def documented_paths(text: str) -> set[str]:
    """The backticked key paths in the first column of the Markdown tables of ``text``."""
    paths: set[str] = set()
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        first = line.split("|")[1]
        paths |= set(re.findall(r"`([^`]+)`", first))
    return paths


def example_paths(node: Any, model: type[BaseModel] = Config, prefix: str = "") -> set[str]:
    """Every key path used in a parsed YAML document, resolved against the schema; a key
    the schema does not know is returned as is, so the caller sees it as unknown."""
    paths: set[str] = set()
    if not isinstance(node, dict):
        return paths
    fields = {(f.alias or n): f for n, f in model.model_fields.items()}
    for key, value in node.items():
        path = prefix + str(key)
        paths.add(path)
        field = fields.get(str(key))
        if field is None:
            continue
        kind, inner = _shape(field.annotation)
        if inner is None:
            continue
        if kind == "model":
            paths |= example_paths(value, inner, path + ".")
        elif kind == "list" and isinstance(value, list):
            for item in value:
                paths |= example_paths(item, inner, path + "[].")
        elif kind == "dict" and isinstance(value, dict):
            for item in value.values():
                paths |= example_paths(item, inner, f"{path}.{SIGNAL}.")
    return paths


def test_every_schema_key_is_documented() -> None:
    """Every key path of the schema has a row in docs/configuration.md."""
    missing = schema_paths() - documented_paths(REFERENCE.read_text())
    assert not missing, f"undocumented config keys: {sorted(missing)}"


def test_no_documented_key_is_unknown() -> None:
    """Every key path in docs/configuration.md's first column exists in the schema."""
    unknown = documented_paths(REFERENCE.read_text()) - schema_paths()
    assert not unknown, f"documented keys the schema does not have: {sorted(unknown)}"


def test_example_config_keys_exist_in_schema() -> None:
    """Every key of config.example.yaml exists in the schema."""
    used = example_paths(yaml.safe_load(EXAMPLE.read_text()))
    assert used, "config.example.yaml yielded no keys"
    unknown = used - schema_paths()
    assert not unknown, f"config.example.yaml keys the schema does not have: {sorted(unknown)}"


def test_the_checks_catch_what_they_should() -> None:
    """The helpers report a missing row, an unknown row and an unknown example key."""
    known = schema_paths()
    assert {"pools[].balance_alert.for", "pools[].overload.<signal>.high"} <= known
    table = "| key | type |\n|---|---|\n| `daemon.dry_run` | bool |\n| `daemon.dryrun` | bool |\n"
    documented = documented_paths(table)
    assert documented == {"daemon.dry_run", "daemon.dryrun"}
    assert "daemon.state_dir" in known - documented
    assert documented - known == {"daemon.dryrun"}
    example = {"pools": [{"name": "a", "overload": {"cpu": {"high": 1, "lo": 0}}}]}
    assert example_paths(example) - known == {"pools[].overload.<signal>.lo"}
