"""Sparse probing and absorption of saved SAEs: what they cost per SAE once the caches exist,
whether they separate a trained SAE from a random one of its shape and SAEs of different k,
and whether they agree with the reference code run on the same inputs.

    python scripts/bench_latent_metrics.py results/smollm2_l6/trials/* --model smollm2 \\
        --layer model.layers.6 --saebench --sae-probes

Prints the caches' build times and sizes (built now or read), then a row per SAE (the folders
given, then a random TopK SAE of the first one's shape): L0 on the probing examples, seconds of
sparse probing and of absorption, the metrics. --sae-probes scores every (SAE, dataset, k) again
with sae-probes 0.4.2's own functions (get_sorted_indices, find_best_reg) and prints the largest
difference from ours; --saebench runs SAEBench 0.6.0's absorption on the same inputs
(scripts/benchmarks/saebench_absorption.py) and prints its rates, the share of letters whose main
latents both choose, and ours given SAEBench's main latents.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.core.sae import TopKSae  # noqa: E402
from harness.core.sae_formats import read_sae  # noqa: E402
from harness.data.models import load_model  # noqa: E402
from harness.evaluate.absorption import absorption, letters_measured  # noqa: E402
from harness.evaluate.absorption_data import letter_task  # noqa: E402
from harness.evaluate.hidden import task_folder  # noqa: E402
from harness.evaluate.probing_data import probing_sets, resolve_datasets  # noqa: E402
from harness.evaluate.sparse_probing import KS, baseline, sparse_probing  # noqa: E402


def _size(kind: str, lm: object, layer: str) -> str:
    folder = task_folder(kind, lm, layer, None)  # type: ignore[arg-type]
    return f"{sum(f.stat().st_size for f in folder.rglob('*') if f.is_file()) / 1e6:.1f} MB"


def _sae_probes_gap(sae: object, sets: list) -> float:
    """Largest |ours - sae-probes'| over datasets, k, accuracy and AUC."""
    import importlib.util
    import types

    if "xgboost" not in sys.modules and importlib.util.find_spec("xgboost") is None:
        # imported by sae-probes' training module, not used by what is called here
        sys.modules["xgboost"] = types.ModuleType("xgboost")
    from sae_probes.run_sae_evals import get_sorted_indices, mean_act_normalization
    from sae_probes.utils_training import find_best_reg

    gap = 0.0
    for s in sets:
        with torch.no_grad():
            z_train = sae.encode_dense(s.x_train).float()  # type: ignore[attr-defined]
            z_test = sae.encode_dense(s.x_test).float()  # type: ignore[attr-defined]
        order = get_sorted_indices(z_train, torch.from_numpy(s.y_train), mean_act_normalization)
        ours = sparse_probing(sae, [s])  # type: ignore[arg-type]
        for k in KS:
            top = order[:k]
            theirs = find_best_reg(z_train[:, top].numpy(), s.y_train, z_test[:, top].numpy(),
                                   s.y_test, parallel=False, seed=42).metrics
            gap = max(gap, abs(ours[f"sparse_probing_top{k}_accuracy"] - theirs.test_acc),
                      abs(ours[f"sparse_probing_top{k}_auc"] - theirs.test_auc))
    return gap


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sae_dirs", nargs="+")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--layer", default="model.layers.6")
    p.add_argument("--saebench", action="store_true")
    p.add_argument("--sae-probes", action="store_true")
    args = p.parse_args()
    torch.manual_seed(0)
    lm = load_model(args.model, "cpu", causal=True)
    start = time.perf_counter()
    sets, computed = probing_sets(lm, args.layer, resolve_datasets(None))
    print(f"sparse-probing cache: {len(sets)} datasets, {computed} embedded now, "
          f"{time.perf_counter() - start:.1f} s, {_size('probing', lm, args.layer)}")
    start = time.perf_counter()
    task, built = letter_task(lm, args.layer)
    letters = letters_measured(task)
    print(f"first-letter cache: {len(task.y_train)} + {len(task.y_test)} words, "
          f"{'built now' if built else 'read'} in {time.perf_counter() - start:.1f} s, "
          f"{_size('absorption', lm, args.layer)}; {len(letters)} letters with probe F1 > 0.6")
    base = baseline(sets)
    print(f"raw-activation probe: accuracy {base['sparse_probing_baseline_accuracy']:.3f}, "
          f"AUC {base['sparse_probing_baseline_auc']:.3f}")
    saes = [(folder, read_sae(folder)) for folder in args.sae_dirs]
    first = saes[0][1]
    saes.append(("random", TopKSae(first.n_latents, first.n_inputs, first.k, seed=0)))
    print(f"{'sae':<34} {'latents':>7} {'k':>3} {'sp_s':>5} {'ab_s':>5} {'top1':>6} {'top2':>6} "
          f"{'top5':>6} {'top16':>6} {'auc16':>6} {'absorb':>7} {'full':>6} {'main':>5}")
    for folder, sae in saes:
        t0 = time.perf_counter()
        sp = sparse_probing(sae, sets)
        t1 = time.perf_counter()
        ab = absorption(sae, task, letters)
        t2 = time.perf_counter()
        print(f"{str(folder)[-34:]:<34} {sae.n_latents:>7} {sae.k:>3} {t1 - t0:>5.1f} "
              f"{t2 - t1:>5.1f} " + " ".join(f"{sp[f'sparse_probing_top{k}_accuracy']:>6.3f}"
                                             for k in KS)
              + f" {sp['sparse_probing_top16_auc']:>6.3f} {ab.absorption_rate:>7.3f} "
              f"{ab.full_absorption_rate:>6.3f} {ab.absorption_main_latents:>5.2f}", flush=True)
        if args.sae_probes:
            print(f"  sae-probes' code: largest |difference| {_sae_probes_gap(sae, sets):.2e}")
        if args.saebench:
            _saebench(folder, sae, task, letters, ab)


def _saebench(folder: object, sae: object, task: object, letters: list, ours: object) -> None:
    import os
    import tempfile

    import sae_lens

    os.environ["TQDM_DISABLE"] = "1"  # SAEBench's progress bars
    from scripts.benchmarks.saebench_absorption import saebench_absorption

    with tempfile.TemporaryDirectory() as tmp:
        path = sae.save(Path(tmp) / "sae")  # type: ignore[attr-defined]
        theirs_sae = sae_lens.SAE.load_from_disk(str(path))
    torch.manual_seed(0)  # SAEBench's probes draw from torch's global generator
    theirs = saebench_absorption(theirs_sae, task)  # type: ignore[arg-type]
    torch.manual_seed(1)
    again = saebench_absorption(theirs_sae, task)  # type: ignore[arg-type]
    itself = sum(sorted(theirs.main_latents[i]) == sorted(again.main_latents[i])
                 for i in letters)
    given = absorption(sae, task, letters, main=theirs.main_latents)  # type: ignore[arg-type]
    from harness.evaluate.absorption import l1_probe, main_latents

    with torch.no_grad():
        z_train = sae.encode_dense(task.x_train).float()  # type: ignore[attr-defined]
        z_test = sae.encode_dense(task.x_test).float()  # type: ignore[attr-defined]
    ranking = l1_probe(z_train, task.y_train)  # type: ignore[attr-defined]
    same = sum(sorted(main_latents(ranking[i], z_train.numpy(), (task.y_train == i).numpy(),
                                   z_test.numpy(), (task.y_test == i).numpy()))
               == sorted(theirs.main_latents[i]) for i in letters)
    print(f"  SAEBench 0.6.0, seeds 0 and 1: absorption {theirs.absorption_rate:.4f} and "
          f"{again.absorption_rate:.4f}, full {theirs.full_absorption_rate:.4f} and "
          f"{again.full_absorption_rate:.4f}; same main latents on {itself}/{len(letters)} "
          f"letters between its seeds, on {same}/{len(letters)} between ours and its seed 0; "
          f"ours given its seed-0 main latents: {given.absorption_rate:.4f}, full "
          f"{given.full_absorption_rate:.4f}")


if __name__ == "__main__":
    main()
