"""HTTP error bodies of the ingress: every error is JSON a storefront developer can act on.

- 422 {"detail": [{"field", "message", "value"}, ...]}: bad requests, bad JSON included, and
  errors endpoint code raises with `request_error`;
- 401 / 404 / 503 {"detail": "<message>"}: FastAPI's HTTPException shape;
- 503 {"detail", "retry_after_s"} with a Retry-After header: load shed. A stage behind this one
  (Retriever, Ranker, Reranker) has max_queued_requests waiting already and Serve's handle
  refused the call (BackPressureError), or it has no running replica. When the Ingress itself is
  full, Serve's proxy answers 503 + Retry-After before this code runs;
- 503 + Retry-After too when a stage replica (or its node) died while it held the request;
- 500 {"detail": "internal error: <Type>"}: bugs, whose traceback goes to the replica log only.

Client errors that endpoint code finds after FastAPI's own validation are 422s too, not 500s: a request
model (schema.REQUEST_MODELS) rejecting a value when endpoint code builds it, and an id the user-state
store refuses (user_state.InvalidId, e.g. a blank user_id in a query string).
"""

# No `from __future__ import annotations`: FastAPI inspects the handlers' signatures.
import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from ray.exceptions import ActorUnavailableError, NodeDiedError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from recsys.schema import REQUEST_MODELS
from recsys.serve.user_state import InvalidId

logger = logging.getLogger("ray.serve")

_LOCATIONS = ("body", "query", "path", "header", "cookie")

_REQUEST_MODEL_NAMES = frozenset(model.__name__ for model in REQUEST_MODELS)

# A stage replica (or its node) died while it held this request: the request did nothing wrong and a retry
# goes to a live replica, so it is a 503 with Retry-After, not a 500 (issue 24).
STAGE_LOST = (RayActorError, ActorUnavailableError, NodeDiedError)

# Retry-After (seconds) when Serve gives no hint: long enough for a burst to drain or an
# autoscaled replica to start taking requests, short enough that a storefront retry still helps.
DEFAULT_RETRY_AFTER_S = 1


def json_safe(value: Any) -> Any:
    """`value` as something the JSON response can always encode: a non-finite float (NaN, Infinity, or
    1e400 parsed to inf) becomes its JSON spelling as a string, and a string holding a lone UTF-16
    surrogate ("\\ud800" in the request's JSON) gets it backslash-escaped. Either one in an error's echoed
    value made rendering the 422 fail, and the client saw a 500."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {json_safe(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def describe_request_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """FastAPI/pydantic errors -> [{"field", "message", "value"}] a storefront developer can read."""
    out = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ())]
        where = loc[1:] if loc and loc[0] in _LOCATIONS else loc
        field = ".".join(where) or (loc[0] if loc else "request")
        kind = err.get("type", "")
        message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        value = err.get("input")
        if kind == "json_invalid":
            field, value = "body", None
            message = (f"request body is not valid JSON: {err.get('ctx', {}).get('error', message)} "
                       f"at character {where[0] if where else '?'}")
        elif kind == "extra_forbidden":
            message = f"unknown field {field!r} is not accepted by this endpoint"
        elif kind == "missing":
            value = None   # the input of a missing field is the whole enclosing object
        try:
            value = json_safe(jsonable_encoder(value))
        except Exception:  # noqa: BLE001 - a value we cannot echo back is still an error to report
            value = json_safe(repr(value))
        out.append({"field": json_safe(field), "message": json_safe(message), "value": value})
    return out


def request_error(field: str, message: str, value: Any = None) -> RequestValidationError:
    """A 422 raised from endpoint code, reported like the schema's own validation errors."""
    return RequestValidationError([{"type": "value_error", "loc": ("body", field), "msg": message,
                                    "input": value}])


def client_error_response(errors: list[dict[str, Any]]) -> JSONResponse:
    """422 {"detail": [{"field", "message", "value"}, ...]}."""
    return JSONResponse(status_code=422, content={"detail": jsonable_encoder(errors)})


async def _on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return client_error_response(describe_request_errors(list(exc.errors())))


def error_response(scope: Scope, exc: Exception) -> JSONResponse:
    """The answer to an exception that escaped an endpoint: 503 for overload, 422 for a bad id or a
    request model built in endpoint code, else a 500 without the stack trace (which is logged)."""
    if isinstance(exc, (BackPressureError, DeploymentUnavailableError)):   # overload is not a bug: 503
        return overloaded_response(str(exc), getattr(exc, "retry_after_s", None))
    if isinstance(exc, STAGE_LOST):   # a stage replica died or its node went away mid-request: retryable
        return overloaded_response(f"a serving replica was lost mid-request ({type(exc).__name__}); "
                                   "a retry reaches a live one", DEFAULT_RETRY_AFTER_S)
    if isinstance(exc, InvalidId):
        return client_error_response([{"field": exc.field, "message": str(exc), "value": exc.value}])
    if isinstance(exc, ValidationError) and exc.title in _REQUEST_MODEL_NAMES:
        return client_error_response(describe_request_errors([dict(e) for e in exc.errors()]))
    # A response or stage model's ValidationError is our bug, like any other exception.
    logger.error("unhandled error on %s %s", scope.get("method"), scope.get("path"), exc_info=exc)
    return JSONResponse(status_code=500, content={"detail": f"internal error: {type(exc).__name__}"})


class HttpOnlyMiddleware:
    """A plain ASGI middleware that passes non-HTTP traffic (lifespan) through untouched and hands
    HTTP requests to `handle`. Plain ASGI, not Starlette's BaseHTTPMiddleware: with three of those
    the Ingress served 0.41x the in-process throughput on 2 cores, without them 0.52x
    (bench/serve_bench.py --quick): each costs a task group and streams per request."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class ErrorBoundaryMiddleware(HttpOnlyMiddleware):
    """Every exception an endpoint raises becomes an answer (error_response), and a plain-text 503
    becomes the JSON one with Retry-After.

    A middleware, not exception_handler(Exception): Starlette re-raises after such a handler runs,
    and the re-raised error would reach Serve's own error path.
    """

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False
        held: Headers | None = None   # the headers of a plain-text 503 being rewritten
        body: list[bytes] = []

        async def checked_send(message: Message) -> None:
            nonlocal started, held
            if message["type"] == "http.response.start":
                started = True
                headers = Headers(raw=message.get("headers", []))
                # Serve registers its own FastAPI handlers for BackPressureError /
                # DeploymentUnavailableError on the replica, so a shed call to a downstream stage
                # usually arrives as their plain-text 503, without Retry-After unless that stage
                # configured one. Our own 503s are JSON; any other 503 is such a shed request.
                if message["status"] == 503 and "json" not in headers.get("content-type", ""):
                    held = headers
                    return
            elif held is not None and message["type"] == "http.response.body":
                body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    hint = held.get("retry-after")
                    rewritten = overloaded_response(b"".join(body).decode(errors="replace").strip(),
                                                    float(hint) if hint else None)
                    await rewritten(scope, receive, send)
                return
            await send(message)

        try:
            await self.app(scope, receive, checked_send)
        except Exception as exc:  # the boundary where every bug becomes a 500
            if started:
                raise   # part of a response is on its way: nothing else can be said now
            await error_response(scope, exc)(scope, receive, send)


def overloaded_response(reason: str, retry_after_hint: float | None = None, log: bool = True) -> JSONResponse:
    """503 + Retry-After for a request this replica or a downstream stage shed; the client may resend it as
    is. `log` False for callers that may shed many requests a second and count them instead."""
    retry_after = max(1, math.ceil(retry_after_hint)) if retry_after_hint is not None else DEFAULT_RETRY_AFTER_S
    if log:
        logger.warning("shed a request: %s", reason)
    return JSONResponse(status_code=503, headers={"Retry-After": str(retry_after)},
                        content={"detail": f"service overloaded, retry after {retry_after}s: {reason}",
                                 "retry_after_s": retry_after})


def install_error_handlers(app: FastAPI) -> None:
    """422 bodies naming field and value; a 500 without a stack trace for anything unhandled."""
    app.add_exception_handler(RequestValidationError, _on_validation_error)  # type: ignore[arg-type]
    app.add_middleware(ErrorBoundaryMiddleware)
