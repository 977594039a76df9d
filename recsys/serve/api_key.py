"""Optional API key for the endpoints that write (/v1/feedback) or administer (DELETE /v1/users/...).
No Ray.

The key itself never appears in a Serve config: the `api_key_env` serve arg names an environment
variable, read on the Ingress replica (set it in the cluster's environment or a secret-backed
runtime_env). The storefront sends it as the X-API-Key header.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Mapping

from fastapi import HTTPException

API_KEY_HEADER = "X-API-Key"


class ApiKeyGuard:
    """Checks X-API-Key against the configured key; lets everything through when none is set."""

    def __init__(self, env_name: str | None, environ: Mapping[str, str] = os.environ):
        self.env_name = env_name
        self._key: bytes | None = None
        if env_name is not None:
            value = environ.get(env_name, "")
            if not value:
                # Asked for a key but none given: refuse to start rather than run open.
                raise ValueError(f"api_key_env={env_name!r} names an environment variable that is unset or "
                                 f"empty on this replica; set it, or drop api_key_env to run without a key")
            self._key = value.encode()

    @property
    def enabled(self) -> bool:
        return self._key is not None

    def check(self, presented: str | None) -> None:
        """Return if the key matches (or none is configured); else HTTP 401 saying what is wrong."""
        if self._key is None:
            return
        if not presented:
            raise HTTPException(status_code=401, headers={"WWW-Authenticate": API_KEY_HEADER},
                                detail=f"missing {API_KEY_HEADER} header: this endpoint needs the service's API key")
        # compare_digest: the time taken does not tell an attacker how much of the key matched.
        if not hmac.compare_digest(presented.encode(), self._key):
            raise HTTPException(status_code=401, headers={"WWW-Authenticate": API_KEY_HEADER},
                                detail=f"{API_KEY_HEADER} does not match the service's API key")


class ApiKeyFirstMiddleware:
    """Checks X-API-Key on the guarded routes before FastAPI reads the request body.

    The guarded endpoints also depend on the key (require_api_key), but FastAPI parses a JSON body
    before it solves any dependency: malformed JSON got 422 (describing the body) before 401. Here
    the key is checked first, so a caller without it learns nothing about the body either.
    `guarded(scope)`: whether the request goes to a route that needs the key; `guard()`: the
    replica's ApiKeyGuard (None before the replica is up: then the dependency still checks).
    """

    def __init__(self, app, guarded: Callable[[dict], bool], guard: Callable[[], ApiKeyGuard | None]):
        self.app = app
        self.guarded = guarded
        self.guard = guard

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and self.guarded(scope):
            guard = self.guard()
            if guard is not None:
                headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
                try:
                    guard.check(headers.get(API_KEY_HEADER.lower()))
                except HTTPException as exc:
                    from fastapi.responses import JSONResponse

                    await JSONResponse(status_code=exc.status_code, content={"detail": exc.detail},
                                       headers=exc.headers)(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def routes_depending_on(app, dependency: Callable) -> Callable[[dict], bool]:
    """A `guarded(scope)` for ApiKeyFirstMiddleware: the request matches a route of `app` that has
    `dependency` among its dependencies (looked up on first use, once every route is defined)."""
    from starlette.routing import Match

    found: list | None = None

    def guarded(scope: dict) -> bool:
        nonlocal found
        if found is None:
            found = [route for route in app.routes
                     if any(d.call is dependency
                            for d in getattr(getattr(route, "dependant", None), "dependencies", ()))]
        return any(route.matches(scope)[0] == Match.FULL for route in found)

    return guarded
