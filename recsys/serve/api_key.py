"""Optional API key for the endpoints that write (/v1/feedback) or administer (DELETE /v1/users/...).
No Ray.

The key itself never appears in a Serve config: the `api_key_env` serve arg names an environment
variable, read on the Ingress replica (set it in the cluster's environment or a secret-backed
runtime_env). The storefront sends it as the X-API-Key header.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping

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
