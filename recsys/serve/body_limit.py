"""A limit on request body size: 413 before a replica buffers and parses an arbitrarily large body.

The largest request the API means to take is a full /v1/feedback batch (MAX_FEEDBACK_EVENTS events
of ids up to 200 characters: well under 1 MiB). Starlette and FastAPI read any body whole before
validation, so without a limit one client can make a replica hold and parse hundreds of megabytes.
A Content-Length over the limit is refused at once; a chunked body is counted as it arrives.
"""

from __future__ import annotations

from fastapi import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY_BYTES = 1 << 20


def too_large_message(limit: int, size: int | None) -> str:
    told = f"{size} bytes" if size is not None else "more bytes than that"
    return f"request body of {told} is over this service's limit of {limit} bytes"


class BodyTooLarge(HTTPException):
    """Raised from `receive` once a chunked body passes the limit. An HTTPException, because FastAPI turns
    any other error while reading the body into 400 "There was an error parsing the body"."""

    def __init__(self, limit: int):
        super().__init__(status_code=413, detail=too_large_message(limit, None))


def too_large_response(limit: int, size: int | None) -> JSONResponse:
    return JSONResponse(status_code=413, content={"detail": too_large_message(limit, size)})


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await too_large_response(self.max_bytes, int(length))(scope, receive, send)
            return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:
            if started:
                raise
            await too_large_response(self.max_bytes, None)(scope, receive, send)
