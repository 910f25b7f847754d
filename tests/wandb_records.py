"""Test helper: read an offline W&B run's `.wandb` log, to check what `wandb sync` would upload.

wandb >= 0.19 keeps offline config, history and summary only inside this log (no Python reader
ships any more). Format: a 7-byte header (":W&B", 2-byte key, version) then LevelDB log records
(4-byte crc, 2-byte length, 1-byte type; 32 KiB blocks), each a protobuf `Record`.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError
from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[Any]:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B log"
    out, pos, pending = [], HEADER, b""
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER:  # block trailer padding
            pos += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:
            break
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            rec = pb.Record()
            rec.ParseFromString(pending)
            out.append(rec)
    return out


def finished_records(path: Path, timeout_s: float = 60.0) -> list[Any]:
    """The log's records once it holds the run's final `exit` record.

    W&B's service writes the log in the background: once in three full-suite runs, a log read
    right after `run.finish()` had no run record yet. A reader in the same process waits.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            recs = records(path)
        except (AssertionError, struct.error, DecodeError):  # caught mid-write
            recs = []
        if any(r.WhichOneof("record_type") == "exit" for r in recs):
            return recs
        if time.monotonic() > deadline:
            raise AssertionError(f"{path}: no exit record after {timeout_s:.0f} s; records: "
                                 f"{[r.WhichOneof('record_type') for r in recs]}")
        time.sleep(0.1)


def run_contents(path: Path) -> dict[str, Any]:
    """{"config": {...}, "history": [{...}], "summary": {...}, "run": RunRecord} of one
    finished run's log."""
    config: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    run = None
    for rec in finished_records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run = rec.run
            for item in rec.run.config.update:
                config[_key(item)] = json.loads(item.value_json)
        elif kind == "config":
            for item in rec.config.update:
                config[_key(item)] = json.loads(item.value_json)
        elif kind == "history":
            history.append({_key(i): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            for item in rec.summary.update:
                summary[_key(item)] = json.loads(item.value_json)
    config = {k: (v["value"] if isinstance(v, dict) and "value" in v else v)
              for k, v in config.items()}
    return {"config": config, "history": history, "summary": summary, "run": run}


def _key(item: Any) -> str:
    return item.key or ".".join(item.nested_key)
