"""HTTP error bodies of the ingress: every error is JSON a storefront developer can act on.

- 422 {"detail": [{"field", "message", "value"}, ...]}: bad requests, bad JSON included, and
  errors endpoint code raises with `request_error`;
- 401 / 404 / 503 {"detail": "<message>"}: FastAPI's HTTPException shape;
- 500 {"detail": "internal error: <Type>"}: bugs, whose traceback goes to the replica log only.
"""

# No `from __future__ import annotations`: FastAPI inspects the handlers' signatures.
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

logger = logging.getLogger("ray.serve")

_LOCATIONS = ("body", "query", "path", "header", "cookie")


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


async def _on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse(status_code=422, content={"detail": describe_request_errors(list(exc.errors()))})


async def _on_unexpected_error(request: Request, call_next):  # type: ignore[no-untyped-def]
    # A middleware, not exception_handler(Exception): Starlette re-raises after such a handler
    # runs, and the re-raised error would reach Serve's own error path.
    try:
        return await call_next(request)
    except Exception as exc:  # the boundary where every bug becomes a 500
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(status_code=500, content={"detail": f"internal error: {type(exc).__name__}"})


def install_error_handlers(app: FastAPI) -> None:
    """422 bodies naming field and value; a 500 without a stack trace for anything unhandled."""
    app.add_exception_handler(RequestValidationError, _on_validation_error)  # type: ignore[arg-type]
    app.middleware("http")(_on_unexpected_error)
