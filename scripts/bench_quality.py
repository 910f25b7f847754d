"""Held-out SAE quality: ours (and EleutherAI sparsify, when importable) on the same tokens.

    python scripts/bench_quality.py --store results/quality_store --run-id python_docs_l3 \\
        --layer encoder.layer.3 --tokens 200000 --lrs 1e-3,2e-3,4e-3,8e-3,1.6e-2,3.2e-2
    python scripts/bench_quality.py --store results/smollm2_store --run-id docstrings_l6 \\
        --layer model.layers.6 --model smollm2 --n-latents 4608 --lrs default

With --model (a causal LM the store was captured from, hooked at --layer), every SAE is also
spliced into the model (harness.evaluate) on the same windows, and the tables add ΔCE, the
CE-loss score and KL per trainer (docs/metrics.md).

The last `--heldout` tokens of the activation run are held out; neither trainer sees them. The
rest is written to a temporary store that ours trains on through the seed API
(`SaeTrainer(TopKSae(...)).train(...)`, `holdout_fraction=0.001`, more on a store too small
to give the trainer's split 64 tokens), and sparsify is fed the very
batches our loader yields (same tokens, same order) through its own step: `SparseCoder` forward
(FVU + AuxK), backward, `remove_gradient_parallel_to_decoder_directions`, Adam at a constant
learning rate, decoder renormalised before each step, `b_dec` from the first batch's mean, as
its trainer does. Every SAE is saved, loaded back from disk, and scored by one function here:
held-out FVU = sum (X - X_hat)^2 / sum (X - mu)^2 over the whole held-out set, in float64
(docs/metrics.md), with its held-out L0.

With --equal-time, each learning rate trains ours first, then sparsify three times: for as many
steps as ours' wall time allows, as ours' process CPU time allows (the steadier clock on a
shared machine; same threads), and for ours' tokens; the table puts them side by side.

A recipe is `default` (the shipped defaults, the bounded finish included), `legacy` (the recipe
before the quality work: harness.core.recipes), or `NAME:key=value,...` with SaeTrainingConfig
fields or TopKSae arguments (`k`, `encoder_init_scale`, `activation`, `k_aux`), e.g.
`"no finish:decoder_refit=False"`.

With --activation (e.g. topk,batchtopk,jumprelu,matryoshka_batchtopk,relu), each activation trains
at matched L0 instead (scripts/benchmarks/architecture_table.py): at k = each of --l0s, or at each
value of its sparsity penalty, and the table gives its held-out FVU at each L0 and its ratio to
TopK's.

With --target-layer, both train transcoders (--skip: skip-transcoders) that read --layer and
reconstruct that layer of the same run (`python -m harness.capture --pair`), sparsify with
`transcode=True` and its Trainer's transcoder initialisation; FVU is of the target, and --model
splices them into that module.

A learning rate of `default` trains each with its own default:
ours with `lr=None` (harness.core.recipes.default_lr), sparsify with 2e-4 / sqrt(n / 2^14).
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import math
import re
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from benchmarks.architecture_table import architecture_recipes, matched_l0_table, parse_penalties
from benchmarks.equal_time import equal_time_table
from benchmarks.heldout_split import add_run_arguments, split_run
from benchmarks.quality_score import Score, heldout_fvu, with_downstream
from benchmarks.sparsify_step import sparsify_trainer

from harness.core.loader import MIN_EVAL_TOKENS, ActivationLoader
from harness.core.sae import TopKSae
from harness.core.store import ActivationSource, LocalStore
from harness.core.training import SaeTrainer, SaeTrainingConfig
from harness.evaluate.downstream import DownstreamConfig, DownstreamEvaluator, sae_reconstructor

SAE_ARGS = set(inspect.signature(TopKSae.__init__).parameters) - {"self", "n_latents",
                                                                   "n_inputs", "device"}

# the recipe before the quality work (--recipe legacy): the settings that work changed, at
# their old values
LEGACY_SAE: dict[str, float] = {"encoder_init_scale": 1.0}
"""SparseAutoencoder arguments: unit-norm encoder rows (now 1/sqrt(3))."""
LEGACY_TRAINING: dict[str, float | bool] = {"lr": 2e-4, "decoder_refit": False,
                                            "decoder_lr_scale": 1.0, "lr_warmup_steps": 0}
"""SaeTrainingConfig fields: a fixed learning rate (now default_lr of the size and steps), the
decoder as Adam left it (now refit by least squares, harness.core.training.refit), one learning rate
for all parameters (now 4x for the decoder rows) and no warm-up (now a tenth of the steps)."""


def parse_recipe(text: str) -> tuple[str, dict, dict]:
    """`default`, `legacy` or `NAME:key=value,...` -> (name, config fields, TopKSae args)."""
    name, _, rest = text.partition(":")
    values = {**LEGACY_SAE, **LEGACY_TRAINING} if name == "legacy" else {}
    for item in filter(None, re.split(r",(?![^()\[\]]*[)\]])", rest)):  # not inside (...)
        key, _, raw = item.partition("=")
        try:
            values[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            values[key] = raw
    sae_args = {k: v for k, v in values.items() if k in SAE_ARGS}
    cfg_fields = {k: v for k, v in values.items() if k not in SAE_ARGS}
    unknown = set(cfg_fields) - set(SaeTrainingConfig.field_names())
    if unknown:
        raise SystemExit(f"recipe {text!r}: unknown setting(s) {sorted(unknown)}; expected "
                         f"SaeTrainingConfig fields or TopKSae arguments {sorted(SAE_ARGS)}")
    return name, cfg_fields, sae_args


def train_ours(store: Path, run: str, layer: str, base: SaeTrainingConfig, d: int, args,
               recipe: str, column: str, heldout: torch.Tensor, tmp: Path,
               evaluator: DownstreamEvaluator | None = None) -> Score:
    name, fields, sae_args = parse_recipe(recipe)
    # "default": the recipe's own default (legacy: 2e-4), else default_lr of the planned steps
    lr = fields.get("lr") if column == "default" else float(column)
    cfg = base.replace(**{**fields, "lr": lr})
    sae = TopKSae(n_latents=args.n_latents, n_inputs=d, **{
        "k": args.k, "seed": args.seed, "n_outputs": args.d_out or None, "skip": args.skip,
        "transcoder": bool(args.target_layer), **sae_args})
    out = tmp / f"ours_{name}_{column}"
    start, cpu_start = time.perf_counter(), time.process_time()
    history = SaeTrainer(sae).train(store=store, run_id=run, layer_signature=layer, config=cfg,
                                    save_dir=out, target_layer_signature=args.target_layer)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    loaded = TopKSae.load(out)

    reconstruct = sae_reconstructor(loaded)  # one function scores it here and spliced in
    fvu, l0 = heldout_fvu(reconstruct, heldout, d_in=d if args.target_layer else None)
    used = json.loads((out / "training_config.json").read_text())["lr"]  # default resolved
    return with_downstream(Score(name, column, used, fvu, l0, seconds, cpu,
                                 history.final.tokens if history.final else 0,
                                 finish_s=history.finish_s, finish_share=history.finish_share,
                                 activation=loaded.activation), reconstruct, evaluator,
                            bool(args.target_layer))


def train_sparsify(loader: ActivationLoader, cfg: SaeTrainingConfig, d: int, args, column: str,
                   heldout: torch.Tensor, tmp: Path,
                   evaluator: DownstreamEvaluator | None = None,
                   match: tuple[str, float] | None = None) -> Score:
    """sparsify at `column`'s learning rate for the budget's steps, or, with `match` ("wall" or
    "cpu", seconds), for as many steps as that many seconds of wall or process CPU time allow
    (whole epochs repeat as needed; its constant learning rate needs no planned length)."""
    from sparsify import SparseCoder, SparseCoderConfig

    lr = 2e-4 / math.sqrt(args.n_latents / 2**14) if column == "default" else float(column)
    torch.manual_seed(args.seed)
    sae = SparseCoder(d, SparseCoderConfig(num_latents=args.n_latents, k=args.k,
                                           transcode=bool(args.target_layer),
                                           skip_connection=args.skip), dtype=torch.float32)
    step = sparsify_trainer(sae, lr)
    steps = cfg.planned_steps(loader.batches_per_epoch)
    done = tokens = epoch = 0
    start, cpu_start = time.perf_counter(), time.process_time()

    def spent() -> bool:
        if match is None:
            return done >= steps
        clock = time.perf_counter() - start if match[0] == "wall" else (time.process_time()
                                                                        - cpu_start)
        return clock >= match[1]

    while not spent():
        for x in loader.train_batches(epoch):
            step(*((x[:, :d], x[:, d:]) if args.target_layer else (x,)))
            done += 1
            tokens += x.shape[0]
            if spent():
                break
        epoch += 1
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    path = tmp / f"sparsify_{column}"
    sae.save_to_disk(path)
    loaded = SparseCoder.load_from_disk(path)

    @torch.no_grad()
    def reconstruct(x: torch.Tensor):
        out = loaded(x)
        return out.sae_out, (out.latent_acts > 0).sum()

    fvu, l0 = heldout_fvu(reconstruct, heldout, d_in=d if args.target_layer else None)
    return with_downstream(Score("sparsify", column, lr, fvu, l0, seconds, cpu, tokens,
                                 match[0] if match else ""), reconstruct, evaluator,
                            bool(args.target_layer))


def _grid_best(by_lr: dict[str, Score]) -> Score:
    """The lowest FVU among the explicit learning rates (all of them if only 'default' ran)."""
    grid = [s for column, s in by_lr.items() if column != "default"] or list(by_lr.values())
    return min(grid, key=lambda s: s.fvu)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def sparsify_available() -> bool:
    try:
        import sparsify  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not installed here"
        return False
    return True


def table(scores: list[Score], lrs: list[str], metric: str = "fvu") -> str:
    """`metric` (fvu, delta_ce or kl: lower is better) per trainer (rows) and learning rate
    (columns), then ours over sparsify's; "best on the grid" is the trial of lowest FVU."""
    rows: dict[str, dict[str, Score]] = {}
    for s in scores:
        rows.setdefault(s.trainer, {})[s.column] = s

    def value(s: Score) -> float:
        return getattr(s, metric)

    lines = [f"{metric}:", "", "| trainer | " + " | ".join(lrs) + " | best on the grid |",
             "|---" * (len(lrs) + 2) + "|"]
    for trainer, by_lr in rows.items():
        best = _grid_best(by_lr)
        cells = [f"**{value(by_lr[lr]):.4f}**" if by_lr.get(lr) is best else
                 (f"{value(by_lr[lr]):.4f}" if lr in by_lr else "") for lr in lrs]
        lines.append(f"| {trainer} | " + " | ".join(cells) + f" | {value(best):.4f} |")
    if "sparsify" in rows:
        ref = rows["sparsify"]
        ref_best = value(_grid_best(ref))
        for trainer, by_lr in rows.items():
            if trainer == "sparsify":
                continue
            cells = [f"{value(by_lr[lr]) / value(ref[lr]):.3f}" if lr in by_lr and lr in ref
                     else "" for lr in lrs]
            best = value(_grid_best(by_lr))
            lines.append(f"| {trainer} / sparsify | " + " | ".join(cells)
                         + f" | {best / ref_best:.3f} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(p)
    p.add_argument("--target-layer", help="train transcoders: read --layer, reconstruct this "
                   "layer of the same run; FVU is of the target")
    p.add_argument("--skip", action="store_true", help="with --target-layer: skip-transcoders")
    p.add_argument("--tokens", type=int, default=200_000, help="training tokens (default 200k)")
    p.add_argument("--lrs", default="1e-3,2e-3,4e-3,8e-3,1.6e-2,3.2e-2",
                   help="comma-separated learning rates; 'default' = each trainer's default")
    p.add_argument("--recipe", action="append",
                   help="default, legacy or NAME:key=value,... (repeatable; default: default "
                        "and legacy)")
    p.add_argument("--no-sparsify", action="store_true", help="train ours only")
    p.add_argument("--equal-time", action="store_true",
                   help="at each learning rate train ours (one recipe), then sparsify for ours' "
                   "wall time, for ours' process CPU time and for ours' tokens; table them")
    p.add_argument("--activation", help="comma-separated activations to compare at matched L0 "
                   "(ours only, default lr): k = each --l0s value, or each --penalties value")
    p.add_argument("--l0s", default="16,32,64,128", help="L0 values of --activation")
    p.add_argument("--penalties", help="with --activation: 'relu=0.1,0.3;jumprelu=1e-3,...' "
                   "(default scripts/benchmarks/architecture_table.DEFAULT_PENALTIES)")
    p.add_argument("--json", help="also write every score to this JSON file")
    defaults = DownstreamConfig(model="", layer="")
    p.add_argument("--model", help="the causal LM the store was captured from (e.g. smollm2): "
                   "also splice every SAE into it at --layer and table ΔCE, CE score and KL")
    p.add_argument("--text", default=defaults.text,
                   help=f"evaluation text with --model (default {defaults.text})")
    p.add_argument("--windows", type=int, default=defaults.windows,
                   help=f"evaluation windows with --model (default {defaults.windows})")
    p.add_argument("--seq-len", type=int, default=defaults.seq_len,
                   help=f"tokens per evaluation window (default {defaults.seq_len})")
    return p


def _open(store: str | Path, run_id: str, args: argparse.Namespace) -> ActivationSource:
    """--layer of the run, or with --target-layer the pair of layers (a transcoder's data)."""
    if not args.target_layer:
        return LocalStore(store).open(run_id, args.layer)
    return LocalStore(store).open_pair(run_id, args.layer, args.target_layer)


def _evaluator(args: argparse.Namespace, width: int) -> DownstreamEvaluator:
    """--model spliced at --layer (a transcoder: at its target's module), its width checked."""
    hooked = args.target_layer or args.layer
    evaluator = DownstreamEvaluator.open(DownstreamConfig(
        model=args.model, layer=hooked, text=args.text, windows=args.windows,
        seq_len=args.seq_len))
    if evaluator.width != width:
        raise SystemExit(f"--model {args.model} --layer {hooked}: width {evaluator.width}, but "
                         f"the store has d={width}")
    print(f"# downstream: {args.model} {hooked}, {evaluator.reference.windows.n_kept} kept "
          f"tokens of {args.windows} windows x {args.seq_len} "
          f"({evaluator.reference.windows.description})", flush=True)
    return evaluator


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    recipes = args.recipe or (["default"] if args.equal_time else ["default", "legacy"])
    l0s = [int(v) for v in args.l0s.split(",")]
    if args.activation:  # the activations at matched L0: ours only, each at its default lr
        recipes = architecture_recipes(args.activation.split(","), l0s,
                                       parse_penalties(args.penalties))
        args.lrs, args.no_sparsify = "default", True
    if args.equal_time and len(recipes) != 1:
        raise SystemExit("--equal-time compares one recipe of ours with sparsify: give at most "
                         "one --recipe")

    if args.skip and not args.target_layer:
        raise SystemExit("--skip trains skip-transcoders: give --target-layer too")
    source = _open(args.store, args.run_id, args)
    d = source.n_inputs if args.target_layer else source.d
    args.d_out = source.n_outputs if args.target_layer else 0
    evaluator = _evaluator(args, args.d_out or d) if args.model else None
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        split = split_run(args.store, args.run_id, args.layer, args.heldout, tmp / "store",
                          args.use_tokens, args.target_layer)
        store, heldout, n_train = split.store, split.heldout, split.n_train
        # the trainer's own split is not what is scored (the held-out tail is): keep it at the
        # least that still gives the trainer its MIN_EVAL_TOKENS
        holdout = min(0.5, max(0.001, 2 * MIN_EVAL_TOKENS / n_train))
        base = SaeTrainingConfig(batch_size=args.batch, holdout_fraction=holdout,
                                 epochs=math.ceil(args.tokens / (n_train * (1 - holdout))),
                                 max_train_tokens=args.tokens, seed=args.seed, progress=False)
        lrs = [v.strip() for v in args.lrs.split(",")]
        bad = [v for v in lrs if v != "default" and not _is_float(v)]
        if bad:
            raise SystemExit(f"--lrs: {bad} are neither learning rates nor 'default'")
        loader = ActivationLoader(_open(store, "train", args), base.loader_config())
        print(f"# {args.run_id} {args.layer}: d={d}, n_latents={args.n_latents}, k={args.k}, "
              f"batch {args.batch}, {args.tokens:,} training tokens of {loader.n_train_tokens:,} "
              f"distinct, FVU on the last {args.heldout:,} tokens; torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads", flush=True)
        scores: list[Score] = []
        with_sparsify = not args.no_sparsify and sparsify_available()
        if not args.no_sparsify and not with_sparsify:
            print("# sparsify is not importable (pip install eai-sparsify): ours only")
        for lr in lrs:
            if args.equal_time:  # ours first: its times are sparsify's budgets
                ours = train_ours(store, "train", args.layer, base, d, args, recipes[0], lr,
                                  heldout, tmp, evaluator)
                scores.append(ours)
                print(json.dumps(asdict(ours)), flush=True)
                for clock, budget in (("wall", ours.seconds), ("cpu", ours.cpu_seconds),
                                      ("tokens", 0.0)):
                    if with_sparsify:
                        match = (clock, budget) if clock != "tokens" else None
                        scores.append(replace(train_sparsify(loader, base, d, args, lr, heldout,
                                                             tmp, evaluator, match),
                                              matched=clock))
                        print(json.dumps(asdict(scores[-1])), flush=True)
                continue
            if with_sparsify:
                scores.append(train_sparsify(loader, base, d, args, lr, heldout, tmp,
                                             evaluator))
                print(json.dumps(asdict(scores[-1])), flush=True)
            for recipe in recipes:
                scores.append(train_ours(store, "train", args.layer, base, d, args, recipe, lr,
                                         heldout, tmp, evaluator))
                print(json.dumps(asdict(scores[-1])), flush=True)
    for metric in ("fvu", "delta_ce", "kl") if evaluator is not None else ("fvu",):
        print()
        print(equal_time_table(scores, lrs, metric) if args.equal_time
              else matched_l0_table(scores, l0s) if args.activation
              else table(scores, lrs, metric))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(s) for s in scores], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
