"""Fine-tuning under tf.distribute: mirrored across two logical CPU devices, and multi-worker with
two processes on loopback (TF_CONFIG), plainly and with gradual pruning and distillation, each equal
to one-device training, pruned zeros held on every replica; and RetrainComponent's executor loading
the model under the configured strategy."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from executor_calls import run_prune, run_retrain

from tfx_model_pruning.engine import load_model

pytestmark = pytest.mark.integration

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "distributed_finetune.py")
ENV = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


def _report(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _check(reports: dict) -> None:
    for report in reports.values():
        _check_one(report)
    # Gradual pruning went on from the 60% the model was pruned to, on every replica alike.
    assert reports["plain"]["sparsity"] == pytest.approx(0.6, abs=0.01)
    assert reports["gradual_distilled"]["sparsity"] == pytest.approx(0.8, abs=0.01)


def _check_one(report: dict) -> None:
    assert report["replicas"] == 2
    assert report["zeros_held_on_every_replica"] and report["same_mask"]
    assert report["max_kernel_difference"] < 1e-5, "the distributed run must equal one-device training"
    np.testing.assert_allclose(report["loss_distributed"], report["loss_one_device"], rtol=1e-5)


def test_mirrored_across_two_devices_equals_one_device_and_holds_the_zeros_on_both():
    report = _report(
        subprocess.run([sys.executable, SCRIPT, "mirrored"], capture_output=True, text=True, env=ENV, timeout=600)
    )
    assert all(r["kernels_on_replicas"] == 2 for r in report.values())  # both replicas' copies checked
    _check(report)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_multi_worker_with_two_processes_on_loopback_equals_one_device():
    workers = [f"localhost:{port}" for port in _free_ports(2)]
    processes = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = {**ENV, "TF_CONFIG": json.dumps(config)}
        processes.append(
            subprocess.Popen(
                [sys.executable, SCRIPT, "multi_worker"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        )
    for process in processes:
        stdout, stderr = process.communicate(timeout=600)
        _check(_report(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)))


def test_retrain_executor_fine_tunes_under_the_configured_strategy(tmp_path, penguin_baseline, penguin_data):
    pruned, _ = run_prune(penguin_baseline, tmp_path / "pruned", target_sparsity=0.8)
    out = run_retrain(pruned.uri, penguin_data, tmp_path / "out", label_key="species", epochs=2, strategy="mirrored")
    retrained = load_model(os.path.join(out.uri, "Format-Serving"))
    assert retrained.masks
    for key, mask in retrained.masks.items():
        assert np.all(retrained.model.get_layer(key.split("::")[0]).kernel.numpy()[~mask] == 0)


def test_fine_tuning_until_recovered_under_mirrored_measures_the_parent_as_one_device_does():
    script = os.path.join(os.path.dirname(SCRIPT), "recovery_mirrored.py")
    report = _report(subprocess.run([sys.executable, script], capture_output=True, text=True, env=ENV, timeout=600))
    one, mirrored = report["one_device"], report["mirrored"]
    assert (one["replicas"], mirrored["replicas"], mirrored["copies"]) == (1, 2, 2)
    assert mirrored["parent"] == pytest.approx(one["parent"], abs=1e-6)  # the same evaluation, split across replicas
    for run in (one, mirrored):
        assert run["stop_reason"] == "recovered" and run["best"] >= run["target"]
        assert run["zeros_held_on_every_replica"]
