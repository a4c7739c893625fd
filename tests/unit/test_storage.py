"""Object storage: the filesystem (embedded default) and S3 (scale-out) meet one
contract. S3 is moto's real HTTP server on loopback (tests/s3.py), spoken to through boto3."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from app.storage import ObjectNotFound, get_storage, image_key
from app.storage.filesystem import FilesystemStorage
from app.storage.s3 import S3Storage

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4  # binary, with NULs and high bytes
KEY = image_key(7, "0b5d3a6e-1f1e-4c43-9b1e-2d0c9a1f3e77", 0)


@pytest.fixture(params=["filesystem", "s3"])
def storage(request, tmp_path):
    if request.param == "filesystem":
        return FilesystemStorage(tmp_path / "objects")
    endpoint = request.getfixturevalue("s3_endpoint")
    return S3Storage(bucket=request.getfixturevalue("bucket"), endpoint_url=endpoint, region="us-east-1")


# The contract, for both backends


def test_an_object_put_can_be_read_back_byte_for_byte(storage):
    assert not storage.exists(KEY)
    storage.put(KEY, PNG, "image/png")
    assert storage.exists(KEY)
    assert storage.get(KEY) == PNG


def test_putting_again_replaces_the_object(storage):
    storage.put(KEY, b"first", "image/png")
    storage.put(KEY, b"second", "image/png")
    assert storage.get(KEY) == b"second"


def test_keys_are_independent(storage):
    first, second = image_key(1, "job", 0), image_key(1, "job", 1)
    storage.put(first, b"one", "image/png")
    storage.put(second, b"two", "image/png")
    storage.delete(first)
    assert not storage.exists(first)
    assert storage.get(second) == b"two"


def test_an_empty_object_is_still_an_object(storage):
    storage.put(KEY, b"", "image/png")
    assert storage.exists(KEY)
    assert storage.get(KEY) == b""


def test_a_deleted_object_is_gone(storage):
    storage.put(KEY, PNG, "image/png")
    storage.delete(KEY)
    assert not storage.exists(KEY)
    with pytest.raises(ObjectNotFound):
        storage.get(KEY)


def test_reading_a_missing_key_raises_object_not_found(storage):
    with pytest.raises(ObjectNotFound) as excinfo:
        storage.get("images/1/never-written/0.png")
    assert isinstance(excinfo.value, KeyError)  # callers may treat it as a missing key
    assert not storage.exists("images/1/never-written/0.png")


def test_deleting_a_missing_key_is_not_an_error(storage):
    storage.delete("images/1/never-written/0.png")
    assert not storage.exists("images/1/never-written/0.png")


# Filesystem specifics


@pytest.mark.parametrize(
    "key",
    ["../escape.png", "images/../../escape.png", "images/1/../2/0.png", "/etc/passwd", "/images/1/job/0.png", ""],
)
def test_the_filesystem_refuses_keys_that_could_leave_its_root(tmp_path, key):
    store = FilesystemStorage(tmp_path / "objects")
    for operation in (
        lambda: store.put(key, b"x", "image/png"),
        lambda: store.get(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
    ):
        with pytest.raises(ValueError):
            operation()
    assert not (tmp_path / "escape.png").exists()


def test_the_filesystem_keeps_objects_under_its_root(tmp_path):
    store = FilesystemStorage(tmp_path / "objects")
    store.put(KEY, PNG, "image/png")
    assert (tmp_path / "objects" / KEY).read_bytes() == PNG


def _all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_filesystem_writes_leave_no_temporary_files(tmp_path):
    store = FilesystemStorage(tmp_path / "objects")
    keys = [image_key(1, "job-a", i) for i in range(3)] + [image_key(2, "job-b", 0)]
    for key in keys:
        store.put(key, PNG, "image/png")
    store.put(keys[0], b"replaced", "image/png")
    assert _all_files(tmp_path / "objects") == sorted(tmp_path / "objects" / k for k in keys)


def test_a_failed_filesystem_write_keeps_the_old_object_and_leaves_no_temporary_file(tmp_path):
    store = FilesystemStorage(tmp_path / "objects")
    store.put(KEY, PNG, "image/png")
    with pytest.raises(TypeError):
        store.put(KEY, "not bytes", "image/png")  # the write fails half way
    assert store.get(KEY) == PNG
    assert _all_files(tmp_path / "objects") == [tmp_path / "objects" / KEY]


# S3 specifics and choosing a backend


def test_s3_records_the_content_type(s3_endpoint, bucket):
    store = S3Storage(bucket=bucket, endpoint_url=s3_endpoint)
    store.put(KEY, PNG, "image/png")
    head = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").head_object(Bucket=bucket, Key=KEY)
    assert head["ContentType"] == "image/png"
    assert head["ContentLength"] == len(PNG)


def test_get_storage_builds_a_working_s3_store_from_the_settings(make_settings, tmp_path, s3_endpoint, bucket):
    settings = make_settings(tmp_path, storage="s3", s3_endpoint_url=s3_endpoint, s3_bucket=bucket)
    store = get_storage(settings)
    assert isinstance(store, S3Storage)
    store.put(KEY, PNG, "image/png")
    assert S3Storage(bucket=bucket, endpoint_url=s3_endpoint).get(KEY) == PNG  # really in that bucket
    assert store.get(KEY) == PNG
    assert not (tmp_path / "objects").exists()  # and not on the local disk


def test_get_storage_defaults_to_files_under_the_data_dir(make_settings, tmp_path):
    store = get_storage(make_settings(tmp_path))
    assert isinstance(store, FilesystemStorage)
    store.put(KEY, PNG, "image/png")
    assert (tmp_path / "objects" / KEY).read_bytes() == PNG


# One store per process and configuration


def test_get_storage_makes_one_s3_client_per_configuration(make_settings, tmp_path, s3_endpoint, bucket, monkeypatch):
    made: list[str] = []
    real_client = boto3.client

    def counting_client(*args, **kwargs):
        made.append(kwargs.get("endpoint_url"))
        return real_client(*args, **kwargs)

    monkeypatch.setattr(boto3, "client", counting_client)
    settings = make_settings(tmp_path, storage="s3", s3_endpoint_url=s3_endpoint, s3_bucket=bucket)
    store = get_storage(settings)
    # Eleven call sites ask for it on every request and task: they all get the same client.
    assert all(get_storage(settings) is store for _ in range(10))
    assert get_storage(settings.model_copy(update={"price_base_credits": 3.0})) is store  # other fields don't matter
    assert made == [s3_endpoint]

    elsewhere = get_storage(settings.model_copy(update={"s3_bucket": f"{bucket}-other"}))
    assert elsewhere is not store and made == [s3_endpoint, s3_endpoint]


def test_get_storage_follows_the_storage_settings(make_settings, tmp_path):
    here = make_settings(tmp_path / "a")
    assert get_storage(here) is get_storage(make_settings(tmp_path / "a"))
    there = get_storage(make_settings(tmp_path / "b"))
    assert there is not get_storage(here)
    there.put(KEY, PNG, "image/png")
    assert (tmp_path / "b" / "objects" / KEY).exists() and not (tmp_path / "a" / "objects" / KEY).exists()
