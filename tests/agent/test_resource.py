"""The process resource: the release key from the configuration and the instance id."""

from __future__ import annotations

import os
import warnings

import pytest

from runcov.config import load_config
from runcov.resource import build_resource, instance_id, with_new_instance


def test_release_key_and_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "host.name=web-1,deployment.environment=old")
    config = load_config(
        environ={}, service_name="shop", service_version="2.1", environment="prod", role="canary"
    )
    attrs = build_resource(config).attributes
    assert dict(attrs) == {
        "service.name": "shop",
        "service.version": "2.1",
        "deployment.environment.name": "prod",
        "runcov.deployment.role": "canary",
        "service.instance.id": instance_id(),
    }


def test_nothing_else_of_the_environment_joins_the_resource(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only the documented attributes leave the process (docs/security.md): not what a
    deployment puts into ``OTEL_RESOURCE_ATTRIBUTES``, nor what the SDK's resource detectors
    would find (host name, the process's command line and executable path)."""
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "team=SECRETTEAM,service.version=9")
    monkeypatch.setenv("OTEL_EXPERIMENTAL_RESOURCE_DETECTORS", "process,host,os")
    config = load_config(environ=dict(os.environ), service_name="shop")
    assert sorted(build_resource(config).attributes) == [
        "runcov.deployment.role",
        "service.instance.id",
        "service.name",
        "service.version",
    ]
    assert build_resource(config).attributes["service.version"] == "9"


def test_optional_attributes_are_omitted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    attrs = build_resource(load_config(environ={})).attributes
    assert attrs["service.name"] == "unknown_service"
    assert attrs["runcov.deployment.role"] == "baseline"
    assert "service.version" not in attrs
    assert "deployment.environment.name" not in attrs


def test_forked_child_gets_a_new_instance_id() -> None:
    resource = build_resource(load_config(environ={}, service_name="shop"))
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork of a threaded process
        pid = os.fork()
    if pid == 0:
        try:
            child = with_new_instance(resource).attributes["service.instance.id"]
            os.write(write, f"{instance_id()} {child}".encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as fh:
        a, b = fh.read().split()
    os.waitpid(pid, 0)
    assert a == b
    assert a != resource.attributes["service.instance.id"]
    assert with_new_instance(resource).attributes["service.instance.id"] == instance_id()
