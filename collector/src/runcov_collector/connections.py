"""Bounds on the HTTP connections themselves, before any request reaches the application.

uvicorn bounds the idle time between two requests of a kept-alive connection
(``timeout_keep_alive``), but not the time a client takes to send a request's line and headers:
a connection that sends nothing, or one header line now and then, stays open for ever, and
holds a file descriptor without having shown a token (slowloris). Enough of them lock every
agent, dashboard reader and health check out. ``bounded_protocol`` makes uvicorn's h11 protocol
close such connections, and refuse connections past a cap.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("runcov_collector")

REFUSED_LOG_INTERVAL = 60.0
"""Refused connections are logged at most once per this many seconds (the metric counts all)."""

_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 21\r\nRetry-After: 2\r\nConnection: close\r\n\r\ntoo many connections\n"
)


def bounded_protocol(
    header_timeout: float,
    max_connections: int,
    on_timeout: Callable[[], None] = lambda: None,
    on_refused: Callable[[], None] = lambda: None,
) -> type[H11Protocol]:
    """uvicorn's h11 protocol (``uvicorn.Config(http=...)``), closing a connection that has not
    sent a complete request head within ``header_timeout`` seconds of opening or of its last
    response, and answering 503 and closing any connection opened while ``max_connections``
    are open. ``on_timeout`` and ``on_refused`` are called for each (metrics).

    A request whose head has arrived is the application's: the bound does not cut a slow
    body or a slow answer (bodies are read after authentication, within ``max_body_bytes``).
    """
    last_logged = [-REFUSED_LOG_INTERVAL]

    class BoundedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            # ``connections`` holds the open connections of this server (shared state).
            if len(self.connections) >= max_connections:
                self.transport = transport  # connection_lost closes it again
                transport.write(_BUSY)
                transport.close()
                on_refused()
                now = time.monotonic()
                if now - last_logged[0] >= REFUSED_LOG_INTERVAL:
                    last_logged[0] = now
                    log.warning(
                        "refusing HTTP connections: %d are open (--max-connections)",
                        max_connections,
                    )
                return
            super().connection_made(transport)
            self._arm_head_timer()

        def handle_events(self) -> None:
            cycle = self.cycle
            super().handle_events()
            if self.cycle is not cycle:  # a request head arrived: the application serves it
                self._cancel_head_timer()

        def on_response_complete(self) -> None:
            # The next request's head is bounded alike. Armed first: the super call parses an
            # already received (pipelined) head at once, and handle_events then disarms it.
            self._arm_head_timer()
            super().on_response_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

        def _arm_head_timer(self) -> None:
            self._cancel_head_timer()
            self._head_timer = self.loop.call_later(header_timeout, self._head_timed_out)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self.transport.is_closing():
                return
            on_timeout()
            try:
                self.conn.send(h11.ConnectionClosed())
            except h11.LocalProtocolError:  # closing in the middle of a message
                pass
            self.transport.close()

    return BoundedH11Protocol

