"""Worker slots and the --devices check."""

from __future__ import annotations

import os

import pytest

from harness.sweep.devices import DeviceError, parse_devices, worker_slots


def test_each_gpu_worker_sees_only_its_gpu_and_records_the_machines_name(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    slots = worker_slots(parse_devices("cuda:0,cuda:3", gpu_count=4), 1, gpu_count=4)
    assert [(s.device, s.label, s.env["CUDA_VISIBLE_DEVICES"]) for s in slots] == [
        ("cuda:0", "cuda:0", "0"), ("cuda:0", "cuda:3", "3")]


def test_cuda_indices_count_the_gpus_this_process_sees(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    (slot,) = worker_slots(["cuda:1"], 1, gpu_count=2)
    assert (slot.label, slot.env["CUDA_VISIBLE_DEVICES"]) == ("cuda:1", "6")


def test_workers_spread_over_gpus_or_divide_the_cpu_cores(monkeypatch):
    gpus = worker_slots(None, 3, gpu_count=2)
    assert [s.label for s in gpus] == ["cuda:0", "cuda:1", "cuda:0"]
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    cpus = worker_slots(None, 2, gpu_count=0)
    assert [(s.label, s.threads, s.env["OMP_NUM_THREADS"]) for s in cpus] == [("cpu", 4, "4")] * 2
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # a limit the user set is kept
    assert [s.threads for s in worker_slots(None, 1, gpu_count=0)] == [2]
    monkeypatch.setenv("OMP_NUM_THREADS", "junk")
    assert [s.threads for s in worker_slots(None, 1, gpu_count=0)] == [8]


@pytest.mark.parametrize(("text", "gpus", "message"), [
    ("banana", 0, "unknown device 'banana'"),
    ("cuda:x", 1, "unknown device 'cuda:x'"),
    (",", 0, "no device given"),
    ("cuda:7", 2, "cuda:7 does not exist; this machine has 2 GPU(s): cuda:0..cuda:1"),
    ("cpu,cuda", 0, "cuda does not exist; this machine has no usable GPU"),
])
def test_bad_devices_are_refused_with_what_exists(text, gpus, message):
    with pytest.raises(DeviceError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_devices(text, gpus)


def test_trials_per_device_puts_m_workers_on_each_device(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    listed = worker_slots(["cuda:0", "cuda:1"], 1, gpu_count=2, per_device=2)
    assert [s.label for s in listed] == ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]
    every_gpu = worker_slots(None, 1, gpu_count=3, per_device=2)
    assert [s.label for s in every_gpu] == ["cuda:0", "cuda:0", "cuda:1", "cuda:1",
                                            "cuda:2", "cuda:2"]
    cpus = worker_slots(None, 1, gpu_count=0, per_device=3)
    assert [(s.label, s.threads) for s in cpus] == [
        ("cpu", max(1, (os.cpu_count() or 1) // 3))] * 3
