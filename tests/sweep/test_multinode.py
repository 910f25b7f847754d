"""Many nodes, one study: sweep commands in separate folders against one PostgreSQL server
(started by the test, see tests/postgres.py)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
from optuna.trial import TrialState
from scripts_run import sweep_here
from spaces import tiny_space, write_space

from harness import TopKSae
from harness.report import load_trials
from harness.sweep.budget import superseded_numbers
from harness.sweep.storage import close_storage, open_storage

ROOT = Path(__file__).resolve().parents[2]


def node(folder: Path, space: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """One "node": its own working directory and results folder."""
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "harness.sweep", str(space),
                             "--results", str(folder / "results"), *args],
                            cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def every_file_text(folder: Path) -> str:
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in folder.rglob("*")
                     if p.is_file())


def test_two_nodes_share_one_postgres_study_exactly(postgres_url, synthetic_store, tmp_path):
    from postgres import PASSWORD

    space = write_space(tmp_path / "space.yaml", tiny_space(
        synthetic_store, tmp_path / "unused", budget={"n_trials": 8}, wandb={"mode": "offline"},
        training={"epochs": 1, "batch_size": 256, "eval_every": 5},
        faults={"heartbeat_s": 1, "lease_s": 10}))
    shared = tmp_path / "shared_artifacts"  # the filesystem every node mounts
    a = node(tmp_path / "node_a", space, "--storage", postgres_url, "--workers", "2",
             "--artifacts", str(shared))
    b = node(tmp_path / "node_b", space, "--artifacts", str(shared),
             env={"SAESWEEP_STORAGE": postgres_url})
    outs = [p.communicate(timeout=300)[0] for p in (a, b)]
    assert [a.returncode, b.returncode] == [0, 0], outs
    storage = open_storage(postgres_url)
    study = optuna.load_study(study_name="t", storage=storage)
    trials = study.get_trials()
    close_storage(storage)
    states = Counter(t.state for t in trials)
    assert states == {TrialState.COMPLETE: 8}, states  # exact budget, nothing RUNNING
    folders = Counter(Path(t.user_attrs["trial_dir"]).parts[-5] for t in trials)
    assert set(folders) == {"node_a", "node_b"}, folders  # both nodes ran trials
    assert len({t.number for t in trials}) == 8
    # the connection string never leaves the command line: not in files, logs or output
    for text in (*outs, every_file_text(tmp_path / "node_a"), every_file_text(tmp_path / "node_b"),
                 str(study.user_attrs), *(str(t.user_attrs) for t in trials)):
        assert PASSWORD not in text
    assert "postgresql://saesweep:***@127.0.0.1" in outs[0]
    # node A's folder goes out of reach; a report on node B still finds every SAE
    shutil.rmtree(tmp_path / "node_a")
    df = load_trials("t", storage=postgres_url, results_dir=tmp_path / "node_b" / "results")
    assert df["sae_path"].notna().all(), df[["number", "trial_dir", "sae_path"]]
    for path in df["sae_path"]:
        assert TopKSae.load(path).n_inputs == 16
    report = subprocess.run([sys.executable, "-m", "harness.report", "t", "--results",
                             str(tmp_path / "node_b" / "results")], cwd=tmp_path / "node_b",
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "SAESWEEP_STORAGE": postgres_url})
    assert report.returncode == 0, report.stdout + report.stderr
    assert PASSWORD not in report.stdout + report.stderr
    assert PASSWORD not in every_file_text(tmp_path / "node_b")


def test_a_postgres_url_without_a_reachable_server_exits_2(synthetic_store, tmp_path, capsys):
    space = write_space(tmp_path / "space.yaml", tiny_space(synthetic_store,
                                                            tmp_path / "results"))
    proc = sweep_here(capsys, str(space), "--storage",
                      "postgresql://bob:hunter2@127.0.0.1:9/nowhere")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--storage postgresql://bob:***@127.0.0.1:9/nowhere: cannot open the storage" in \
        proc.stderr
    assert "hunter2" not in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_chaos_sigkills_across_two_nodes_lose_and_duplicate_nothing(postgres_url,
                                                                        synthetic_store,
                                                                        tmp_path):
    """A 12-trial study on two nodes; a random worker is SIGKILLed every ~1.5 s, 4 times; a
    node whose workers are all gone is started again, as a scheduler would."""
    import random

    n_trials, n_kills = 12, 4
    space = write_space(tmp_path / "space.yaml", tiny_space(
        synthetic_store, tmp_path / "unused", budget={"n_trials": n_trials},
        wandb={"mode": "off"}, training={"epochs": 4, "batch_size": 64, "eval_every": 50},
        # a lease and retries with room for a busy machine: the kills are what is tested
        faults={"heartbeat_s": 1, "lease_s": 8, "max_retry": 2 * n_kills,
                "checkpoint_every": 10}))
    shared = tmp_path / "shared_artifacts"
    folders = {"a": tmp_path / "node_a", "b": tmp_path / "node_b"}

    def launch(name: str) -> subprocess.Popen:
        return node(folders[name], space, "--workers", "2", "--artifacts", str(shared),
                    env={"SAESWEEP_STORAGE": postgres_url})

    procs = {name: launch(name) for name in folders}
    starts, kills, rng = 2, 0, random.Random(0)
    last_kill, end = time.time(), time.time() + 600
    while time.time() < end:
        for name, proc in procs.items():
            if proc.poll() is not None and proc.returncode != 0:
                proc.communicate()
                procs[name], starts = launch(name), starts + 1  # the scheduler restarts it
        if kills < n_kills and time.time() - last_kill > 1.5:
            workers = [int(pid) for proc in procs.values() if proc.poll() is None
                       for pid in subprocess.run(["pgrep", "-P", str(proc.pid)],
                                                 capture_output=True, text=True).stdout.split()]
            if workers:
                os.kill(rng.choice(workers), signal.SIGKILL)
                kills, last_kill = kills + 1, time.time()
        if kills == n_kills and all(p.poll() == 0 for p in procs.values()):
            break
        time.sleep(0.2)
    for proc in procs.values():
        proc.communicate(timeout=60)
    storage = open_storage(postgres_url)
    trials = optuna.load_study(study_name="t", storage=storage).get_trials()
    close_storage(storage)
    retried = superseded_numbers(trials)
    chains = Counter(t.system_attrs.get("failed_trial", t.number) for t in trials
                     if t.state in (TrialState.COMPLETE, TrialState.PRUNED))
    lost = sum(1 for t in trials if t.state == TrialState.FAIL and t.number not in retried)
    duplicated = sum(c - 1 for c in chains.values())
    left = sum(1 for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING))
    used = sum(1 for t in trials if t.number not in retried)
    resumed = sum(1 for t in trials if t.user_attrs.get("resumed_from_step"))
    print(f"chaos: {kills} SIGKILLs, {starts} node starts, {len(trials)} trials for a budget of "
          f"{n_trials}: {len(retried)} killed and retried ({resumed} resumed from a "
          f"checkpoint), lost {lost}, duplicated {duplicated}, left running {left}, "
          f"budget used {used}")
    assert kills == n_kills
    assert (lost, duplicated, left) == (0, 0, 0), [
        (t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in trials
        if t.state != TrialState.COMPLETE and t.number not in retried]
    assert used == n_trials and len(chains) == n_trials  # exact on PostgreSQL
