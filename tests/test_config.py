"""Tests of lbhealthd.config: loading, defaults, durations and shares, and refusal of bad files."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lbhealthd.config import (
    ENV_VAR,
    Config,
    check_socket,
    load_config,
    parse_config,
    parse_duration,
    parse_share,
    resolve_path,
)
from lbhealthd.engine.settings import Marks, PoolSettings
from lbhealthd.errors import ConfigError, Problem

REPO = Path(__file__).parent.parent
EXAMPLE = REPO / "config.example.yaml"


def refused(text: str, source: str = "<string>") -> ConfigError:
    """Parse ``text`` and return the ConfigError it must raise."""
    with pytest.raises(ConfigError) as info:
        parse_config(text, source)
    return info.value


def problem_at(error: ConfigError, path: str) -> Problem:
    """The first problem of ``error`` at exactly ``path``; fails the test if there is none."""
    for problem in error.problems:
        if problem.path == path:
            return problem
    raise AssertionError(f"no problem at {path!r}; got {error.problems!r}")


def pool(*lines: str) -> str:
    """A config with one pool ``api`` (line 2) whose extra keys start on line 3."""
    body = "".join(f"    {line}\n" for line in lines)
    return f"pools:\n  - name: api\n{body}"


def haproxy_sockets(sockets: str) -> str:
    """A config whose ``load_balancer.haproxy.sockets`` (line 3) is ``sockets``."""
    return f"load_balancer:\n  haproxy:\n    sockets: {sockets}\npools: [{{name: api}}]\n"


# --- the example file ------------------------------------------------------------------------


def test_example_file_loads_with_the_values_it_shows() -> None:
    """config.example.yaml is valid and every value read back is the one written in it."""
    config = load_config(EXAMPLE)
    assert config.daemon.state_dir == "/var/lib/lbhealthd"
    assert config.daemon.control_socket == "/run/lbhealthd/control.sock"
    assert config.daemon.http == "127.0.0.1:9110"
    assert config.daemon.log_format == "json"
    assert config.daemon.dry_run is False
    assert config.daemon.round_interval == 1.0
    assert config.daemon.manual_change_hold == 600.0
    assert config.load_balancer.type == "haproxy"
    assert config.load_balancer.haproxy.sockets == ["unix:/run/haproxy/admin.sock"]
    assert config.load_balancer.haproxy.timeout == 2.0
    assert [p.name for p in config.pools] == ["api"]
    api = config.pools[0]
    assert api.servers is None
    assert api.probe.url == "http://{address}:{port}/health"
    assert api.probe.interval == 1.0
    assert api.probe.timeout == 0.8
    assert api.probe.load_fields == {"cpu": "cpu", "inflight": "inflight"}
    assert set(api.overload) == {"latency_ms", "cpu", "lb_queue"}
    assert (api.overload["latency_ms"].high, api.overload["latency_ms"].low) == (500, 200)
    assert (api.overload["cpu"].high, api.overload["cpu"].low) == (0.90, 0.60)
    assert (api.overload["lb_queue"].high, api.overload["lb_queue"].low) == (10, 1)
    assert api.fall == 3
    assert api.rise == 5
    assert api.min_drain == 30.0
    assert api.flap_backoff == 2.0
    assert api.flap_window == 600.0
    assert api.flap_max_hold == 600.0
    assert api.slow_start == 60.0
    assert api.slow_start_floor == pytest.approx(0.1)
    assert api.max_drained == pytest.approx(0.4)
    assert api.min_in_service == 2
    assert api.blind_threshold == pytest.approx(0.8)
    assert api.expected_weights == {"default": 100}
    assert api.balance_alert.factor == 2.0
    assert api.balance_alert.for_ == 30.0
    assert api.balance_alert.min_sessions == 50
    assert config.pool("api") is api


def test_example_file_converts_to_engine_settings() -> None:
    """engine_settings() carries every decision value of the example pool to the engine."""
    settings = load_config(EXAMPLE).engine_settings()
    assert list(settings.pools) == ["api"]
    api = settings.pools["api"]
    assert isinstance(api, PoolSettings)
    assert api.name == "api"
    assert dict(api.marks) == {
        "latency_ms": Marks(high=500.0, low=200.0),
        "cpu": Marks(high=0.90, low=0.60),
        "lb_queue": Marks(high=10.0, low=1.0),
    }
    assert (api.fall, api.rise, api.min_in_service) == (3, 5, 2)
    assert (api.min_drain, api.flap_backoff, api.slow_start) == (30.0, 2.0, 60.0)
    assert (api.flap_window, api.flap_max_hold) == (600.0, 600.0)
    assert api.slow_start_floor == pytest.approx(0.1)
    assert api.max_drained == pytest.approx(0.4)
    assert api.blind_threshold == pytest.approx(0.8)


def test_pool_lookup_by_unknown_name_raises_key_error() -> None:
    """Config.pool() raises KeyError for a pool that is not configured."""
    config = parse_config("pools: [{name: api}, {name: web}]")
    assert config.pool("web").name == "web"
    with pytest.raises(KeyError):
        config.pool("nope")


# --- defaults --------------------------------------------------------------------------------


def test_minimal_config_gets_the_documented_defaults() -> None:
    """A config naming only one pool gets every default DESIGN.md documents."""
    config = parse_config("pools: [{name: api}]")
    assert config.daemon.state_dir == "/var/lib/lbhealthd"
    assert config.daemon.control_socket == "/run/lbhealthd/control.sock"
    assert config.daemon.http == "127.0.0.1:9110"
    assert config.daemon.log_format == "json"
    assert config.daemon.dry_run is False
    assert config.load_balancer.type == "haproxy"
    assert config.load_balancer.haproxy.sockets == ["unix:/run/haproxy/admin.sock"]
    assert config.load_balancer.haproxy.timeout == 2.0
    api = config.pools[0]
    assert api.name == "api"
    assert api.servers is None
    assert api.probe.url == "http://{address}:{port}/health"
    assert api.probe.interval == 1.0
    assert api.probe.timeout == 0.8
    assert api.probe.load_fields == {}
    assert list(api.overload) == ["latency_ms"]
    assert (api.overload["latency_ms"].high, api.overload["latency_ms"].low) == (500, 200)
    assert api.fall == 3
    assert api.rise == 5
    assert api.min_drain == 30.0
    assert api.flap_backoff == 2.0
    assert api.slow_start == 60.0
    assert api.max_drained == pytest.approx(0.4)
    assert api.min_in_service == 2
    assert api.blind_threshold == pytest.approx(0.8)
    assert api.expected_weights == {}
    assert api.balance_alert.factor == 2.0
    assert api.balance_alert.for_ == 30.0


def test_defaults_of_two_configs_are_not_shared() -> None:
    """Default lists are built per config, so two parsed configs do not share one list."""
    first = parse_config("pools: [{name: api}]")
    second = parse_config("pools: [{name: api}]")
    assert first.load_balancer.haproxy.sockets is not second.load_balancer.haproxy.sockets


def test_minimal_config_engine_settings_match_engine_defaults() -> None:
    """The config defaults and the engine's own PoolSettings defaults are the same values."""
    converted = parse_config("pools: [{name: api}]").engine_settings().pools["api"]
    assert converted == PoolSettings(name="api")


def test_64_char_name_is_accepted() -> None:
    """A pool name of exactly 64 safe characters is the longest accepted."""
    name = "a" * 64
    assert parse_config(f"pools: [{{name: {name}}}]").pools[0].name == name


# --- durations and shares --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        pytest.param("500ms", 0.5, id="500ms"),
        pytest.param("2s", 2.0, id="2s"),
        pytest.param("10m", 600.0, id="10m"),
        pytest.param("1.5s", 1.5, id="1.5s"),
        pytest.param("1.5m", 90.0, id="1.5m"),
        pytest.param("1h", 3600.0, id="1h"),
        pytest.param("1d", 86400.0, id="1d"),
        pytest.param("0s", 0.0, id="0s"),
        pytest.param(" 2s ", 2.0, id="padded"),
        pytest.param(3, 3.0, id="int-seconds"),
        pytest.param(2, 2.0, id="bare-2-is-seconds"),
        pytest.param(0.25, 0.25, id="float-seconds"),
    ],
)
def test_parse_duration_accepts(value: object, seconds: float) -> None:
    """Valid durations convert to seconds."""
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("2x", id="unknown-unit"),
        pytest.param("-1s", id="negative-string"),
        pytest.param(-1, id="negative-int"),
        pytest.param("s", id="unit-only"),
        pytest.param("", id="empty"),
        pytest.param(True, id="bool"),
        pytest.param("1e3s", id="exponent"),
        pytest.param(None, id="none"),
        pytest.param(float("nan"), id="nan"),
        pytest.param(float("inf"), id="inf"),
        pytest.param("1 0s", id="inner-space"),
        pytest.param([1], id="list"),
    ],
)
def test_parse_duration_refuses(value: object) -> None:
    """Invalid durations raise ValueError with a one-line message."""
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert "\n" not in str(info.value)


def test_parse_duration_refuses_huge_int_with_value_error() -> None:
    """A number of seconds too large for a float is refused with ValueError."""
    with pytest.raises(ValueError):
        parse_duration(10**400)


@pytest.mark.parametrize(
    ("value", "share"),
    [
        pytest.param("40%", 0.4, id="40%"),
        pytest.param(" 40% ", 0.4, id="padded-percent"),
        pytest.param("12.5%", 0.125, id="fractional-percent"),
        pytest.param(0.4, 0.4, id="0.4"),
        pytest.param("0%", 0.0, id="0%"),
        pytest.param("100%", 1.0, id="100%"),
        pytest.param(1, 1.0, id="int-1"),
        pytest.param(0, 0.0, id="int-0"),
    ],
)
def test_parse_share_accepts(value: object, share: float) -> None:
    """Valid shares convert to a fraction in [0, 1]."""
    assert parse_share(value) == pytest.approx(share)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("140%", id="140%"),
        pytest.param(1.5, id="1.5"),
        pytest.param(-0.1, id="negative"),
        pytest.param("-1%", id="negative-percent"),
        pytest.param("abc%", id="abc%"),
        pytest.param(True, id="bool"),
        pytest.param(40, id="bare-40"),
        pytest.param("0.4", id="string-without-percent"),
        pytest.param(float("nan"), id="nan"),
        pytest.param("nan%", id="nan-percent"),
        pytest.param(None, id="none"),
    ],
)
def test_parse_share_refuses(value: object) -> None:
    """Invalid shares raise ValueError with a one-line message."""
    with pytest.raises(ValueError) as info:
        parse_share(value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "value",
    [
        "unix:/run/haproxy/admin.sock",
        "tcp:127.0.0.1:9999",
        "tcp:lb-1.example:1",
        "tcp:[::1]:65535",
    ],
)
def test_check_socket_accepts(value: str) -> None:
    """Absolute unix paths and tcp host:port pairs are valid sockets."""
    assert check_socket(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "unix:relative",
        "unix:",
        "tcp:host",
        "tcp:h:0",
        "tcp:h:70000",
        "tcp::9999",
        "http://x",
        "/run/haproxy/admin.sock",
        "",
    ],
)
def test_check_socket_refuses(value: str) -> None:
    """Anything but unix:/PATH or tcp:HOST:PORT with a port in 1-65535 is refused."""
    with pytest.raises(ValueError):
        check_socket(value)


# --- invalid configurations ------------------------------------------------------------------

NAN_MARKS = (
    "probe: {load_fields: {cpu: cpu}}",
    "overload:",
    "  cpu: {high: .nan, low: 0.5}",
)

INVALID = [
    pytest.param(pool("fall: 0"), "pools[0].fall", ">= 1", 3, id="fall-0"),
    pytest.param(pool("fall: 3.5"), "pools[0].fall", "integer", 3, id="fall-fraction"),
    pytest.param(pool("rise: 0"), "pools[0].rise", ">= 1", 3, id="rise-0"),
    pytest.param(pool("rise: -1"), "pools[0].rise", "(got -1)", 3, id="rise-negative"),
    pytest.param(
        pool("probe: {load_fields: {cpu: cpu}}", "overload:", "  cpu: {high: 0.5, low: 0.7}"),
        "pools[0].overload.cpu",
        "low (0.7) must be < high (0.5)",
        5,
        id="marks-low-above-high",
    ),
    pytest.param(
        pool("overload:", "  latency_ms: {high: 300, low: 300}"),
        "pools[0].overload.latency_ms",
        "must be < high",
        4,
        id="marks-low-equals-high",
    ),
    pytest.param(pool(*NAN_MARKS), "pools[0].overload.cpu", "finite", 5, id="marks-nan"),
    pytest.param(
        pool("probe: {load_fields: {cpu: cpu}}", "capacity_signal: cpu"),
        "pools[0].capacity_signal",
        "'cpu', which is not one of the pool's overload signals (latency_ms)",
        4,
        id="capacity-signal-not-in-overload",
    ),
    pytest.param(
        pool("overload:", "  latency_ms: {high: .inf, low: 200}"),
        "pools[0].overload.latency_ms",
        "finite",
        4,
        id="marks-inf",
    ),
    pytest.param(
        pool("overload:", "  latency_ms: {high: 500}"),
        "pools[0].overload.latency_ms.low",
        "is required",
        4,
        id="marks-low-missing",
    ),
    pytest.param(
        pool("overload:", "  latency_ms: {high: 500, low: 200}", "  bogus: {high: 2, low: 1}"),
        "pools[0]",
        "bogus",
        2,
        id="unknown-signal",
    ),
    pytest.param(
        pool("overload: {}"), "pools[0].overload", "at least one signal", 3, id="empty-overload"
    ),
    pytest.param(
        pool("probe:", "  interval: 1s", "  timeout: 2s"),
        "pools[0].probe",
        "timeout (2s) must not exceed interval (1s)",
        3,
        id="probe-timeout-above-interval",
    ),
    pytest.param(
        pool("probe: {interval: 0s, timeout: 0s}"),
        "pools[0].probe.interval",
        "> 0",
        3,
        id="probe-interval-zero",
    ),
    pytest.param(
        pool("probe:", "  url: 'ftp://{address}/health'"),
        "pools[0].probe.url",
        "http:// or https://",
        4,
        id="url-scheme",
    ),
    pytest.param(
        pool("probe:", "  url: 'http://{host}:{port}/health'"),
        "pools[0].probe.url",
        "unknown placeholder {host}",
        4,
        id="url-placeholder",
    ),
    pytest.param(
        pool("probe:", "  load_fields: [cpu]"),
        "pools[0].probe.load_fields",
        "dictionary",
        4,
        id="load-fields-not-mapping",
    ),
    pytest.param(
        "pools:\n  - name: api\n  - name: web\n  - name: api\n",
        "pools",
        "'api' appears twice (pools[0] and pools[2])",
        1,
        id="duplicate-pool-names",
    ),
    pytest.param("pools: []\n", "pools", "at least one pool", 1, id="no-pools"),
    pytest.param("daemon: {dry_run: true}\n", "pools", "is required", None, id="pools-missing"),
    pytest.param("pools:\n  - fall: 3\n", "pools[0].name", "is required", 2, id="pool-no-name"),
    pytest.param(
        "pools:\n  - name: 'api;disable server'\n",
        "pools[0].name",
        "invalid name",
        2,
        id="name-semicolon",
    ),
    pytest.param("pools:\n  - name: 'a b'\n", "pools[0].name", "invalid name", 2, id="name-space"),
    pytest.param(
        'pools:\n  - name: "api\\nshow info"\n',
        "pools[0].name",
        "invalid name",
        2,
        id="name-newline",
    ),
    pytest.param(
        "pools:\n  - name: ápi\n", "pools[0].name", "invalid name", 2, id="name-non-ascii"
    ),
    pytest.param(f"pools:\n  - name: {'a' * 65}\n", "pools[0].name", "1-64", 2, id="name-65-chars"),
    pytest.param("pools:\n  - name: 42\n", "pools[0].name", "expected a name", 2, id="name-int"),
    pytest.param(
        pool("servers: [s1, 's 2', s3]"),
        "pools[0].servers[1]",
        "invalid name 's 2'",
        3,
        id="server-name-unsafe",
    ),
    pytest.param(
        pool("expected_weights: {default: 300}"),
        "pools[0].expected_weights",
        "between 0 and 256",
        3,
        id="weight-300",
    ),
    pytest.param(
        pool("expected_weights: {default: 100, 's;1': 50}"),
        "pools[0].expected_weights",
        "invalid name",
        3,
        id="weight-unsafe-key",
    ),
    pytest.param(
        haproxy_sockets("['unix:relative']"),
        "load_balancer.haproxy.sockets",
        "unix:/PATH or tcp:HOST:PORT",
        3,
        id="socket-unix-relative",
    ),
    pytest.param(
        haproxy_sockets("['tcp:host']"),
        "load_balancer.haproxy.sockets",
        "tcp:HOST:PORT",
        3,
        id="socket-tcp-no-port",
    ),
    pytest.param(
        haproxy_sockets("['tcp:h:70000']"),
        "load_balancer.haproxy.sockets",
        "port out of range",
        3,
        id="socket-port-range",
    ),
    pytest.param(
        haproxy_sockets("['http://x']"),
        "load_balancer.haproxy.sockets",
        "'http://x'",
        3,
        id="socket-http",
    ),
    pytest.param(
        haproxy_sockets("[]"),
        "load_balancer.haproxy.sockets",
        "at least one socket",
        3,
        id="socket-empty-list",
    ),
    pytest.param(
        haproxy_sockets("['unix:/a.sock', 'unix:/a.sock']"),
        "load_balancer.haproxy.sockets",
        "twice",
        3,
        id="socket-duplicated",
    ),
    pytest.param(
        haproxy_sockets("'unix:/a.sock'"),
        "load_balancer.haproxy.sockets",
        "list",
        3,
        id="sockets-not-a-list",
    ),
    pytest.param(
        "load_balancer:\n  haproxy:\n    timeout: 0s\npools: [{name: api}]\n",
        "load_balancer.haproxy.timeout",
        "> 0",
        3,
        id="haproxy-timeout-zero",
    ),
    pytest.param(
        "load_balancer:\n  type: nginx\npools: [{name: api}]\n",
        "load_balancer.type",
        "'nginx'",
        2,
        id="lb-type-nginx",
    ),
    pytest.param(
        "daemon:\n  log_format: xml\npools: [{name: api}]\n",
        "daemon.log_format",
        "'xml'",
        2,
        id="log-format-xml",
    ),
    pytest.param(
        "daemon:\n  dry_run: maybe\npools: [{name: api}]\n",
        "daemon.dry_run",
        "boolean",
        2,
        id="dry-run-maybe",
    ),
    pytest.param(
        "daemon:\n  round_interval: 0s\npools: [{name: api}]\n",
        "daemon.round_interval",
        "> 0",
        2,
        id="round-interval-zero",
    ),
    pytest.param("pool:\n  - name: api\n", "pool", "unknown key", 1, id="unknown-top-level-key"),
    pytest.param(
        "daemon:\n  dryrun: true\npools: [{name: api}]\n",
        "daemon.dryrun",
        "unknown key",
        2,
        id="unknown-daemon-key",
    ),
    pytest.param(pool("fal: 3"), "pools[0].fal", "unknown key", 3, id="unknown-pool-key"),
    pytest.param(
        pool("min_drain: 30 sec"),
        "pools[0].min_drain",
        "expected a duration",
        3,
        id="min-drain-bad-unit",
    ),
    pytest.param(
        pool("max_drained: 140%"),
        "pools[0].max_drained",
        "between 0% and 100%",
        3,
        id="max-drained-140%",
    ),
    pytest.param(
        pool("blind_threshold: 80"),
        "pools[0].blind_threshold",
        "between 0% and 100%",
        3,
        id="blind-threshold-bare-80",
    ),
    pytest.param(
        pool("min_in_service: -1"), "pools[0].min_in_service", ">= 0", 3, id="min-in-service-neg"
    ),
    pytest.param(
        pool("flap_backoff: 0.5"), "pools[0].flap_backoff", ">= 1", 3, id="flap-backoff-0.5"
    ),
    pytest.param(
        pool("balance_alert:", "  factor: 1.0"),
        "pools[0].balance_alert.factor",
        "> 1",
        4,
        id="balance-factor-1",
    ),
    pytest.param(
        pool("balance_alert: {for: -1s}"),
        "pools[0].balance_alert.for",
        "expected a duration",
        3,
        id="balance-for-negative",
    ),
    pytest.param(
        pool("min_drain: 5m", "flap_max_hold: 1m"),
        "pools[0]",
        "flap_max_hold (60s) must be >= min_drain (300s)",
        2,
        id="flap-max-hold-below-min-drain",
    ),
    pytest.param("- pools\n- api\n", "(top)", "expected a mapping", None, id="top-level-list"),
    pytest.param("just text\n", "(top)", "expected a mapping", None, id="top-level-scalar"),
    pytest.param(
        "pools:\n  - name: api\n   fall: 3\n",
        "(yaml)",
        "expected <block end>",
        3,
        id="yaml-syntax-error",
    ),
    pytest.param("a: 1\n---\nb: 2\n", "(yaml)", "another document", 2, id="yaml-two-documents"),
    pytest.param(
        "pools: !!python/object/apply:os.system [true]\n",
        "(yaml)",
        "constructor",
        1,
        id="yaml-python-tag",
    ),
    pytest.param(
        pool("fall: 2", "rise: 5", "fall: 3"),
        "pools[0].fall",
        "twice",
        5,
        id="duplicate-key-in-pool",
    ),
    pytest.param(
        "pools: [{name: api}]\npools: [{name: web}]\n",
        "pools",
        "twice",
        2,
        id="duplicate-top-level-key",
    ),
    pytest.param("", "(top)", "expected a mapping", None, id="empty-file"),
    pytest.param("# nothing but a comment\n", "(top)", "mapping", None, id="comment-only-file"),
]


@pytest.mark.parametrize(("text", "path", "message", "line"), INVALID)
def test_invalid_config_is_refused_with_path_message_and_line(
    text: str, path: str, message: str, line: int | None
) -> None:
    """An invalid config raises ConfigError naming the exact field path, reason and line."""
    error = refused(text, "bad.yaml")
    problem = problem_at(error, path)
    assert message in problem.message
    if line is not None:
        assert problem.line == line
    for each in error.problems:
        assert "\n" not in each.message
        assert "\n" not in str(each)
    assert error.source == "bad.yaml"


def test_invalid_table_is_large_enough() -> None:
    """The invalid-configuration table keeps at least 30 distinct cases."""
    assert len({p.id for p in INVALID}) == len(INVALID) >= 30


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(pool("fall: true"), id="fall-true"),
        pytest.param(pool("expected_weights: {s1: true}"), id="weight-true"),
        pytest.param(
            pool("overload:", "  latency_ms: {high: true, low: false}"), id="marks-booleans"
        ),
    ],
)
def test_boolean_for_a_number_is_refused(text: str) -> None:
    """A YAML boolean where a number is expected is refused, as it is for durations and shares."""
    refused(text)


def test_unparseable_http_listen_address_is_refused() -> None:
    """daemon.http must be a HOST:PORT listen address."""
    error = refused("daemon: {http: garbage}\npools: [{name: api}]\n")
    problem_at(error, "daemon.http")


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(pool("min_drain: " + "9" * 400), id="huge-duration"),
        pytest.param(pool("max_drained: " + "9" * 400), id="huge-share"),
    ],
)
def test_huge_integer_is_a_config_error(text: str) -> None:
    """A number too large for a float is refused as a ConfigError, not an OverflowError."""
    refused(text)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("&a [*a]\n", id="self-sequence"),
        pytest.param("&a {pools: *a}\n", id="self-mapping"),
    ],
)
def test_recursive_yaml_alias_is_a_config_error(text: str) -> None:
    """A YAML node that contains itself is refused as a ConfigError."""
    refused(text)


def alias_bomb(levels: int) -> str:
    """A YAML file whose every level aliases the previous one twice."""
    lines = ["l0: &l0 [x, x]"]
    lines += [f"l{i}: &l{i} [*l{i - 1}, *l{i - 1}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def seconds_to_refuse(text: str) -> float:
    """How long parse_config takes to refuse ``text``."""
    started = time.perf_counter()
    with pytest.raises(ConfigError):
        parse_config(text)
    return time.perf_counter() - started


def test_alias_bomb_cost_grows_with_the_file_not_its_expansion() -> None:
    """Five more alias levels (32x the expansion) cost about as much as the file grows."""
    small = seconds_to_refuse(alias_bomb(12))
    large = seconds_to_refuse(alias_bomb(17))
    assert large < 3 * small + 0.02


def test_unknown_key_with_newline_still_gives_one_line_per_problem() -> None:
    """A quoted key containing a newline does not split the error over two lines."""
    error = refused('pools: [{name: api}]\n"da\\nemon": {}\n', "bad.yaml")
    assert len(str(error).splitlines()) == len(error.problems) == 1


# --- all or nothing --------------------------------------------------------------------------


def test_every_problem_is_reported_at_once() -> None:
    """Two independent problems in one pool are both named in a single ConfigError."""
    text = pool(
        "fall: 0",
        "probe: {load_fields: {cpu: cpu}}",
        "overload:",
        "  cpu: {high: 0.5, low: 0.7}",
    )
    error = refused(text, "/etc/lbhealthd/config.yaml")
    paths = {p.path for p in error.problems}
    assert {"pools[0].fall", "pools[0].overload.cpu"} <= paths
    assert problem_at(error, "pools[0].fall").line == 3
    assert problem_at(error, "pools[0].overload.cpu").line == 6
    rendered = str(error).splitlines()
    assert len(rendered) == len(error.problems)
    for line, problem in zip(rendered, error.problems, strict=True):
        assert line == f"/etc/lbhealthd/config.yaml: {problem}"
    assert any(line.endswith("(line 3)") and "pools[0].fall" in line for line in rendered)


def test_problems_in_different_sections_are_all_reported() -> None:
    """Problems in daemon, load_balancer and two pools come back together."""
    text = (
        "daemon:\n"
        "  log_format: xml\n"
        "load_balancer:\n"
        "  type: nginx\n"
        "pools:\n"
        "  - name: api\n"
        "    rise: 0\n"
        "  - name: 'b c'\n"
    )
    error = refused(text)
    assert {p.path for p in error.problems} == {
        "daemon.log_format",
        "load_balancer.type",
        "pools[0].rise",
        "pools[1].name",
    }
    assert problem_at(error, "pools[1].name").line == 8


def test_problem_renders_without_line_when_unknown() -> None:
    """A problem with no line renders as just path and message."""
    assert str(Problem("(top)", "expected a mapping")) == "(top): expected a mapping"
    assert str(Problem("pools[0].fall", "bad", 7)) == "pools[0].fall: bad (line 7)"


# --- loading files ---------------------------------------------------------------------------


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    """load_config parses a UTF-8 file on disk."""
    path = tmp_path / "config.yaml"
    path.write_text("pools:\n  - name: api\n    fall: 4\n", encoding="utf-8")
    config = load_config(path)
    assert isinstance(config, Config)
    assert config.pools[0].fall == 4


def test_load_config_names_the_file_in_validation_errors(tmp_path: Path) -> None:
    """A refused file's error lines start with the file's path."""
    path = tmp_path / "config.yaml"
    path.write_text("pools:\n  - name: api\n    fall: 0\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.source == str(path)
    assert str(info.value) == f"{path}: pools[0].fall: must be >= 1 (got 0) (line 3)"


def test_load_config_missing_file(tmp_path: Path) -> None:
    """A missing file is a ConfigError naming the file, not an OSError."""
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.source == str(path)
    assert str(path) in str(info.value)
    assert [p.path for p in info.value.problems] == ["(file)"]
    assert "cannot read" in info.value.problems[0].message


def test_load_config_directory(tmp_path: Path) -> None:
    """A directory given as the config file is a ConfigError."""
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert [p.path for p in info.value.problems] == ["(file)"]


def test_load_config_non_utf8_file(tmp_path: Path) -> None:
    """A file that is not UTF-8 is a ConfigError, not a UnicodeDecodeError."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"pools:\n  - name: caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.source == str(path)
    assert [p.path for p in info.value.problems] == ["(file)"]
    assert "\n" not in info.value.problems[0].message


# --- which file ------------------------------------------------------------------------------


def test_resolve_path_prefers_the_explicit_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit -c path wins over $LBHEALTHD_CONFIG."""
    monkeypatch.setenv(ENV_VAR, "/from/env.yaml")
    assert resolve_path("/from/flag.yaml") == "/from/flag.yaml"


def test_resolve_path_falls_back_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no -c, $LBHEALTHD_CONFIG names the file."""
    assert ENV_VAR == "LBHEALTHD_CONFIG"
    monkeypatch.setenv("LBHEALTHD_CONFIG", "/from/env.yaml")
    assert resolve_path(None) == "/from/env.yaml"


@pytest.mark.parametrize("env", [None, ""], ids=["unset", "empty"])
def test_resolve_path_without_any_source(monkeypatch: pytest.MonkeyPatch, env: str | None) -> None:
    """With neither -c nor a non-empty $LBHEALTHD_CONFIG, and no file at the default path, a
    ConfigError says how to give one."""
    monkeypatch.setattr("lbhealthd.config.loading.DEFAULT_PATH", "/nonexistent/config.yaml")
    if env is None:
        monkeypatch.delenv(ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(ENV_VAR, env)
    with pytest.raises(ConfigError) as info:
        resolve_path(None)
    assert [p.path for p in info.value.problems] == ["-c"]
    assert "LBHEALTHD_CONFIG" in info.value.problems[0].message


# --- arbitrary input -------------------------------------------------------------------------


@given(st.text())
def test_arbitrary_text_is_a_config_or_a_config_error(text: str) -> None:
    """Any text either parses into a Config or raises ConfigError with one-line problems."""
    try:
        config = parse_config(text, "fuzz.yaml")
    except ConfigError as error:
        assert error.problems
        for problem in error.problems:
            assert isinstance(problem.path, str) and problem.path
            assert isinstance(problem.message, str) and problem.message
    else:
        assert isinstance(config, Config)
        assert config.pools


def test_capacity_signal_names_an_overload_signal() -> None:
    """The positive twin of capacity-signal-not-in-overload: it reaches the engine's settings;
    unset, it is None (no capacity check)."""
    text = pool(
        "probe: {load_fields: {cpu: cpu}}",
        "overload: {cpu: {high: 0.9, low: 0.6}}",
        "capacity_signal: cpu",
    )
    assert parse_config(text).engine_settings().pools["api"].capacity_signal == "cpu"
    assert parse_config(pool()).engine_settings().pools["api"].capacity_signal is None


def test_a_mark_may_be_a_percentage_of_a_fraction() -> None:
    """``high: 90%`` reads as 0.9, as shares do; a percentage that is not a number is refused
    with its path."""
    config = parse_config(
        pool("probe: {load_fields: {cpu: cpu}}", "overload: {cpu: {high: 90%, low: '60%'}}")
    )
    marks = config.pools[0].overload["cpu"]
    assert (marks.high, marks.low) == (0.9, 0.6)
    error = refused(pool("probe: {load_fields: {cpu: cpu}}", "overload: {cpu: {high: lots%}}"))
    assert "percentage like 90%" in problem_at(error, "pools[0].overload.cpu.high").message
