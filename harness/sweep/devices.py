"""Worker slots: which device each sweep worker trains on and the environment it starts with.

`--devices` is checked before anything starts: an unknown device string, an empty list or a GPU
this machine does not have is a DeviceError (the sweep exits 2). Each GPU worker sees exactly
its GPU through CUDA_VISIBLE_DEVICES (so it addresses it as cuda:0) while its trials record the
machine's name for it (cuda:3).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from harness.errors import SaesweepError

_DEVICE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


class DeviceError(SaesweepError, ValueError):
    """A --devices value that names no usable device."""


@dataclass(frozen=True)
class WorkerSlot:
    """One worker process: its device and the environment it is started with."""

    device: str
    """The device as the worker addresses it ("cpu", or "cuda:0" for its one visible GPU)."""
    label: str
    """The device as this machine names it ("cpu", "cuda:3"): shown and recorded per trial."""
    threads: int = 0
    """Intra-op threads for a CPU worker (its share of the cores); 0 = torch's default."""
    env: dict[str, str] = field(default_factory=dict)
    """Variables set before the worker imports torch."""


def parse_devices(text: str, gpu_count: int) -> list[str]:
    """The devices of a --devices value, each `cpu`, `cuda` or `cuda:N` with N < gpu_count."""
    devices = [d.strip() for d in text.split(",") if d.strip()]
    if not devices:
        raise DeviceError(f"--devices {text!r}: no device given; expected a comma-separated "
                          "list such as cpu or cuda:0,cuda:1")
    for dev in devices:
        m = _DEVICE.match(dev)
        if m is None:
            raise DeviceError(f"--devices: unknown device {dev!r}; expected cpu, cuda or cuda:N")
        if m.group(1) == "cuda":
            index = int(m.group(2) or 0)
            if index >= gpu_count:
                have = (f"this machine has {gpu_count} GPU(s): cuda:0..cuda:{gpu_count - 1}"
                        if gpu_count else "this machine has no usable GPU")
                raise DeviceError(f"--devices: {dev} does not exist; {have}")
    return devices


def worker_slots(devices: list[str] | None, n_workers: int, gpu_count: int,
                 per_device: int | None = None) -> list[WorkerSlot]:
    """One slot per device of `devices`, else `n_workers` slots spread over the GPUs (or the
    CPU cores when there is none); with `per_device` M, M slots on each device of `devices`, or
    on each GPU (on the CPU: M slots)."""
    if devices is None:
        if per_device is not None:
            devices = [f"cuda:{i}" for i in range(gpu_count)] or ["cpu"]
        elif gpu_count:
            devices = [f"cuda:{i % gpu_count}" for i in range(n_workers)]
        else:
            devices = ["cpu"] * n_workers
    devices = [dev for dev in devices for _ in range(per_device or 1)]
    n_cpu = sum(1 for d in devices if d == "cpu")
    # cuda:N counts the GPUs this process sees: map it through a CUDA_VISIBLE_DEVICES already set
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
               if v.strip()]
    slots = []
    for dev in devices:
        if dev.startswith("cuda"):
            index = int(dev.split(":", 1)[1]) if ":" in dev else 0
            physical = visible[index] if index < len(visible) else str(index)
            slots.append(WorkerSlot(device="cuda:0", label=f"cuda:{index}",
                                    env={"CUDA_VISIBLE_DEVICES": physical}))
        else:
            slots.append(cpu_slot(n_cpu))
    return slots


def usable_cores() -> int:
    """The cores this process may run on (its affinity: what SLURM, taskset or a container
    grant), at most $OMP_NUM_THREADS when that is set: a limit the user gave is kept."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    limit = os.environ.get("OMP_NUM_THREADS", "")
    return min(cores, int(limit)) if limit.isdigit() and int(limit) > 0 else cores


def cpu_slot(n_workers: int) -> WorkerSlot:
    """A CPU worker's share of the cores, set before torch starts its thread pools."""
    threads = max(1, usable_cores() // max(1, n_workers))
    return WorkerSlot(device="cpu", label="cpu", threads=threads,
                      env={"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})


def visible_gpu_count() -> int:
    """GPUs torch can use in this process (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
