"""uvicorn's h11 protocol with a deadline for each request's head.

uvicorn times out a kept-alive connection that sends nothing, and the service cuts an upload whose
body is slow (middleware.BodyTimeout), but nothing bounds the request line and headers: a client
that connects and sends them a byte at a time (slowloris) would hold a connection for ever, and a
few hundred such clients would hold a replica. Here each connection, and each next request on a
kept-alive one, has CAPTIONER_HEADER_TIMEOUT_S to deliver its whole head, or it is closed.
"""
from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


def with_header_deadline(header_timeout_s: float) -> type[H11Protocol]:
    """The protocol class uvicorn.Config(http=...) takes, for the app's CAPTIONER_HEADER_TIMEOUT_S."""
    return type("HeaderDeadline", (HeaderDeadline,), {"header_timeout_s": header_timeout_s})


class HeaderDeadline(H11Protocol):
    header_timeout_s: float

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = self.loop.call_later(self.header_timeout_s, self._cut)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        head_in = self.conn.their_state is not h11.IDLE  # h11 leaves IDLE once a whole request head is parsed
        if head_in and self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        elif not head_in and self._deadline is None:  # the first bytes of the next request on this connection
            self._deadline = self.loop.call_later(self.header_timeout_s, self._cut)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(exc)

    def _cut(self) -> None:
        self._deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()
