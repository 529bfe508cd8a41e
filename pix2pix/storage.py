"""URIs -> pyarrow filesystems, and the few file operations every job needs.

A URI is a plain local path, ``file:///abs/path`` or ``s3://bucket/prefix``. S3 endpoint,
region and credentials come from the standard AWS environment (AWS_ENDPOINT_URL[_S3],
AWS_REGION / AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN)
or the instance role. Every job passes the filesystem returned here explicitly.
"""

from __future__ import annotations

import contextlib
import copyreg
import json
import os
import posixpath
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote, quote_plus, urlparse

import pyarrow as pa
import pyarrow.fs as pafs

from pix2pix.errors import JobError

_SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "RAY_AUTH_TOKEN")
DEFAULT_MAX_ATTEMPTS = 10
# Transient failures the AWS SDK reports as non-retryable: a 5xx/SlowDown answer to a GetObject
# whose error body (a few hundred bytes of XML) does not fit the buffer pyarrow sized for the
# object; every read of a small object (a JSON file, a flat-colour tile) fails on the first
# throttled answer without this.
_UNRETRIED_TRANSIENT = ("Failed to flush response stream",)


class StorageError(JobError):
    """A URI that cannot be used: unknown scheme, missing bucket, bad settings."""


class StorageIOError(StorageError, OSError):
    """An operation on a store failed: denied, unreachable, full. Also an OSError with the
    original's errno and message, so code that records a failed tile and goes on keeps doing so."""


class NotInStorage(StorageIOError, FileNotFoundError):
    """Nothing at that path."""


@contextlib.contextmanager
def store_errors() -> Iterator[None]:
    """The storage boundary: an OSError raised inside (by pyarrow, the OS or the AWS SDK)
    leaves as a StorageIOError, which a job reports in one line."""
    try:
        yield
    except StorageError:
        raise
    except pa.ArrowInvalid as error:  # a path the filesystem cannot take
        raise StorageError(str(error)) from None
    except OSError as error:
        kind = NotInStorage if isinstance(error, FileNotFoundError) else StorageIOError
        if error.errno is None:  # pyarrow's: a message only
            raise kind(*error.args) from error
        raise kind(error.errno, error.strerror, *([error.filename] if error.filename else [])) from error


@dataclass(frozen=True)
class Location:
    """A filesystem plus a path inside it; ``uri`` keeps the user's spelling for messages."""

    filesystem: pafs.FileSystem
    path: str
    uri: str

    def join(self, *parts: str) -> Location:
        path = posixpath.join(self.path, *parts)
        uri = self.uri.rstrip("/") + "/" + "/".join(parts)
        return Location(self.filesystem, path, uri)

    @property
    def is_local(self) -> bool:
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    def uri_of(self, path: str) -> str:
        """A URI for another path on the same filesystem (e.g. one Ray Train returns)."""
        return path if self.is_local else f"s3://{path.lstrip('/')}"


def resolve(uri: str) -> Location:
    """Parse a URI into a Location. Raises StorageError with one readable line."""
    if not uri:
        raise StorageError("empty storage URI")
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme == "" or (len(scheme) == 1 and os.name == "nt"):
        return Location(pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri)), uri)
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise StorageError(f"file URI must be file:///absolute/path, got {uri!r}")
        return Location(pafs.LocalFileSystem(), os.path.abspath(parsed.path), uri)
    if scheme == "s3":
        if "@" in parsed.netloc:  # never echoed: what stands before the @ is a secret
            raise StorageError("an S3 URI must not hold credentials (s3://KEY:SECRET@bucket/...): "
                               "give them in the AWS environment or an instance role")
        if not parsed.netloc:
            raise StorageError(f"S3 URI needs a bucket: s3://bucket/prefix, got {uri!r}")
        path = (parsed.netloc + "/" + parsed.path.lstrip("/")).rstrip("/")
        return Location(s3_filesystem(), path, uri)
    raise StorageError(
        f"unsupported URI scheme {parsed.scheme!r} in {uri!r}: use a local path, file:// or s3://"
    )


def s3_filesystem() -> pafs.S3FileSystem:
    """An S3FileSystem configured from the AWS environment, with retries and backoff.

    A bare ``S3FileSystem()`` ignores AWS_ENDPOINT_URL (``FileSystem.from_uri`` reads it),
    so the endpoint is read here, for S3-compatible stores and test servers alike.
    """
    options: dict = {
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=max_attempts()),
        "connect_timeout": 10,
        "request_timeout": 60,
        # A stream opened for writing sends nothing until its first part is full or it is closed:
        # a small object (a tile, a config) is then one PutObject instead of three requests of a
        # multipart upload. Errors of the open (no bucket, denied) come at close instead, which
        # every writer here already handles (a stream is written and closed in one call).
        "allow_delayed_open": True,
    }
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else "https://" + endpoint)
        options["endpoint_override"] = parsed.netloc
        options["scheme"] = parsed.scheme or "https"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["region"] = region
    elif endpoint:
        options["region"] = "us-east-1"  # custom endpoints rarely answer region look-ups
    return pafs.S3FileSystem(**options)


def gdal_settings() -> dict[str, str]:
    """The AWS environment as GDAL's own configuration options, for ``rasterio.Env(**...)``:
    GDAL reads rasters on S3 by range requests but ignores AWS_ENDPOINT_URL, takes the endpoint
    as a bare host, and needs path-style addressing on S3-compatible servers. Credentials are
    not copied: GDAL reads AWS_ACCESS_KEY_ID and friends from the environment itself."""
    settings = {
        "GDAL_HTTP_MAX_RETRY": str(max_attempts() - 1),
        "GDAL_HTTP_RETRY_DELAY": "0.5",
        "GDAL_HTTP_CONNECTTIMEOUT": "10",
        "GDAL_HTTP_TIMEOUT": "60",
        # Opening s3://bucket/scene.tif would otherwise list the whole prefix, looking for sidecars.
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    }
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else "https://" + endpoint)
        settings["AWS_S3_ENDPOINT"] = parsed.netloc
        settings["AWS_HTTPS"] = "NO" if parsed.scheme == "http" else "YES"
        settings["AWS_VIRTUAL_HOSTING"] = "FALSE"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region or endpoint:
        settings["AWS_REGION"] = region or "us-east-1"
    return settings


def max_attempts() -> int:
    """The S3 retry budget: AWS_MAX_ATTEMPTS (the standard AWS variable), else 10."""
    value = os.environ.get("AWS_MAX_ATTEMPTS", "").strip()
    if not value:
        return DEFAULT_MAX_ATTEMPTS
    try:
        return max(1, int(value))
    except ValueError:
        raise StorageError(f"AWS_MAX_ATTEMPTS must be a whole number, got {value!r}") from None


def _rebuild_s3(options: dict, attempts: int) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(**options, retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=attempts))


def _reduce_s3(filesystem: pafs.S3FileSystem):
    """Pickle an S3FileSystem with its retry budget: pyarrow's own pickling drops the retry
    strategy, so every Ray worker that received a filesystem fell back to 3 attempts."""
    rebuild, (options,) = filesystem.__reduce__()
    return _rebuild_s3, (options, max_attempts())


copyreg.pickle(pafs.S3FileSystem, _reduce_s3)  # honoured by pickle and by Ray's cloudpickle


def redact(text: str) -> str:
    """Remove credential values found in the environment from a message, in every form a
    message can carry them: as written, percent-encoded (an AWS secret holds '/' and '+'),
    form-encoded and JSON-escaped."""
    for name in _SECRET_VARIABLES:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            for form in _written_forms(value):
                text = text.replace(form, f"<{name}>")
    return text


def _written_forms(value: str) -> list[str]:
    forms = {value, quote(value, safe=""), quote(value, safe="/"), quote_plus(value), json.dumps(value)[1:-1]}
    return sorted(forms, key=len, reverse=True)  # longest first: no form is left half replaced


@store_errors()
def file_info(filesystem: pafs.FileSystem, paths):
    """pyarrow's get_file_info (a path, a list of paths or a FileSelector) at the boundary."""
    return filesystem.get_file_info(paths)


def exists(location: Location) -> bool:
    return file_info(location.filesystem, location.path).type != pafs.FileType.NotFound


def is_dir(location: Location) -> bool:
    return file_info(location.filesystem, location.path).type == pafs.FileType.Directory


def list_files(location: Location, suffixes: tuple[str, ...] = ()) -> Iterator[str]:
    """Yield paths of files under a directory, recursively, in listing order.

    Hidden names (``.x``) and underscore-prefixed bookkeeping (``_failures/``) are skipped.
    """
    selector = pafs.FileSelector(location.path, recursive=True, allow_not_found=True)
    for info in file_info(location.filesystem, selector):
        if info.type != pafs.FileType.File:
            continue
        relative = posixpath.relpath(info.path, location.path)
        if any(part.startswith((".", "_")) for part in relative.split("/")):
            continue
        if suffixes and not info.path.lower().endswith(suffixes):
            continue
        yield info.path


@store_errors()
def read_bytes(filesystem: pafs.FileSystem, path: str) -> bytes:
    """A whole file. Retries, with backoff, the transient S3 failures the SDK does not retry."""

    def read() -> bytes:
        with filesystem.open_input_stream(path) as stream:
            return stream.read()

    return _retrying(read)


@store_errors()
def read_range(filesystem: pafs.FileSystem, path: str, offset: int, length: int) -> bytes:
    """``length`` bytes from ``offset`` (fewer at the end of the file), retried like read_bytes."""

    def read() -> bytes:
        with filesystem.open_input_file(path) as handle:
            return handle.read_at(length, offset)

    return _retrying(read)


def _retrying(read):
    attempt = 1
    while True:
        try:
            return read()
        except OSError as error:
            if attempt >= max_attempts() or not any(text in str(error) for text in _UNRETRIED_TRANSIENT):
                raise
        time.sleep(min(5.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.0))
        attempt += 1


@store_errors()
def write_bytes(filesystem: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write a file so that no partial file is ever visible.

    Local: write a temporary sibling, then rename over the target. S3: the object appears whole
    when its upload completes: one PutObject request for anything smaller than the stream's
    part size (tiles, configs), a multipart upload for larger files (weights, states).
    """
    parent = posixpath.dirname(path)
    if isinstance(filesystem, pafs.LocalFileSystem):
        os.makedirs(parent, exist_ok=True)
        # The name's start only: a 255-byte name (the most a local filesystem allows) must
        # still get a temporary sibling.
        temporary = posixpath.join(parent, f".{posixpath.basename(path)[:64]}.{uuid.uuid4().hex}.tmp")
        try:
            with open(temporary, "wb") as handle:
                handle.write(data)
            os.replace(temporary, path)
        except BaseException:
            if os.path.exists(temporary):
                os.remove(temporary)
            raise
        return
    with filesystem.open_output_stream(path) as stream:
        stream.write(data)


def read_text(location: Location) -> str:
    return read_bytes(location.filesystem, location.path).decode("utf-8")


def write_text(location: Location, text: str) -> None:
    write_bytes(location.filesystem, location.path, text.encode("utf-8"))

