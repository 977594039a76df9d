"""Where input files live: local paths, file:// URIs and any URI pyarrow.fs understands (s3://, gs://, ...).

Paths handed out by `list_files` can be opened again with `open_input_file` in another process: local
files as absolute paths, remote ones as `scheme://authority/percent-encoded/path`. URI query options
(`?region=...`) are not supported, because `?` is a glob character here and because such options may
hold credentials that would end up in `_source` columns: configure remote filesystems through their
usual environment variables instead.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from fnmatch import fnmatchcase
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote, unquote, urlsplit

import pyarrow.fs as pafs

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_GLOB = re.compile(r"[*?\[]")
# Characters a path may keep in a URI unescaped; everything else (space, %, ?, #, non-ASCII) is
# percent-encoded so that from_uri, which decodes, gets back exactly the original name.
_URI_SAFE = "/:@!$&'()*+,;="
# Spark/Hive write a null partition value as this directory name.
_HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"


class SourceError(ValueError):
    """An input path or format the pipeline cannot read at all."""


class _Place(NamedTuple):
    fs: pafs.FileSystem
    path: str                # inside fs
    root: str | None         # "scheme://authority" to turn fs paths back into URIs; None for local files
    root_path: str           # the fs path that `root` stands for


@functools.lru_cache(maxsize=64)
def _root_filesystem(root: str) -> tuple[pafs.FileSystem, str]:
    # One filesystem per scheme://authority and process: from_uri may cost network round trips
    # (the S3 region lookup), and read units of one bucket are opened thousands of times.
    fs, root_path = pafs.FileSystem.from_uri(root + "/")
    return fs, root_path.rstrip("/")


def _locate(path: str | Path) -> _Place:
    text = str(path)
    if not _URI.match(text):
        return _Place(pafs.LocalFileSystem(), str(Path(text).expanduser().resolve()), None, "")
    parts = urlsplit(text)
    netloc = "" if parts.scheme == "file" and parts.netloc == "localhost" else parts.netloc
    root = f"{parts.scheme}://{netloc}"
    try:
        fs, root_path = _root_filesystem(root)
    except (ValueError, OSError) as exc:   # pyarrow.ArrowInvalid is a ValueError
        raise SourceError(f"cannot open {text!r}: {exc}") from exc
    inner = (root_path + "/" + unquote(parts.path).lstrip("/")).rstrip("/") or "/"
    if isinstance(fs, pafs.LocalFileSystem):
        return _Place(fs, inner, None, "")
    return _Place(fs, inner, root, root_path)


def _output(place: _Place, fs_path: str) -> str:
    if place.root is None:
        return fs_path
    return place.root + "/" + quote(fs_path[len(place.root_path):].lstrip("/"), safe=_URI_SAFE)


def open_input_file(path: str | Path) -> tuple[pafs.FileSystem, str]:
    """A path or URI (as given by `list_files`) -> (filesystem, path inside it)."""
    place = _locate(path)
    return place.fs, place.path


def read_input_bytes(path: str | Path) -> bytes:
    fs, inner = open_input_file(path)
    try:
        # compression=None: pyarrow would otherwise guess a codec from the file name.
        with fs.open_input_stream(inner, compression=None) as stream:
            return stream.read()
    except OSError as exc:
        raise SourceError(f"cannot read {str(path)!r}: {exc}") from exc


def _glob_match(parts: list[str], pattern: list[str]) -> bool:
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_glob_match(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatchcase(parts[0], pattern[0]) and _glob_match(parts[1:], pattern[1:])


def list_files(path: str | Path, extensions: Iterable[str]) -> list[str]:
    """A file, a directory (recursively) or a glob (`*`, `?`, `[..]`, `**`) -> sorted openable paths.

    Inside directories and globs only names with one of `extensions` count, and anything under a name
    starting with `.` or `_` is skipped (`_SUCCESS`, `.part-0.crc`, `_temporary/`, `_metadata`). A glob
    that matches a directory takes the files below it. A file named directly is always returned.
    """
    text, extensions = str(path), {e.lower() for e in extensions}
    segments = text.split("/")
    first_glob = next((i for i, s in enumerate(segments) if _GLOB.search(s)), None)
    base_text, pattern = text, []
    if first_glob is not None:
        base_text = "/".join(segments[:first_glob]) or ("/" if text.startswith("/") else ".")
        is_uri = bool(_URI.match(text))
        pattern = [unquote(s) if is_uri else s for s in segments[first_glob:] if s]
    place = _locate(base_text)
    try:
        kind = pafs.FileType.Directory if pattern else place.fs.get_file_info(place.path).type
        if kind == pafs.FileType.File:
            return [_output(place, place.path)]
        infos = []
        if kind == pafs.FileType.Directory:
            infos = place.fs.get_file_info(pafs.FileSelector(place.path, recursive=True, allow_not_found=True))
    except OSError as exc:
        raise SourceError(f"cannot list {text!r}: {exc}") from exc
    found = []
    for info in infos:
        rel = info.path[len(place.path):].strip("/").split("/")
        if (info.type != pafs.FileType.File or any(p.startswith((".", "_")) for p in rel)
                or Path(rel[-1]).suffix.lower() not in extensions):
            continue
        if not pattern or any(_glob_match(rel[:k], pattern) for k in range(1, len(rel) + 1)):
            found.append(_output(place, info.path))
    if not found:
        raise SourceError(f"no input files found at {text!r} (looking for {', '.join(sorted(extensions))} files; "
                          "names starting with '.' or '_' are skipped)")
    return sorted(found)


def hive_partition(path: str) -> tuple[tuple[str, str], ...]:
    """`.../event_type=view/part-0.parquet` -> (("event_type", "view"),), from the directory names only."""
    inner = unquote(urlsplit(path).path) if _URI.match(path) else path
    keys: dict[str, str] = {}
    for segment in inner.split("/")[:-1]:
        key, sep, value = segment.partition("=")
        if sep and key:
            keys.pop(key, None)   # the innermost directory wins
            if value != _HIVE_NULL:
                keys[key] = unquote(value)
    return tuple(keys.items())
