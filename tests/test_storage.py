import os

import pyarrow.fs as pafs
import pytest

from pix2pix import storage


def test_local_paths_and_file_uris(tmp_path):
    plain = storage.resolve(str(tmp_path))
    assert isinstance(plain.filesystem, pafs.LocalFileSystem) and plain.path == str(tmp_path)
    assert storage.resolve(f"file://{tmp_path}").path == str(tmp_path)
    relative = storage.resolve("some/dir")
    assert relative.path == os.path.abspath("some/dir")


@pytest.mark.parametrize("uri", ["gs://bucket/x", "hdfs://nn/x", "ftp://host/x", "http://host/x"])
def test_unknown_scheme_is_rejected_clearly(uri):
    with pytest.raises(storage.StorageError, match="unsupported URI scheme"):
        storage.resolve(uri)


def test_s3_uri_without_bucket_is_rejected():
    with pytest.raises(storage.StorageError, match="bucket"):
        storage.resolve("s3:///prefix")


def test_atomic_local_write_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "a" / "b" / "tile.png"
    storage.write_bytes(pafs.LocalFileSystem(), str(target), b"first")
    storage.write_bytes(pafs.LocalFileSystem(), str(target), b"second")
    assert target.read_bytes() == b"second"
    assert os.listdir(target.parent) == ["tile.png"]


def test_list_files_skips_hidden_and_bookkeeping(tmp_path):
    for name in ["a/1.jpg", "a/2.PNG", "_failures/x.parquet", ".tmp/y.jpg", "a/.z.jpg.tmp", "b.txt"]:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    found = sorted(os.path.relpath(p, tmp_path) for p in storage.list_files(storage.resolve(str(tmp_path))))
    assert found == ["a/1.jpg", "a/2.PNG", "b.txt"]
    images = sorted(storage.list_files(storage.resolve(str(tmp_path)), (".jpg", ".png")))
    assert len(images) == 2


def test_s3_round_trip_through_aws_environment(s3_bucket):
    location = storage.resolve(f"s3://{s3_bucket}/prefix")
    assert isinstance(location.filesystem, pafs.S3FileSystem)
    storage.write_text(location.join("dir", "hello.txt"), "hello")
    assert storage.read_text(location.join("dir", "hello.txt")) == "hello"
    assert storage.exists(location.join("dir", "hello.txt"))
    assert [p.rsplit("/", 1)[-1] for p in storage.list_files(location)] == ["hello.txt"]


def test_redact_removes_secrets(s3_endpoint):
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    assert secret not in storage.redact(f"failed with key {secret}!")


def _requests_on(proxy, key_path: str) -> list[tuple[str, str]]:
    return [(method, query) for method, path, query in proxy.stats.log if path == key_path]


def test_a_tile_is_one_put_object_request(s3_bucket, s3_endpoint, monkeypatch):
    """Every request on the tile's key, PUT and POST alike: a multipart upload would show as
    POST ?uploads, PUT ?partNumber&uploadId, POST ?uploadId."""
    from tests.reliability.fault_proxy import FaultProxy

    with FaultProxy(s3_endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        location = storage.resolve(f"s3://{s3_bucket}/maps/17/1/2.png")
        storage.write_bytes(location.filesystem, location.path, b"\x89PNG" + os.urandom(40_000))
        requests = _requests_on(proxy, f"/{s3_bucket}/maps/17/1/2.png")
    assert requests == [("PUT", "")]


def test_a_large_file_still_arrives_whole(s3_bucket):
    data = os.urandom(12 * 2**20)  # over the stream's part size: a multipart upload
    location = storage.resolve(f"s3://{s3_bucket}/runs/weights.bin")
    storage.write_bytes(location.filesystem, location.path, data)
    assert storage.read_bytes(location.filesystem, location.path) == data


def test_a_write_to_a_missing_bucket_fails_in_the_write_call(s3_endpoint):
    """With delayed opens the error comes at close: still inside write_bytes, still an OSError."""
    location = storage.resolve("s3://no-such-bucket-pix2pix/maps/1.png")
    with pytest.raises(OSError, match="NO_SUCH_BUCKET|does not exist"):
        storage.write_bytes(location.filesystem, location.path, b"x")


@pytest.mark.parametrize("uri", ["s3://AKIAEXAMPLE:se%2Bcr%2Fet@bucket/data", "s3://only-a-key@bucket", "s3://:x@b/p"])
def test_credentials_inside_a_uri_are_refused_without_being_echoed(uri):
    with pytest.raises(storage.StorageError) as raised:
        storage.resolve(uri)
    message = str(raised.value)
    assert "must not hold credentials" in message
    assert not any(part in message for part in ("AKIAEXAMPLE", "se%2Bcr", "only-a-key", ":x@"))


def test_every_form_of_a_secret_is_redacted(monkeypatch):
    from urllib.parse import quote, quote_plus

    secret = "wJalr/XUtnFEMI+K7MDENG/bPxRfiCYEXAMPLEKEY"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "ray-token-0123456789")
    for form in (secret, quote(secret, safe=""), quote(secret), quote_plus(secret)):
        line = storage.redact(f"error: s3://b/{form}/x failed")
        assert line == "error: s3://b/<AWS_SECRET_ACCESS_KEY>/x failed", form
    assert "ray-token" not in storage.redact("Authorization: Bearer ray-token-0123456789")


def test_the_closing_summary_is_redacted(monkeypatch, capsys):
    from pix2pix import cli

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t/with+signs")
    cli.print_summary({"output": "s3://b/s3cr3t%2Fwith%2Bsigns"})
    assert capsys.readouterr().out.strip() == '{"output": "s3://b/<AWS_SECRET_ACCESS_KEY>"}'
