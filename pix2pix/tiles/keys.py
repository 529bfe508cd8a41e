"""Tile keys: which relative keys may be read or written, and the output key of an input tile."""

from __future__ import annotations

import posixpath
import re

OUTPUT_EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
MAX_KEY_BYTES = 1024  # the S3 limit

_ENCODED_PATH_CHARACTER = re.compile(r"%(2f|5c|2e|00)", re.IGNORECASE)
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")


class BadKey(ValueError):
    """A key that must not be read or written; the message is the recorded reason."""


def check_key(key: str) -> str:
    """Return the key if it is a safe relative key, else raise BadKey with the reason."""
    if not isinstance(key, str) or not key:
        raise BadKey("empty key")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise BadKey(f"key longer than {MAX_KEY_BYTES} bytes")
    if _CONTROL_CHARACTER.search(key):
        raise BadKey("key contains a NUL or control character")
    if "\\" in key:
        raise BadKey("key contains a backslash")
    if _ENCODED_PATH_CHARACTER.search(key):
        raise BadKey("key contains a URL-encoded separator, dot or NUL")
    if key.startswith("/"):
        raise BadKey("key is absolute")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise BadKey("key has an empty, '.' or '..' component")
        if part.startswith((".", "_")):
            raise BadKey("key has a hidden or reserved ('.' or '_' prefixed) component")
    return key


def output_key(key: str, image_format: str) -> str:
    """The output key: the same relative path with the format's extension."""
    directory, name = posixpath.split(key)
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return posixpath.join(directory, stem + OUTPUT_EXTENSIONS[image_format])
