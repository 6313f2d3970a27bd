"""Store URL passwords never reach the output: neither the one of ``user:password@`` nor those
libpq takes from the query string (``?password=``, ``?sslpassword=``), in the startup line, the
log, or the error a URL that cannot be used is refused with at start."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from urllib.parse import urlsplit, urlunsplit

import pytest

from runcov_collector.app import redact_secrets, redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:pw@db:5432/runcov", "postgresql://u:***@db:5432/runcov"),
        (
            "postgresql://db:5432/runcov?user=u&password=secret",
            "postgresql://db:5432/runcov?user=u&password=***",
        ),
        (
            "postgresql://u@db/runcov?sslmode=require&sslpassword=key-pass&password=p",
            "postgresql://u@db/runcov?sslmode=require&sslpassword=***&password=***",
        ),
        (
            "postgresql://u:pw@h1:5432,h2:5433/runcov?PASSWORD=a&pass%77ord=b&options=-cx%3D1",
            "postgresql://u:***@h1:5432,h2:5433/runcov?PASSWORD=***&pass%77ord=***&options=-cx%3D1",
        ),
        ("postgresql://u:p@ss@db/runcov", "postgresql://u:***@db/runcov"),
        ("postgresql://u@db/runcov?password=", "postgresql://u@db/runcov?password="),
        ("postgresql://db/runcov", "postgresql://db/runcov"),
        ("sqlite:///runcov.db", "sqlite:///runcov.db"),
        ("sqlite:////var/lib/runcov.db", "sqlite:////var/lib/runcov.db"),
        ("runcov.db", "runcov.db"),
    ],
)
def test_redact_url_masks_every_password(url, shown):
    assert redact_url(url) == shown


def test_redact_secrets_masks_passwords_that_an_error_quotes():
    url = "postgresql://u:se%ZZcret@db/runcov?password=hunter%202"
    message = (
        f'invalid percent-encoded token: "se%ZZcret" in "{url}"; password "hunter 2" rejected'
    )
    masked = redact_secrets(message, url)
    assert "se%ZZcret" not in masked and "hunter" not in masked
    assert masked == (
        'invalid percent-encoded token: "***" in '
        '"postgresql://u:***@db/runcov?password=***"; password "***" rejected'
    )


@pytest.mark.postgres
def test_the_startup_line_and_log_show_no_password_from_the_query_string(
    pg_factory, start_collector, caplog
):
    parts = urlsplit(pg_factory.url)
    password = parts.password or ""
    netloc = f"127.0.0.1:{parts.port}"
    query = f"{parts.query}&user={parts.username}&password={password}&sslpassword=key-secret"
    url = urlunsplit(parts._replace(netloc=netloc, query=query))
    with caplog.at_level(logging.DEBUG):
        collector = start_collector(store_url=url)
        line = collector.listening()
    assert "password=***&sslpassword=***" in line
    assert f"password={password}" not in line and "key-secret" not in line
    assert not [r for r in caplog.records if "key-secret" in r.getMessage()]


def _serve_with_store(url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNCOV_COLLECTOR_")}
    return subprocess.run(
        [sys.executable, "-m", "runcov_collector", "serve", "--no-auth", "--http-port", "0",
         "--grpc-port", "-1", "--store", url],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("url", "code", "said"),
    [
        # Not a store URL: the store quotes it whole.
        ("postgresq://runcov:hunter2@127.0.0.1:9/db", 2, "unsupported store URL"),
        # libpq quotes the parameter it cannot decode, the password itself here.
        ("postgresql://runcov@127.0.0.1:9/db?password=hunter%ZZ2", 1, "percent-encoded"),
        # ... or the whole URL.
        ("postgresql://runcov:hunter2@[::1:9/db?sslpassword=hunter3", 1, "IPv6 host address"),
    ],
)
def test_a_store_url_refused_at_start_is_reported_without_its_password(url, code, said):
    result = _serve_with_store(url)
    assert result.returncode == code, result.stderr
    assert said in result.stderr
    assert "hunter" not in result.stderr + result.stdout
    assert "***" in result.stderr
