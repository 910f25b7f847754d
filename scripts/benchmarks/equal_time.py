"""The table of scripts/bench_quality.py --equal-time: ours beside sparsify given ours' wall time,
ours' CPU time and ours' tokens (scores are bench_quality.Score)."""

from __future__ import annotations

from typing import Any


def equal_time_table(scores: list[Any], lrs: list[str], metric: str = "fvu") -> str:
    """Per learning rate: ours, then sparsify given ours' wall time and ours' CPU time; the last
    rows put each best (lowest FVU) over sparsify's best under each clock."""
    ours = {s.column: s for s in scores if s.trainer != "sparsify"}
    theirs = {(s.column, s.matched): s for s in scores if s.trainer == "sparsify"}
    lines = [f"{metric} at equal time:", "",
             "| lr | ours | tokens | wall s | CPU s | sparsify, equal wall | tokens | "
             "sparsify, equal CPU | tokens | sparsify, equal tokens | wall s |",
             "|---" * 11 + "|"]

    def cell(s: Any) -> list[str]:
        return [f"{getattr(s, metric):.4f}", f"{s.tokens:,}"] if s else ["", ""]

    def same_tokens(s: Any) -> list[str]:
        return [f"{getattr(s, metric):.4f}", f"{s.seconds:.1f}"] if s else ["", ""]

    for lr in lrs:
        mine = ours.get(lr)
        if mine is None:
            continue
        lines.append("| " + " | ".join([lr, *cell(mine), f"{mine.seconds:.1f}",
                                        f"{mine.cpu_seconds:.1f}", *cell(theirs.get((lr, "wall"))),
                                        *cell(theirs.get((lr, "cpu"))),
                                        *same_tokens(theirs.get((lr, "tokens")))]) + " |")
    if ours:
        best = min(ours.values(), key=lambda s: s.fvu)
        for clock in ("wall", "cpu", "tokens"):
            pool = [s for (_, c), s in theirs.items() if c == clock]
            if pool:
                ref = min(pool, key=lambda s: s.fvu)
                what = "tokens" if clock == "tokens" else f"{clock} time"
                lines.append(f"\nbest ours / best sparsify at equal {what}: "
                             f"{getattr(best, metric) / getattr(ref, metric):.3f} "
                             f"({getattr(best, metric):.4f} at lr {best.column} against "
                             f"{getattr(ref, metric):.4f} at lr {ref.column})")
    return "\n".join(lines)
