"""The process resource: release key from the configuration, the rest from standard env."""

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
    assert attrs["service.name"] == "shop"
    assert attrs["service.version"] == "2.1"
    assert attrs["deployment.environment.name"] == "prod"
    assert attrs["deployment.environment"] == "prod"  # never contradicts the configured one
    assert attrs["runcov.deployment.role"] == "canary"
    assert attrs["service.instance.id"] == instance_id()
    assert attrs["host.name"] == "web-1"


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
