"""Configuration: precedence, standard OTel variables and eager validation."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest

from runcov.config import Config, load_config, split_list
from runcov.errors import ConfigError, RuncovError
from runcov.export.otlp import otlp_metric_exporter_options


def test_defaults_without_environment() -> None:
    config = load_config(environ={})
    assert config == Config()
    assert config.source == [os.getcwd()]
    assert config.endpoints == ["*"]
    assert config.sample_rate == 0.01
    assert config.mode == "exact"
    assert config.max_per_second == 10.0
    assert config.saturation is True
    assert config.role == "baseline"
    assert config.queue_size == 2048
    assert config.max_scope_seconds == 60.0
    assert config.exporter_protocol == "http/protobuf"
    assert config.traces_endpoint() == "http://localhost:4318/v1/traces"
    assert config.metrics_endpoint() == "http://localhost:4318/v1/metrics"


def test_argument_beats_env_beats_default() -> None:
    env = {"RUNCOV_SAMPLE_RATE": "0.25", "RUNCOV_MODE": "census"}
    assert load_config(environ=env).sample_rate == 0.25
    assert load_config(environ=env).mode == "census"
    assert load_config(environ=env, sample_rate=0.5).sample_rate == 0.5
    assert load_config(environ=env, mode="exact").mode == "exact"


def test_env_lists_are_comma_separated(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "lib").mkdir()
    env = {
        "RUNCOV_SOURCE": f"{tmp_path}/app, {tmp_path}/lib",
        "RUNCOV_ENDPOINTS": "POST /checkout@0.5,GET /health#census",
        "RUNCOV_EXCLUDE": "*/migrations/*,settings.py",
        "RUNCOV_REDACT": r"tok_[a-z]{2,8},\d{3}-\d{2}",
    }
    config = load_config(environ=env)
    assert config.source == [f"{tmp_path}/app", f"{tmp_path}/lib"]
    assert config.endpoints == ["POST /checkout@0.5", "GET /health#census"]
    assert config.exclude == ["*/migrations/*", "settings.py"]
    # Commas inside a regex quantifier do not split the list.
    assert config.redact == [r"tok_[a-z]{2,8}", r"\d{3}-\d{2}"]


def test_websocket_selectors_are_valid() -> None:
    env = {"RUNCOV_ENDPOINTS": "WEBSOCKET /ws/*@0.5,websocket#census,/ws/*"}
    assert load_config(environ=env).endpoints == [
        "WEBSOCKET /ws/*@0.5", "websocket#census", "/ws/*",
    ]
    assert load_config(environ={}, endpoints=["WEBSOCKET /ws/{room}"]).endpoints == [
        "WEBSOCKET /ws/{room}"
    ]


def test_string_argument_is_one_item(tmp_path: Path) -> None:
    config = load_config(environ={}, source=str(tmp_path), endpoints="GET /a,b")
    assert config.source == [str(tmp_path)]
    assert config.endpoints == ["GET /a,b"]


def test_split_list_keeps_escaped_and_bracketed_commas() -> None:
    assert split_list("a, b,,c") == ["a", "b", "c"]
    assert split_list(r"x{1,2},[,;],(a,b)", regex=True) == ["x{1,2}", "[,;]", "(a,b)"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RUNCOV_SAMPLE_RATE": "abc"}, "RUNCOV_SAMPLE_RATE='abc': not a number between 0 and 1"),
        ({"RUNCOV_SAMPLE_RATE": "1.5"}, "RUNCOV_SAMPLE_RATE='1.5': not a number between 0 and 1"),
        ({"RUNCOV_SAMPLE_RATE": "nan"}, "RUNCOV_SAMPLE_RATE='nan'"),
        ({"RUNCOV_MODE": "fast"}, "RUNCOV_MODE='fast': not one of exact, census"),
        ({"RUNCOV_ROLE": "prod"}, "RUNCOV_ROLE='prod': not one of baseline, canary"),
        ({"RUNCOV_MAX_PER_SECOND": "-1"}, "RUNCOV_MAX_PER_SECOND='-1'"),
        ({"RUNCOV_QUEUE_SIZE": "2.5"}, "RUNCOV_QUEUE_SIZE='2.5': not a whole number"),
        ({"RUNCOV_QUEUE_SIZE": "0"}, "RUNCOV_QUEUE_SIZE='0'"),
        ({"RUNCOV_SATURATION": "maybe"}, "RUNCOV_SATURATION='maybe': not a boolean"),
        ({"RUNCOV_ENDPOINTS": "GET /x@2"}, "RUNCOV_ENDPOINTS='GET /x@2': rate '2'"),
        ({"RUNCOV_ENDPOINTS": "GET /x#slow"}, "RUNCOV_ENDPOINTS='GET /x#slow': mode 'slow'"),
        ({"RUNCOV_REDACT": "tok_[a-"}, "RUNCOV_REDACT='tok_[a-': not a regular expression"),
        ({"RUNCOV_EXPORTER_PROTOCOL": "http/json"}, "RUNCOV_EXPORTER_PROTOCOL='http/json'"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "thrift"}, "OTEL_EXPORTER_OTLP_PROTOCOL='thrift'"),
        ({"RUNCOV_EXPORTER_ENDPOINT": "ftp://x"}, "RUNCOV_EXPORTER_ENDPOINT='ftp://x'"),
        ({"RUNCOV_EXPORTER_ENDPOINT": "http://h:99999"}, "the port is not a number"),
        ({"RUNCOV_EXPORTER_TIMEOUT": "0"}, "RUNCOV_EXPORTER_TIMEOUT='0'"),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "10000"}, "='10000': not a number of seconds above 0 "
                                                  "and at most 3600"),
        ({"RUNCOV_METRICS_INTERVAL": "1e-9"}, "='1e-9': not 0 (metrics off) or a number of "
                                              "seconds between 0.1 and 86400"),
        ({"RUNCOV_MAX_SCOPE_SECONDS": "1e-9"}, "='1e-9': not 0 (no limit) or a number of "
                                               "seconds >= 0.01"),
        ({"RUNCOV_MAX_PER_SECOND": "inf"}, "RUNCOV_MAX_PER_SECOND='inf': not a finite number"),
        ({"RUNCOV_EXPORTER_HEADERS": "a=1,novalue"}, "='a=***,***': item 2 is not 'name=v"),
        ({"RUNCOV_EXPORTER_HEADERS": "a b=c"}, "header name 'a b' is not a valid HTTP header"),
        ({"RUNCOV_EXPORTER_HEADERS": "a=b%0Ac"}, "the value of header 'a' has a control char"),
        ({"RUNCOV_EXPORTER_ENDPOINT": "http://[::1"}, "RUNCOV_EXPORTER_ENDPOINT='http://[::1': "
                                                     "not a URL"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://[::1"}, "OTEL_EXPORTER_OTLP_ENDPOINT="),
        ({"RUNCOV_EXPORTER_ENDPOINT": "http://x y/"}, "not a URL with a host"),
        ({"RUNCOV_EXPORTER_PROTOCOL": "grpc", "RUNCOV_EXPORTER_ENDPOINT": "ftp://h:1"},
         "RUNCOV_EXPORTER_ENDPOINT='ftp://h:1': an OTLP/gRPC endpoint is host:port"),
        ({"RUNCOV_CORE": "bogus"}, "RUNCOV_CORE='bogus': not one of sysmon, settrace"),
        ({"RUNCOV_ACCEL": "perhaps"}, "RUNCOV_ACCEL='perhaps': not a boolean"),
        ({"RUNCOV_EXACT_PROBES": "2"}, "RUNCOV_EXACT_PROBES='2': not a boolean"),
        ({"RUNCOV_MAX_SCOPE_SECONDS": "-1"}, "RUNCOV_MAX_SCOPE_SECONDS='-1': not a number of "
                                            "seconds >= 0 (0 means no limit)"),
        ({"RUNCOV_MAX_SCOPE_SECONDS": "nan"}, "RUNCOV_MAX_SCOPE_SECONDS='nan'"),
        ({"RUNCOV_MAX_SCOPE_SECONDS": "inf"}, "RUNCOV_MAX_SCOPE_SECONDS='inf'"),
        ({"RUNCOV_MAX_SCOPE_SECONDS": "a minute"}, "RUNCOV_MAX_SCOPE_SECONDS='a minute'"),
    ],
)
def test_bad_env_values_fail_with_a_clear_message(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ=env)
    assert message in str(info.value)
    assert isinstance(info.value, RuncovError)


def test_bad_arguments_name_the_argument() -> None:
    with pytest.raises(ConfigError, match=r"^sample_rate=-0.1: not a number between 0 and 1$"):
        load_config(environ={}, sample_rate=-0.1)
    with pytest.raises(ConfigError, match=r"^sampel_rate=0.1: unknown option"):
        load_config(environ={}, sampel_rate=0.1)
    with pytest.raises(ConfigError, match=r"^source=\[\]: at least one source root"):
        load_config(environ={}, source=[])
    with pytest.raises(ConfigError, match=r"endpoints=.*item 3 is not a string"):
        load_config(environ={}, endpoints=["*", 3])
    with pytest.raises(ConfigError, match=r"sample_rate=True"):
        load_config(environ={}, sample_rate=True)


def test_max_scope_seconds() -> None:
    env = {"RUNCOV_MAX_SCOPE_SECONDS": "300"}
    assert load_config(environ=env).max_scope_seconds == 300.0
    assert load_config(environ=env, max_scope_seconds=0.5).max_scope_seconds == 0.5
    assert load_config(environ={"RUNCOV_MAX_SCOPE_SECONDS": "0"}).max_scope_seconds == 0.0
    for bad in (-1, float("nan"), float("inf"), "soon", True, [60]):
        with pytest.raises(ConfigError, match=r"^max_scope_seconds=.*: not a number of seconds"):
            load_config(environ={}, max_scope_seconds=bad)


def test_booleans() -> None:
    for text, value in [("true", True), ("0", False), ("Off", False), ("YES", True)]:
        assert load_config(environ={"RUNCOV_ENABLED": text}).enabled is value
    assert load_config(environ={}, saturation=False).saturation is False


def test_resource_falls_back_to_standard_otel_variables() -> None:
    env = {
        "OTEL_SERVICE_NAME": "shop",
        "OTEL_RESOURCE_ATTRIBUTES": "service.name=ignored,service.version=1.2.3,"
        "deployment.environment=prod",
    }
    config = load_config(environ=env)
    assert (config.service_name, config.service_version, config.environment) == (
        "shop",
        "1.2.3",
        "prod",
    )
    env2 = {
        "OTEL_RESOURCE_ATTRIBUTES": "service.name=cart,deployment.environment.name=staging",
        "RUNCOV_SERVICE_VERSION": "9",
    }
    config2 = load_config(environ=env2)
    assert (config2.service_name, config2.service_version, config2.environment) == (
        "cart",
        "9",
        "staging",
    )
    assert load_config(environ=env, service_name="explicit").service_name == "explicit"


def test_exporter_falls_back_to_standard_otlp_variables() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer%20s3cr3t,x-team=core",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "3",
    }
    config = load_config(environ=env)
    assert config.exporter_protocol == "grpc"
    assert config.traces_endpoint() == "http://collector:4317"
    assert config.exporter_headers == {"authorization": "Bearer s3cr3t", "x-team": "core"}
    assert config.exporter_timeout == 3.0
    overridden = load_config(
        environ={**env, "RUNCOV_EXPORTER_ENDPOINT": "http://runcov:4318"},
        exporter_protocol="http/protobuf",
        exporter_headers={"X-Key": "v"},
    )
    assert overridden.traces_endpoint() == "http://runcov:4318/v1/traces"
    assert overridden.exporter_headers == {"x-key": "v"}


def test_grpc_default_endpoint_port() -> None:
    assert load_config(environ={}, exporter_protocol="grpc").exporter_endpoint == (
        "http://localhost:4317"
    )


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNCOV_SAMPLE_RATE", "0.3")
    assert load_config().sample_rate == 0.3
    monkeypatch.setenv("RUNCOV_SAMPLE_RATE", "")
    assert load_config().sample_rate == 0.01


def test_signal_specific_endpoints() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://base:4318",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://jaeger:4318/custom/traces",
    }
    config = load_config(environ=env)
    assert config.traces_endpoint() == "http://jaeger:4318/custom/traces"
    assert config.metrics_endpoint() == "http://base:4318/v1/metrics"
    # runcov's own base endpoint applies to both signals.
    mine = load_config(environ={**env, "RUNCOV_EXPORTER_ENDPOINT": "http://runcov:4318"})
    assert mine.traces_endpoint() == "http://runcov:4318/v1/traces"
    assert mine.metrics_endpoint() == "http://runcov:4318/v1/metrics"
    explicit = load_config(environ=env, exporter_metrics_endpoint="http://m:1/x")
    assert explicit.metrics_endpoint() == "http://m:1/x"
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_TRACES_ENDPOINT='nohost://'"):
        load_config(environ={"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "nohost://"})


def test_grpc_security_follows_the_scheme() -> None:
    def insecure(endpoint: str) -> object:
        config = load_config(environ={}, exporter_protocol="grpc", exporter_endpoint=endpoint)
        return config.exporter_insecure()

    assert insecure("http://collector:4317") is True
    assert insecure("https://collector:4317") is False
    assert insecure("collector:4317") is None
    # Each signal follows its own endpoint: metrics sent in plaintext to a local receiver
    # while spans go over TLS (and the other way round).
    split = load_config(
        environ={},
        exporter_protocol="grpc",
        exporter_traces_endpoint="https://traces:4317",
        exporter_metrics_endpoint="http://metrics:4317",
    )
    assert split.exporter_insecure("traces") is False
    assert split.exporter_insecure("metrics") is True
    assert otlp_metric_exporter_options(split)["insecure"] is True
    assert otlp_metric_exporter_options(split)["endpoint"] == "http://metrics:4317"


def test_compression() -> None:
    assert load_config(environ={}).exporter_compression == "gzip"
    assert load_config(environ={"OTEL_EXPORTER_OTLP_COMPRESSION": "none"}).exporter_compression == (
        "none"
    )
    env = {"OTEL_EXPORTER_OTLP_COMPRESSION": "none", "RUNCOV_EXPORTER_COMPRESSION": "GZIP"}
    assert load_config(environ=env).exporter_compression == "gzip"
    deflate = load_config(environ={"OTEL_EXPORTER_OTLP_COMPRESSION": "deflate"})
    assert deflate.exporter_compression == "deflate"
    with pytest.raises(ConfigError, match="RUNCOV_EXPORTER_COMPRESSION='zstd': not one of"):
        load_config(environ={"RUNCOV_EXPORTER_COMPRESSION": "zstd"})


def test_the_filesystem_root_is_no_source_root(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``/`` as a root would measure every file of the machine and report its path (home
    directories included); a service started from ``/`` without a root (the default is the
    working directory) is told to name one."""
    with pytest.raises(ConfigError, match=r"^source=\['/srv', '/'\]: the filesystem root"):
        load_config(environ={}, source=["/srv", "/"])
    with pytest.raises(ConfigError, match=r"^RUNCOV_SOURCE=\['/'\]: the filesystem root"):
        load_config(environ={"RUNCOV_SOURCE": "/"})
    monkeypatch.chdir("/")
    with pytest.raises(ConfigError, match=r"^RUNCOV_SOURCE not given .* is '/': the filesystem"):
        load_config(environ={})
    assert load_config(environ={"RUNCOV_SOURCE": str(tmp_path)}).source == [str(tmp_path)]


def test_source_roots_that_do_not_exist(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A typo in the only root would measure nothing, silently: refused at start. A missing
    root among others (one configuration for several services) is logged and left out of
    the others are measured."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shop").mkdir()
    (tmp_path / "job.py").write_text("print(1)\n")
    with pytest.raises(
        ConfigError,
        match=r"^RUNCOV_SOURCE=\['shpo'\]: no such file or directory .*"
        + re.escape(repr(str(tmp_path))),
    ):
        load_config(environ={"RUNCOV_SOURCE": "shpo"})
    with pytest.raises(ConfigError, match=r"^source=\['/no/such', 'jbo.py'\]: no such file"):
        load_config(environ={}, source=["/no/such", "jbo.py"])
    assert load_config(environ={}, source=["job.py"]).source == ["job.py"]  # a file is a root
    with caplog.at_level(logging.WARNING, logger="runcov"):
        config = load_config(environ={"RUNCOV_SOURCE": "shop,/no/such/lib"})
    assert config.source == ["shop", "/no/such/lib"]
    assert "RUNCOV_SOURCE: no such file or directory: '/no/such/lib'" in caplog.text


def test_the_sysmon_core_is_refused_where_there_is_no_sys_monitoring() -> None:
    import sys

    if sys.version_info >= (3, 12):
        assert load_config(environ={"RUNCOV_CORE": "sysmon"}).sample_rate == 0.01
    else:
        with pytest.raises(ConfigError, match=r"^RUNCOV_CORE='sysmon': sys.monitoring needs"):
            load_config(environ={"RUNCOV_CORE": "sysmon"})
    for ok in ("settrace", " SysMon " if sys.version_info >= (3, 12) else "settrace"):
        load_config(environ={"RUNCOV_CORE": ok, "RUNCOV_ACCEL": "0", "RUNCOV_EXACT_PROBES": "off"})
