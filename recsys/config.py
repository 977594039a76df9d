"""Typed job configs: one pydantic model per job, loaded from YAML plus `--set a.b=c` overrides.

Every job validates its config before `ray.init`, logs it in full and sends it to Ray
workers as a plain dict (`model_dump()`), never through globals.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

C = TypeVar("C", bound="JobConfig")


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the field and value."""


class JobConfig(BaseModel):
    """Base of every job config: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def recsys_home() -> Path:
    """Root of everything the jobs write. `RECSYS_HOME` wins; on a multi-node cluster
    point it at storage all nodes see (NFS, a mounted bucket)."""
    return Path(os.environ.get("RECSYS_HOME", Path.home() / ".recsys")).expanduser().resolve()


def _parse_scalar(text: str) -> Any:
    # YAML scalars give the same typing a user sees in the config file: 3 -> int, true -> bool.
    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=c` overrides to a nested dict (a copy); values are parsed as YAML scalars."""
    result = json.loads(json.dumps(raw))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = result
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = _parse_scalar(value)
    return result


M = TypeVar("M", bound=BaseModel)


def describe_validation_error(what: str, exc: ValidationError, allowed: list[str] | None = None) -> str:
    """A pydantic error as one clause per problem, naming the field and the value given."""
    problems = []
    for err in exc.errors():
        field = ".".join(str(x) for x in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            hint = f"; allowed: {allowed}" if allowed and len(err["loc"]) == 1 else ""
            problems.append(f"{what}: unknown field {field!r} (value {err.get('input')!r}){hint}")
        else:
            problems.append(f"{what}: {field}={err.get('input')!r}: {err['msg']}")
    return "; ".join(problems)


def validate_mapping(cls: type[M], raw: Any, what: str, error: type[ValueError] = ValueError) -> M:
    """Validate a plain mapping (YAML block, Serve args, user_config) into `cls`, or raise
    `error` whose message names every bad field and value."""
    if raw is not None and not isinstance(raw, dict):
        raise error(f"{what} must be a mapping, got {type(raw).__name__}: {raw!r}")
    try:
        return cls.model_validate(raw or {})
    except ValidationError as exc:
        raise error(describe_validation_error(what, exc, sorted(cls.model_fields))) from None


def load_config(cls: type[C], path: str | Path | None, overrides: list[str] | None = None) -> C:
    """Read YAML (or defaults when no path), apply overrides, validate into `cls`."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping, got {type(loaded).__name__}")
        raw = loaded
    return validate_mapping(cls, apply_overrides(raw, overrides or []), f"invalid {cls.__name__}", ConfigError)


def parse_job_args(cls: type[C], description: str, argv: list[str] | None = None) -> C:
    """The command line every job shares: --config FILE and repeated --set key=value
    (plus --resume [VERSION] where the config has a `resume` field)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config file (defaults apply when omitted)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one field, e.g. --set max_steps=50 (repeatable)")
    if "resume" in cls.model_fields:   # jobs whose config can continue a stopped run (train)
        parser.add_argument("--resume", nargs="?", const="latest", metavar="VERSION",
                            help="continue a stopped run: the latest one, or the given model version")
    args = parser.parse_args(argv)
    overrides = list(args.overrides)
    if getattr(args, "resume", None) is not None:
        overrides.append(f"resume={json.dumps(args.resume)}")   # quoted: a version is always a string
    try:
        return load_config(cls, args.config, overrides)
    except ConfigError as exc:
        parser.exit(2, f"error: {exc}\n")
