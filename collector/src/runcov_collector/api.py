"""The JSON query API (docs/query-api.md): parse and validate parameters, call the store."""

from __future__ import annotations

import difflib
import logging
import re
import time
from datetime import datetime, timezone
from typing import Any, Callable

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from runcov_collector import decode, limits
from runcov_collector.model import ROLES, Selection, Store
from runcov_collector.store.errors import SchemaChanged, is_unavailable, unavailable_reason

log = logging.getLogger(__name__)

_RELATIVE_RE = re.compile(r"(\d{1,9})([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class BadParameter(ValueError):
    """A query parameter is missing or invalid (HTTP 400)."""


def error(status: int, message: str) -> JSONResponse:
    """The API's error body ``{"error": message}``."""
    return JSONResponse({"error": message}, status_code=status)


def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own HTTP errors (no route matched: 404, method not allowed: 405).

    Under ``/api/`` they are the API's ``{"error": ...}`` body like every other API error, so a
    client that mistypes a route still gets JSON; elsewhere they stay Starlette's plain text.
    """
    assert isinstance(exc, HTTPException)
    path: str = request.scope["path"]
    if not path.startswith("/api/"):
        if exc.status_code in (204, 304):
            return Response(status_code=exc.status_code, headers=exc.headers)
        return PlainTextResponse(exc.detail, status_code=exc.status_code, headers=exc.headers)
    headers = dict(exc.headers or {})
    if exc.status_code == 404:
        message = f"no API endpoint {path}"
    elif exc.status_code == 405:
        methods = {m.strip() for m in headers.get("Allow", "").split(",") if m.strip()}
        headers["Allow"] = ", ".join(sorted(methods))
        message = f"method {request.method} is not allowed on {path} (allowed: {headers['Allow']})"
    else:
        message = exc.detail
    response = error(exc.status_code, message)
    response.headers.update(headers)
    return response


def parse_time(value: str, name: str, now: float | None = None) -> float:
    """ISO-8601 (naive means UTC) or relative ``90m``/``6h``/``7d`` → unix seconds."""
    text = value.strip()
    match = _RELATIVE_RE.fullmatch(text)
    if match:
        now = time.time() if now is None else now
        return now - int(match.group(1)) * _UNITS[match.group(2)]
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise BadParameter(
            f"{name}={value!r} is neither ISO-8601 (2026-11-25T10:00:00Z) "
            "nor relative (90m, 6h, 7d)"
        ) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _text(params: Any, name: str, required: bool = False) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        if required:
            raise BadParameter(f"missing parameter {name}")
        return None
    if len(value.encode("utf-8", "surrogatepass")) > limits.MAX_NAME_BYTES:
        raise BadParameter(f"parameter {name} is longer than {limits.MAX_NAME_BYTES} bytes")
    if decode._CONTROL_RE.search(value):
        raise BadParameter(f"parameter {name} contains control characters")
    return str(value)


def _exact(params: Any, name: str) -> str | None:
    """A version or environment: absent → None (any), given empty → "" (the empty value).

    A release without ``service.version`` or ``deployment.environment.name`` is stored under
    the empty string; ``version=`` must select it, as the dashboard's links do, rather than
    fall back to the most recent release.
    """
    if params.get(name) == "":
        return ""
    return _text(params, name)


def _role(params: Any, name: str) -> str | None:
    role = _text(params, name)
    if role is not None and role not in ROLES:
        raise BadParameter(f"{name}={role!r} is not one of {', '.join(ROLES)}")
    return role


def selection(params: Any, prefix: str = "", base: Selection | None = None) -> Selection:
    """The release selection of docs/query-api.md from query parameters.

    With ``prefix`` (``a_``/``b_`` for diff) the prefixed names override the shared ones.
    ``version`` and ``environment`` given empty select the empty value; any other parameter
    given empty counts as absent.
    """

    def pick(name: str) -> str | None:
        return (
            _text(params, prefix + name)
            if prefix and params.get(prefix + name)
            else (_text(params, name))
        )

    def pick_exact(name: str) -> str | None:
        if prefix and params.get(prefix + name) is not None:
            return _exact(params, prefix + name)
        return _exact(params, name)

    service = pick("service")
    if service is None:
        raise BadParameter("missing parameter service")
    role_name = prefix + "role" if prefix and params.get(prefix + "role") else "role"
    since = pick("since")
    until = pick("until")
    since_unix = parse_time(since, "since") if since else None
    until_unix = parse_time(until, "until") if until else None
    if since_unix is not None and until_unix is not None and since_unix >= until_unix:
        raise BadParameter("since must be before until")
    return Selection(
        service=service,
        version=pick_exact("version"),
        environment=pick_exact("environment"),
        role=_role(params, role_name),
        endpoint=pick("endpoint"),
        since_unix=since_unix,
        until_unix=until_unix,
    )


def _flag(params: Any, name: str) -> bool:
    value = (params.get(name) or "0").strip().lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no", ""):
        return False
    raise BadParameter(f"{name}={value!r} must be 0 or 1")


def _path(params: Any, name: str, required: bool) -> str | None:
    value = params.get(name)
    if not value:
        if required:
            raise BadParameter(f"missing parameter {name}")
        return None
    try:
        return decode.check_path(value, name)
    except decode.Rejected as exc:
        raise BadParameter(str(exc)) from exc


def _path_prefix(params: Any) -> str | None:
    value = _text(params, "path_prefix")
    if value is not None and (value.startswith("/") or ".." in value.split("/")):
        raise BadParameter("path_prefix must be relative and must not contain '..'")
    return value


def _not_found_types() -> tuple[type[BaseException], ...]:
    """``store.NotFound`` (unknown release/file → 404), if the store package defines it."""
    try:
        from runcov_collector import store as store_pkg
    except ImportError:
        return ()
    found = getattr(store_pkg, "NotFound", None)
    if isinstance(found, type) and issubclass(found, BaseException):
        return (found,)
    return ()


def store_unavailable(request: Request, exc: BaseException) -> JSONResponse:
    """503 ``{"error": "store unavailable: <reason>"}`` with ``Retry-After``, as ingest answers
    when the store cannot write: the database is unreachable, locked or closed for now."""
    reason = unavailable_reason(exc)
    log.warning("%s: store unavailable: %s", request.url.path, reason)
    response = error(503, f"store unavailable: {reason}")
    response.headers["Retry-After"] = str(request.app.state.config.retry_after_seconds)
    return response


def schema_changed(request: Request, exc: SchemaChanged) -> JSONResponse:
    """503 ``{"error": "the store's schema was upgraded to version N ..."}`` with
    ``Retry-After``: a newer collector migrated the store, so this one may misread it; an
    upgraded replica answers the request."""
    log.warning("%s: %s", request.url.path, exc)
    response = error(503, str(exc))
    response.headers["Retry-After"] = str(request.app.state.config.retry_after_seconds)
    return response


def _shown(name: str) -> str:
    """A parameter name as an error message quotes it (escaped, and cut when long)."""
    return repr(name if len(name) <= 64 else name[:64] + "...")


def parameter_problem(params: Any, takes: tuple[str, ...]) -> str | None:
    """Why the names of query ``params`` do not fit an endpoint that takes ``takes``, or None.

    A name the endpoint does not read is refused rather than ignored: ``rol=canary`` ignored
    leaves the default role rule to pick the release, and the answer, 200 with another
    release's figures, reads as the canary's. A close known name is suggested (``role``). A
    name given twice (``role=baseline&role=canary``) is refused too: the request names two
    releases, and the API does not pick one of them.
    """
    names = [name for name, _ in params.multi_items()]
    unknown = [name for name in dict.fromkeys(names) if name not in takes]
    if unknown:
        message = (
            f"unknown parameter{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(_shown(name) for name in unknown)} "
            + (f"(this endpoint takes: {', '.join(takes)})" if takes
               else "(this endpoint takes no parameters)")
        )
        near = {
            name: close[0]
            for name in unknown
            for close in [difflib.get_close_matches(name, takes, n=1)]
            if close
        }
        if len(unknown) == 1 and near:
            message += f"; did you mean {_shown(near[unknown[0]])}?"
        elif near:
            message += "; did you mean " + ", ".join(
                f"{_shown(known)} for {_shown(name)}" for name, known in near.items()
            ) + "?"
        return message
    for name in dict.fromkeys(names):
        times = names.count(name)
        if times > 1:
            return f"parameter {_shown(name)} is given {times} times: give it once"
    return None


def _endpoint(
    call: Callable[[Store, Any], Any], takes: tuple[str, ...]
) -> Callable[[Request], Any]:
    async def handler(request: Request) -> Response:
        problem = parameter_problem(request.query_params, takes)
        if problem is not None:
            return error(400, problem)
        store: Store = request.app.state.store
        try:
            body = await run_in_threadpool(call, store, request.query_params)
        except BadParameter as exc:
            return error(400, str(exc))
        except SchemaChanged as exc:
            return schema_changed(request, exc)
        except _not_found_types() as exc:
            message = exc.args[0] if exc.args else "not found"
            return error(404, str(message))
        except ValueError as exc:
            return error(400, str(exc))
        except Exception as exc:
            if is_unavailable(exc):
                return store_unavailable(request, exc)
            log.exception("%s failed", request.url.path)
            return error(500, f"internal error ({type(exc).__name__}); the collector's log has it")
        return JSONResponse(body)

    return handler


def _services(store: Store, params: Any) -> Any:
    return store.services()


def _releases(store: Store, params: Any) -> Any:
    service = _text(params, "service", required=True)
    assert service is not None
    return store.releases(service)


def _endpoints(store: Store, params: Any) -> Any:
    return store.endpoints(selection(params))


def _coverage(store: Store, params: Any) -> Any:
    sel = selection(params)
    return store.coverage(sel, detail=_flag(params, "detail"), path_prefix=_path_prefix(params))


def _file(store: Store, params: Any) -> Any:
    sel = selection(params)
    path = _path(params, "path", required=True)
    assert path is not None
    return store.file(sel, path)


def _series(store: Store, params: Any) -> Any:
    sel = selection(params)
    return store.series(sel, path=_path(params, "path", required=False))


def _agent(store: Store, params: Any) -> Any:
    return store.agent(selection(params))


def _diff(store: Store, params: Any) -> Any:
    a = selection(params, "a_")
    b = selection(params, "b_")
    return store.diff(a, b)


SELECTION = ("service", "version", "environment", "role", "endpoint", "since", "until")
"""The release selection's parameters (docs/query-api.md), as ``selection`` reads them."""

DIFF_SELECTION = SELECTION + tuple(f"{side}_{name}" for side in "ab" for name in SELECTION)
"""``diff`` reads each selection parameter shared and as ``a_``/``b_`` for one side."""

#: Each endpoint's handler and the query parameters it reads: every other name is a 400
#: (``parameter_problem``). A handler that starts reading a parameter must declare it here.
#: ``agent`` takes ``since``/``until`` only to refuse them with the reason (its counters are
#: all time), rather than as unknown names.
ENDPOINTS: dict[str, tuple[Callable[[Store, Any], Any], tuple[str, ...]]] = {
    "/api/v1/services": (_services, ()),
    "/api/v1/releases": (_releases, ("service",)),
    "/api/v1/endpoints": (_endpoints, SELECTION),
    "/api/v1/coverage": (_coverage, (*SELECTION, "detail", "path_prefix")),
    "/api/v1/file": (_file, (*SELECTION, "path")),
    "/api/v1/series": (_series, (*SELECTION, "path")),
    "/api/v1/diff": (_diff, DIFF_SELECTION),
    "/api/v1/agent": (_agent, SELECTION),
}


def routes() -> list[Route]:
    """The ``/api/v1/*`` routes."""
    return [Route(path, _endpoint(call, takes)) for path, (call, takes) in ENDPOINTS.items()]
