"""Pure ASGI middleware: the upload size and time limits, and one log line plus metrics per request."""
from __future__ import annotations

import asyncio
import json
import logging
import time

from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.metrics import Metrics

logger = logging.getLogger("captioner.access")


class BodyTooLarge(HTTPException):
    """Raised from inside the body read; an HTTPException so that FastAPI's form parsing passes it on as 413."""

    def __init__(self, max_bytes: int):
        super().__init__(413, f"request body over the limit of {max_bytes} bytes", headers={"Connection": "close"})


class BodySizeLimit:
    """413 before reading a body whose Content-Length is over the limit; for bodies without one
    (chunked), count while streaming and stop the read at the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await _json_response(send, 413, f"request body over the limit of {self.max_bytes} bytes")
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counting_receive, send)


class BodyTimedOut(HTTPException):
    """Raised from inside the body read, like BodyTooLarge, so that FastAPI passes it on as 408."""

    def __init__(self, timeout_s: float):
        super().__init__(408, f"request body not received within {timeout_s} s", headers={"Connection": "close"})


class BodyTimeout:
    """408 when the whole body has not arrived within timeout_s of the request head.

    A client that trickles its upload (slowloris) would otherwise hold its connection, and what it
    has sent so far, for as long as it likes: uvicorn has no body read timeout of its own. The
    deadline covers the whole body rather than each read, so sending a byte now and then does not
    extend it. Once the body is complete, reads pass straight through (e.g. waiting for disconnect)."""

    def __init__(self, app: ASGIApp, timeout_s: float):
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        body_complete = False

        async def timed_receive() -> Message:
            nonlocal body_complete
            if body_complete:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0))
            except asyncio.TimeoutError:  # the builtin TimeoutError only from Python 3.11 on
                raise BodyTimedOut(self.timeout_s) from None
            body_complete = not message.get("more_body", False)  # a disconnect ends the body too
            return message

        await self.app(scope, timed_receive, send)


class AccessLog:
    """One JSON log line per request (no image data) and the request metrics, by route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            seconds = time.perf_counter() - started
            route = route_label(scope)
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(seconds)
            line = {"route": route, "method": scope["method"], "status": status, "ms": round(seconds * 1000, 2)}
            batch_size = scope.get("state", {}).get("batch_size")
            if batch_size is not None:
                line["batch_size"] = batch_size
            logger.info(json.dumps(line))


def route_label(scope: Scope) -> str:
    """The template of the route a request was sent to, or "unmatched": a bounded label set, even under fuzzing.

    A request that BodySizeLimit refused (413) never reached the router, so its scope names no route:
    the app's routes are asked here which one it was for, as the router asks them."""
    route = scope.get("route")
    if route is None and "app" in scope:
        route = _routed(scope["app"].router.routes, dict(scope))  # a copy: matching may note things in the scope
    return getattr(route, "path", None) or "unmatched"


def _routed(routes: list[BaseRoute], scope: Scope) -> BaseRoute | None:
    """The route the router would hand the request to: the first full match, else the first partial one (a 405)."""
    partial = None
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.NONE:
            continue
        included = getattr(route, "original_router", None)  # recent FastAPI keeps an included router as one route
        if included is not None:
            route = _routed(included.routes, scope)
        if match is Match.FULL:
            return route
        partial = partial or route
    return partial


async def _json_response(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
