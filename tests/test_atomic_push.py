"""Pushes appear complete or not at all, never overwrite, and survive concurrent writers."""

import multiprocessing
import os

import pytest

from components.atomic_pusher.executor import STAGING_PREFIX, publish_version


def _fake_model(directory, payload):
    os.makedirs(os.path.join(directory, "variables"), exist_ok=True)
    with open(os.path.join(directory, "variables", "variables.data-00000-of-00001"), "wb") as f:
        f.write(payload * 200_000)  # large enough that a copy takes a while
    with open(os.path.join(directory, "saved_model.pb"), "wb") as f:
        f.write(payload)
    return directory


def _push_many(model_dir, base, count, results):
    for _ in range(count):
        results.put(publish_version(model_dir, base))


def test_concurrent_pushers_get_distinct_complete_versions(tmp_path):
    base = str(tmp_path / "serving")
    models = [_fake_model(str(tmp_path / f"model_{i}"), bytes([65 + i])) for i in range(2)]
    results = multiprocessing.get_context("spawn").Queue()
    workers = [
        multiprocessing.get_context("spawn").Process(target=_push_many, args=(model, base, 5, results))
        for model in models
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    published = [results.get(timeout=5) for _ in range(10)]
    versions = [version for version, _ in published]
    assert len(set(versions)) == 10, "two pushes claimed the same version"
    assert sorted(os.listdir(base)) == sorted(versions), "no staging directory or partial version is left"
    for _, path in published:
        payload = open(os.path.join(path, "saved_model.pb"), "rb").read()
        variables = open(os.path.join(path, "variables", "variables.data-00000-of-00001"), "rb").read()
        assert variables == payload * 200_000, "a version mixes two models or is truncated"


def test_an_existing_version_is_never_overwritten(tmp_path):
    base = tmp_path / "serving"
    model = _fake_model(str(tmp_path / "model"), b"N")
    first, first_path = publish_version(model, str(base))
    (base / str(int(first) + 1)).mkdir()  # someone else's version, even an odd empty one
    (base / str(int(first) + 1) / "keep").write_text("theirs")
    second, _ = publish_version(model, str(base))
    assert int(second) > int(first) + 1
    assert (base / str(int(first) + 1) / "keep").read_text() == "theirs"
    assert os.listdir(first_path) == os.listdir(model)


def test_a_failed_copy_leaves_nothing_that_looks_like_a_version(tmp_path):
    base = tmp_path / "serving"
    with pytest.raises(FileNotFoundError):
        publish_version(str(tmp_path / "missing_model"), str(base))
    assert [name for name in os.listdir(base) if not name.startswith(STAGING_PREFIX)] == []
    assert os.listdir(base) == [], "the staging directory is cleaned up"
