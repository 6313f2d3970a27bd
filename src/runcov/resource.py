"""The OpenTelemetry resource that identifies the process runcov reports for."""

from __future__ import annotations

import uuid
from typing import Optional

from opentelemetry.sdk.resources import Resource

from runcov.config import Config

__all__ = ["ROLE_ATTRIBUTE", "build_resource", "with_new_instance"]

#: Resource attribute holding the deployment role (baseline, canary, shadow, game-day).
ROLE_ATTRIBUTE = "runcov.deployment.role"


def build_resource(config: Config, instance_id: Optional[str] = None) -> Resource:
    """The resource of this process: release key from ``config``, the rest from standard env.

    ``OTEL_RESOURCE_ATTRIBUTES`` contributes attributes runcov does not set itself; the
    configuration's values always win. ``service.instance.id`` is a fresh UUID unless given.
    """
    attributes: dict[str, str] = {
        "service.name": config.service_name or "unknown_service",
        ROLE_ATTRIBUTE: config.role,
        "service.instance.id": instance_id or str(uuid.uuid4()),
    }
    if config.service_version:
        attributes["service.version"] = config.service_version
    if config.environment:
        attributes["deployment.environment.name"] = config.environment
    resource = Resource.create(attributes)
    if config.environment and "deployment.environment" in resource.attributes:
        # The older attribute from OTEL_RESOURCE_ATTRIBUTES must not contradict the configured one.
        resource = resource.merge(Resource({"deployment.environment": config.environment}))
    return resource


def with_new_instance(resource: Resource) -> Resource:
    """A copy of ``resource`` with a new ``service.instance.id`` (for a forked child)."""
    return resource.merge(Resource({"service.instance.id": str(uuid.uuid4())}))
