"""Pushes appear complete or not at all, never overwrite, and survive concurrent writers."""

import multiprocessing
import os
import socket
import subprocess
import sys
import time

import pytest

from tfx_model_pruning.atomic_pusher.executor import STAGING_PREFIX, StaleVerdictError, publish_version

pytestmark = pytest.mark.integration


def _fake_model(directory, payload):
    os.makedirs(os.path.join(directory, "variables"), exist_ok=True)
    with open(os.path.join(directory, "variables", "variables.data-00000-of-00001"), "wb") as f:
        f.write(payload * 200_000)  # large enough that a copy takes a while
    with open(os.path.join(directory, "saved_model.pb"), "wb") as f:
        f.write(payload)
    return directory


def _push_many(model_dirs, base, results):
    for model_dir in model_dirs:
        results.put(publish_version(model_dir, base))


def _entries(base):
    return sorted(os.listdir(base))


def test_concurrent_pushers_get_distinct_complete_versions(tmp_path):
    base = str(tmp_path / "serving")
    models = [_fake_model(str(tmp_path / f"model_{i}"), bytes([65 + i])) for i in range(10)]
    results = multiprocessing.get_context("spawn").Queue()
    workers = [
        multiprocessing.get_context("spawn").Process(target=_push_many, args=(models[i::2], base, results))
        for i in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    published = [results.get(timeout=5) for _ in range(10)]
    versions = [version for version, _ in published]
    assert len(set(versions)) == 10, "two pushes claimed the same version"
    assert _entries(base) == sorted(versions), "no staging directory or partial version is left"
    for _, path in published:
        payload = open(os.path.join(path, "saved_model.pb"), "rb").read()
        assert len(payload) == 1
        variables = open(os.path.join(path, "variables", "variables.data-00000-of-00001"), "rb").read()
        assert variables == payload * 200_000, "a version mixes two models or is truncated"


def test_an_existing_version_is_never_overwritten(tmp_path):
    base = tmp_path / "serving"
    model = _fake_model(str(tmp_path / "model"), b"N")
    first, first_path = publish_version(model, str(base))
    (base / str(int(first) + 1)).mkdir()  # someone else's version, even an odd empty one
    (base / str(int(first) + 1) / "keep").write_text("theirs")
    second, _ = publish_version(_fake_model(str(tmp_path / "other"), b"O"), str(base))
    assert int(second) > int(first) + 1
    assert (base / str(int(first) + 1) / "keep").read_text() == "theirs"
    assert os.listdir(first_path) == os.listdir(model)


def test_a_failed_copy_leaves_nothing_that_looks_like_a_version(tmp_path):
    base = tmp_path / "serving"
    with pytest.raises(FileNotFoundError):
        publish_version(str(tmp_path / "missing_model"), str(base))
    assert [name for name in _entries(base) if not name.startswith(STAGING_PREFIX)] == []
    assert _entries(base) == [], "the staging directory is cleaned up"


def test_a_killed_push_leaves_no_staging_directory_behind_for_long(tmp_path):
    base = tmp_path / "serving"
    base.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs: the push it owned was killed
    left_by_kill = base / f"{STAGING_PREFIX}{socket.gethostname()}-{dead.pid}-abc123"
    (left_by_kill / "variables").mkdir(parents=True)
    running = base / f"{STAGING_PREFIX}{socket.gethostname()}-{os.getpid()}-def456"  # a push still copying
    running.mkdir()
    other_host = base / f"{STAGING_PREFIX}pod-7f9c-123-ghi789"  # another pod's: removed only once old
    other_host.mkdir()
    version, _ = publish_version(_fake_model(str(tmp_path / "model"), b"M"), str(base))
    assert _entries(base) == sorted([version, running.name, other_host.name])
    old = time.time() - 7 * 3600
    os.utime(other_host, (old, old))
    publish_version(_fake_model(str(tmp_path / "model2"), b"Q"), str(base))
    assert other_host.name not in _entries(base) and running.name in _entries(base)


def test_a_push_killed_after_its_rename_is_not_published_twice_on_resume(tmp_path):
    base = tmp_path / "serving"
    model = _fake_model(str(tmp_path / "model"), b"K")
    first, path = publish_version(model, str(base))
    # The run was killed before it recorded the push; the resumed run pushes the same model again.
    again, again_path = publish_version(model, str(base))
    assert (again, again_path) == (first, path)
    assert _entries(base) == [first]


def test_a_push_root_escape_planted_during_the_run_is_refused_at_push_time(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    destination = root / "serving"
    destination.symlink_to(outside, target_is_directory=True)  # planted after the pipeline was built
    with pytest.raises(ValueError, match="outside the push root"):
        publish_version(_fake_model(str(tmp_path / "model"), b"E"), str(destination), push_root=str(root))
    assert os.listdir(outside) == []


def test_a_verdict_judged_against_another_serving_model_is_not_pushed(tmp_path):
    base = tmp_path / "serving"
    judged, judged_path = publish_version(_fake_model(str(tmp_path / "v1"), b"1"), str(base))
    candidate = _fake_model(str(tmp_path / "candidate"), b"C")
    # A better model landed after the gate compared the candidate with v1.
    newer, _ = publish_version(_fake_model(str(tmp_path / "v2"), b"2"), str(base))
    with pytest.raises(StaleVerdictError, match=f"{newer} is serving now; not pushed"):
        publish_version(candidate, str(base), judged_serving_version=os.path.realpath(judged_path))
    with pytest.raises(StaleVerdictError, match="no serving model"):
        publish_version(candidate, str(base), judged_serving_version="")
    assert _entries(base) == sorted([judged, newer])
    version, _ = publish_version(candidate, str(base), judged_serving_version=os.path.realpath(base / newer))
    assert _entries(base) == sorted([judged, newer, version])


def test_the_pusher_reads_what_the_gate_judged_from_the_blessing(tmp_path):
    from tfx.proto import pusher_pb2
    from tfx.types import standard_artifacts
    from tfx.utils import proto_utils

    from tfx_model_pruning.atomic_pusher.executor import Executor
    from tfx_model_pruning.serving_versions import JUDGED_SERVING_VERSION_PROPERTY, SERVING_MODEL_DIR_PROPERTY

    base = tmp_path / "serving"
    landed, _ = publish_version(_fake_model(str(tmp_path / "better"), b"B"), str(base))
    model = standard_artifacts.Model()
    model.uri = str(tmp_path / "candidate_artifact")
    _fake_model(os.path.join(model.uri, "Format-Serving"), b"C")
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = str(tmp_path / "blessing")
    os.makedirs(blessing.uri)
    open(os.path.join(blessing.uri, "BLESSED"), "w").close()
    blessing.set_int_custom_property("blessed", 1)
    # A cached verdict from before the better model landed: nothing was serving then.
    blessing.set_string_custom_property(SERVING_MODEL_DIR_PROPERTY, str(base))
    blessing.set_string_custom_property(JUDGED_SERVING_VERSION_PROPERTY, "")
    pushed = standard_artifacts.PushedModel()
    pushed.uri = str(tmp_path / "pushed")
    destination = pusher_pb2.PushDestination(filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=str(base)))
    call = (
        {"model": [model], "model_blessing": [blessing]},
        {"pushed_model": [pushed]},
        {"push_destination": proto_utils.proto_to_json(destination), "custom_config": "null"},
    )
    with pytest.raises(StaleVerdictError, match=f"{landed} is serving now"):
        Executor().Do(*call)
    assert _entries(base) == [landed]
    blessing.set_string_custom_property(JUDGED_SERVING_VERSION_PROPERTY, os.path.realpath(base / landed))
    Executor().Do(*call)
    assert len(_entries(base)) == 2 and pushed.get_int_custom_property("pushed") == 1
