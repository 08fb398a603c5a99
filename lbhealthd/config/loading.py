"""Reading a config file: YAML through PyYAML's safe loader, validated by the schema.

A file is all or nothing: any problem refuses the whole file with one ConfigError listing every
problem. Before validation the YAML is checked for aliases that refer to themselves or expand
into more than ``MAX_NODES`` values, and for a key given twice in one mapping.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import ValidationError

from lbhealthd.config.models import Config
from lbhealthd.config.problems import index_lines, to_problem
from lbhealthd.errors import ConfigError, Problem

ENV_VAR = "LBHEALTHD_CONFIG"
# Where the packaged systemd unit keeps the config: the file used when no other is named.
DEFAULT_PATH = "/etc/lbhealthd/config.yaml"
_ANOTHER = f"give another with -c FILE or ${ENV_VAR}"


def resolve_path(path: str | None) -> str:
    """The config path from ``-c``, else ``$LBHEALTHD_CONFIG``, else ``DEFAULT_PATH``; a
    ConfigError naming the default and how to give another when that one does not exist."""
    chosen = path or os.environ.get(ENV_VAR)
    if chosen:
        return chosen
    if not os.path.exists(DEFAULT_PATH):
        raise ConfigError(
            DEFAULT_PATH,
            [
                Problem(
                    "-c",
                    f"no config file given, and the default {DEFAULT_PATH} does not exist; "
                    + _ANOTHER,
                )
            ],
        )
    return DEFAULT_PATH


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, parse and validate a config file. Raises ConfigError listing every problem."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        problem = Problem("(file)", f"cannot read: no such file ({_ANOTHER})")
        raise ConfigError(source, [problem]) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, [Problem("(file)", f"cannot read: {exc}")]) from exc
    return parse_config(text, source)


def parse_config(text: str, source: str = "<string>") -> Config:
    """Parse and validate config text. Raises ConfigError listing every problem."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise _yaml_error(source, exc) from exc
    except RecursionError:
        raise ConfigError(source, [Problem("(yaml)", "nesting too deep")]) from None
    lines: dict[str, int] = {}
    duplicates: list[Problem] = []
    if node is not None:
        try:
            size = _expanded_size(node, {}, set())
        except (_Cyclic, RecursionError):
            raise ConfigError(source, [Problem("(yaml)", "an alias refers to itself")]) from None
        if size > MAX_NODES:
            raise ConfigError(
                source,
                [
                    Problem(
                        "(yaml)",
                        f"the document expands to {size:,} values through aliases "
                        f"(at most {MAX_NODES:,})",
                    )
                ],
            )
        index_lines(node, "", lines, duplicates, set())
    if duplicates:
        raise ConfigError(source, duplicates)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _yaml_error(source, exc) from exc
    if not isinstance(data, dict):
        raise ConfigError(source, [Problem("(top)", "expected a mapping with a pools: list")])
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = [to_problem(err, lines) for err in exc.errors()]
        raise ConfigError(source, problems) from None


MAX_NODES = 100_000


def _yaml_error(source: str, exc: yaml.YAMLError) -> ConfigError:
    mark = getattr(exc, "problem_mark", None)
    line = mark.line + 1 if mark is not None else None
    message = " ".join(str(getattr(exc, "problem", None) or exc).split())
    return ConfigError(source, [Problem("(yaml)", message, line)])


class _Cyclic(Exception):
    pass


def _expanded_size(node: yaml.Node, memo: dict[int, int], ancestors: set[int]) -> int:
    """How many values ``node`` stands for once every alias is expanded (memoised: O(nodes))."""
    key = id(node)
    if key in ancestors:
        raise _Cyclic
    if key in memo:
        return memo[key]
    ancestors.add(key)
    size = 1
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            size += _expanded_size(k, memo, ancestors) + _expanded_size(v, memo, ancestors)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            size += _expanded_size(item, memo, ancestors)
    ancestors.discard(key)
    memo[key] = min(size, MAX_NODES + 1)
    return memo[key]
