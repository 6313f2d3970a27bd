"""The OpenTelemetry resource that identifies the process runcov reports for."""

from __future__ import annotations

import os
import threading
import uuid
from typing import Optional

from opentelemetry.sdk.resources import Resource

from runcov.config import Config

__all__ = ["ROLE_ATTRIBUTE", "build_resource", "instance_id", "with_new_instance"]

#: Resource attribute holding the deployment role (baseline, canary, shadow, game-day).
ROLE_ATTRIBUTE = "runcov.deployment.role"

_instance: tuple[int, str] = (os.getpid(), str(uuid.uuid4()))
_instance_lock = threading.Lock()


def instance_id() -> str:
    """This process's ``service.instance.id``: one UUID per process, a new one after fork."""
    global _instance
    pid = os.getpid()
    if _instance[0] != pid:
        with _instance_lock:
            if _instance[0] != pid:
                _instance = (pid, str(uuid.uuid4()))
    return _instance[1]


def _reset_after_fork() -> None:
    global _instance, _instance_lock
    _instance_lock = threading.Lock()
    _instance = (os.getpid(), str(uuid.uuid4()))


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def build_resource(config: Config, instance: Optional[str] = None) -> Resource:
    """The resource of this process: the release key from ``config`` and the instance id.

    Nothing else: no resource detector runs and ``OTEL_RESOURCE_ATTRIBUTES`` contributes only
    what the configuration reads from it (``service.version``, ``deployment.environment.name``),
    so that host names, process command lines and whatever else a deployment puts there never
    leave the process with the coverage (see docs/security.md). ``service.instance.id`` is
    :func:`instance_id` unless given.
    """
    attributes: dict[str, str] = {
        "service.name": config.service_name or "unknown_service",
        ROLE_ATTRIBUTE: config.role,
        "service.instance.id": instance or instance_id(),
    }
    if config.service_version:
        attributes["service.version"] = config.service_version
    if config.environment:
        attributes["deployment.environment.name"] = config.environment
    return Resource(attributes)


def with_new_instance(resource: Resource) -> Resource:
    """``resource`` carrying this process's :func:`instance_id` (used in a forked child)."""
    return resource.merge(Resource({"service.instance.id": instance_id()}))
