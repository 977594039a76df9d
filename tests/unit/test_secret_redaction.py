"""Credentials in a Redis URL never reach a log line, an error message or /readyz (issue 24: a
`?password=` query parameter and an inline redis_url at build time appeared in clear)."""

from __future__ import annotations

import logging

import pytest

from recsys.serve.app import loggable_args, parse_serve_args
from recsys.serve.user_state import UserStoreUnavailable
from recsys.serve.user_state_redis import RedisUserStore, redact_url


@pytest.mark.parametrize(("url", "redacted"), [
    ("redis://host:6379/0?password=hunter2", "redis://host:6379/0?password=***"),
    ("redis://user:hunter2@host:6379/0", "redis://user:***@host:6379/0"),
    ("redis://:hunter2@host/0?db=1&Token=hunter2", "redis://:***@host/0?db=1&Token=***"),
    ("rediss://host/0?ssl_cert_reqs=none&password=a%26hunter2", "rediss://host/0?ssl_cert_reqs=none&password=***"),
    ("redis://host:6379/0", "redis://host:6379/0"),
])
def test_redact_url_hides_every_credential(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted and "hunter2" not in redact_url(url)


def test_an_unreachable_store_names_its_url_without_the_password() -> None:
    store = RedisUserStore("redis://127.0.0.1:1/0?password=hunter2", timeout_s=0.2)   # nothing listens on port 1
    with pytest.raises(UserStoreUnavailable) as caught:
        store.ping()
    assert "127.0.0.1:1" in str(caught.value) and "hunter2" not in str(caught.value)
    assert "hunter2" not in store.url


def test_the_build_log_redacts_an_inline_redis_url(caplog) -> None:
    cfg = parse_serve_args({"user_state": {"backend": "redis", "redis_url": "redis://u:hunter2@cache:6379/0"}})
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("%s", loggable_args(cfg))
    assert "cache:6379" in caplog.text and "hunter2" not in caplog.text
    assert cfg.user_state.redis_url == "redis://u:hunter2@cache:6379/0", "the config itself keeps the real URL"
