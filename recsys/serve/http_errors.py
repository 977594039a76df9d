"""HTTP error bodies of the ingress: every error is JSON a storefront developer can act on.

- 422 {"detail": [{"field", "message", "value"}, ...]}: bad requests, bad JSON included, and
  errors endpoint code raises with `request_error`;
- 401 / 404 / 503 {"detail": "<message>"}: FastAPI's HTTPException shape;
- 503 {"detail", "retry_after_s"} with a Retry-After header: load shed. A stage behind this one
  (Retriever, Ranker, Reranker) has max_queued_requests waiting already and Serve's handle
  refused the call (BackPressureError), or it has no running replica. When the Ingress itself is
  full, Serve's proxy answers 503 + Retry-After before this code runs;
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
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from recsys.schema import REQUEST_MODELS
from recsys.serve.user_state import InvalidId

logger = logging.getLogger("ray.serve")

_LOCATIONS = ("body", "query", "path", "header", "cookie")

_REQUEST_MODEL_NAMES = frozenset(model.__name__ for model in REQUEST_MODELS)

# Retry-After (seconds) when Serve gives no hint: long enough for a burst to drain or an
# autoscaled replica to start taking requests, short enough that a storefront retry still helps.
DEFAULT_RETRY_AFTER_S = 1


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
            value = jsonable_encoder(value)
        except Exception:  # noqa: BLE001 - a value we cannot echo back is still an error to report
            value = repr(value)
        out.append({"field": field, "message": message, "value": value})
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


async def _on_unexpected_error(request: Request, call_next):  # type: ignore[no-untyped-def]
    # A middleware, not exception_handler(Exception): Starlette re-raises after such a handler
    # runs, and the re-raised error would reach Serve's own error path.
    try:
        response = await call_next(request)
    except (BackPressureError, DeploymentUnavailableError) as exc:   # overload is not a bug: 503
        return overloaded_response(str(exc), getattr(exc, "retry_after_s", None))
    except InvalidId as exc:
        return client_error_response([{"field": exc.field, "message": str(exc), "value": exc.value}])
    except ValidationError as exc:
        if exc.title not in _REQUEST_MODEL_NAMES:   # a response or stage model: our bug
            return _internal_error(request, exc)
        return client_error_response(describe_request_errors([dict(e) for e in exc.errors()]))
    except Exception as exc:  # the boundary where every bug becomes a 500
        return _internal_error(request, exc)
    # Serve registers its own FastAPI handlers for BackPressureError / DeploymentUnavailableError on
    # the replica (ray/serve/_private/replica.py), so a shed call to a downstream stage usually
    # arrives here as their plain-text 503, without Retry-After unless that stage configured one.
    # Our own 503s are JSON; any other 503 is such a shed request and is rewritten.
    if response.status_code == 503 and "json" not in response.headers.get("content-type", ""):
        body = b"".join([chunk async for chunk in response.body_iterator])  # type: ignore[attr-defined]
        hint = response.headers.get("retry-after")
        return overloaded_response(body.decode(errors="replace").strip(), float(hint) if hint else None)
    return response


def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(status_code=500, content={"detail": f"internal error: {type(exc).__name__}"})


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
    app.middleware("http")(_on_unexpected_error)
