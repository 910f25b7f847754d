"""Shared fixtures: small synthetic stores written through the real store writer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from harness.core.store import LocalStore
from harness.data.synthetic import SyntheticSpec, write_synthetic_store

# Two xdist workers share this machine's cores, and each test's sweep starts more processes:
# one intra-op thread each, or OpenMP's threads wait on one another across processes. Sweeps
# keep a limit set in OMP_NUM_THREADS (harness.sweep.devices.usable_cores).
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def saesweep_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache (harness.data.cache) for the whole run, shared by every xdist worker and the
    processes tests start: SmolLM2 is dequantised, and the docstrings corpus parsed, once per
    run, and nothing outside the run's temporary folder is touched."""
    folder = tmp_path_factory.getbasetemp().parent / "saesweep-cache"
    os.environ["SAESWEEP_CACHE"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def synthetic_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic store: run "syn", layer "synthetic", d=16, 6000 tokens in 3 shards."""
    base = tmp_path_factory.mktemp("synstore")
    write_synthetic_store(base, "syn", SyntheticSpec(d=16, n_features=32, mean_active=3,
                                                     n_tokens=6000), shard_tokens=2000)
    return base


def indexed_tokens(n: int, d: int = 4) -> torch.Tensor:
    """Tokens whose first column is their own index: lets tests track every token."""
    x = torch.randn(n, d)
    x[:, 0] = torch.arange(n, dtype=torch.float32)
    return x


@pytest.fixture()
def indexed_store(tmp_path: Path) -> LocalStore:
    """Run "idx", layer "L": 5000 indexed tokens in shards of 700."""
    store = LocalStore(tmp_path)
    store.put_activations("idx", "L", indexed_tokens(5000), shard_tokens=700)
    return store


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL server for the session (skips, saying why, where none starts)."""
    from postgres import start_server

    server = start_server()
    if isinstance(server, str):
        pytest.skip(f"PostgreSQL tests need a server: {server}")
    yield server
    server.stop()


@pytest.fixture()
def postgres_url(postgres_server) -> str:
    """The URL of a fresh database on the session's PostgreSQL server (password included)."""
    return postgres_server.new_database()


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny random Llama saved as a local model folder (tests/tiny_lm.py), and a text file of
    blank-line separated documents for it."""
    from tiny_lm import text_file, tiny_lm

    folder = tmp_path_factory.mktemp("tiny_llama")
    lm = tiny_lm()
    lm.model.save_pretrained(folder / "model")
    lm.tokenizer.save_pretrained(folder / "model")
    return folder / "model", text_file(folder)


@pytest.fixture(scope="session")
def finished_study(synthetic_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results folder whose study "t" (spaces.one_trial) has one finished trial: swept once per
    test process, copied by each test that starts from a finished study (`copy_finished`)."""
    import contextlib
    import io

    from spaces import one_trial, write_space

    from harness.sweep.cli import main

    tmp = tmp_path_factory.mktemp("finished_study")
    space = write_space(tmp / "s.yaml", one_trial(synthetic_store, tmp / "results"))
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        assert main([str(space)]) == 0, out.getvalue()
    return tmp / "results"


@pytest.fixture()
def copy_finished(finished_study: Path, tmp_path: Path) -> Path:
    """This test's own copy of `finished_study` at tmp_path/results."""
    import shutil

    return Path(shutil.copytree(finished_study, tmp_path / "results"))
