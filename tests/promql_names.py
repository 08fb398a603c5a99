"""The metric names a PromQL query reads, and the names a daemon's ``/metrics`` exports: the
alert rules and the dashboard may only query what the daemon exports."""

from __future__ import annotations

import re

from prometheus_client.registry import CollectorRegistry

from lbhealthd.daemon.metrics import Metrics

# The series names a family of each type exposes, from its family name (a counter ``x`` is
# exposed as ``x_total`` and ``x_created``, a histogram as ``x_bucket``, ``x_sum``...).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}

# Words of PromQL that are not functions (those are followed by a parenthesis).
KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
    | {"group_left", "group_right", "inf", "nan"}
)

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
# The label lists of grouping and vector matching: ``by (pool, le)``, ``on (pool)``,
# ``group_left (server)``.
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
# A number (with a duration's unit: 5m, 1h30m), else an identifier and what follows it.
_TOKEN = re.compile(r"(?:\d+(?:\.\d+)?(?:e[+-]?\d+)?[a-z]*)+|([A-Za-z_:][\w:]*)(\s*\()?")


def exported_names(registry: CollectorRegistry | None = None) -> frozenset[str]:
    """Every series name the registry exposes (a fresh daemon's ``Metrics`` by default),
    whether or not a series of it exists yet."""
    registry = registry if registry is not None else Metrics().registry
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + s for s in SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return frozenset(names)


def metric_names(query: str) -> frozenset[str]:
    """The metric names ``query`` selects: its identifiers that are not functions, keywords,
    label names, durations or dashboard variables."""
    text = _STRING.sub('""', query)
    text = _VARIABLE.sub(" ", text)
    # Matchers, ranges and label lists hold label names and durations, never metric names.
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    names = set()
    for token in _TOKEN.finditer(text):
        name, call = token.group(1), token.group(2)
        if name is None or call is not None or name.lower() in KEYWORDS:
            continue
        names.add(name)
    return frozenset(names)


__all__ = ["exported_names", "metric_names"]
