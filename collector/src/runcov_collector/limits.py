"""Bounds on everything the collector accepts from the network (wire format v1)."""

from __future__ import annotations

WIRE_VERSION = 1
"""The only ``runcov.wire_version`` this collector understands."""

MAX_BODY_BYTES = 16 * 1024 * 1024
"""Default limit of one export request body, after decompression."""

MAX_SPANS_PER_REQUEST = 100_000
MAX_ATTRIBUTES_PER_SPAN = 128
MAX_FILES_PER_PAYLOAD = 10_000
MAX_ITEMS_PER_FILE = 1_000_000
"""Lines, arcs or functions of one file in one payload."""

MAX_PATH_BYTES = 1024
MAX_NAME_BYTES = 1024
"""Endpoint names, function names and resource strings."""

MAX_LINE = 10_000_000
"""Line numbers satisfy ``1 <= abs(n) <= MAX_LINE``."""

MAX_PARTS = 100_000
"""Upper bound of ``runcov.parts`` (a request split into more parts is not plausible)."""

MAX_METRIC_ATTRIBUTES = 32
MAX_METRIC_VALUE = 2**53
"""Largest magnitude of an agent metric data point (every integer up to it is exact as a
double): the store adds up the values of every process and run, and sums of values this size
stay finite however many there are. No counter of requests, lines or CPU seconds gets near."""
MAX_TIME_UNIX_NANO = 2**63 - 1
"""Latest span or data point time (unix ns) there is: the store keeps times as signed 64-bit
integers, like OTLP's own SDKs. Later (fixed64) values are not times."""
MAX_INFLIGHT_INGESTS = 16
"""Default number of store ingests allowed at once before the receivers answer 429."""

RETRY_AFTER_SECONDS = 2
"""Retry-After sent with 429/503 answers."""

HEADER_TIMEOUT_SECONDS = 10.0
"""Default time an HTTP connection may take to send a complete request line and headers, from
when it opens or from its previous response (agents and browsers send them at once)."""
MAX_HEADER_TIMEOUT_SECONDS = 3600.0
def _connections_default() -> int:
    """Each listener's share of the process's open files limit (``ulimit -n``), after 256 kept
    for the store, logs and source files: (limit - 256) / 2, at least 64; 1000 when the limit
    cannot be read or is unlimited."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return 1000
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return 1000
    return max(64, (soft - 256) // 2)


MAX_CONNECTIONS = _connections_default()
"""Default number of open connections of each listener (HTTP, gRPC): as many as the open files
limit allows, so that a large fleet of agents is not turned away, while sockets that never send
a request cannot exhaust the descriptors the store needs (the header timeout closes those)."""

METRICS_MAX_RELEASES = 500
"""Default number of releases with per-release series on ``/metrics``: the ones seen last."""
