"""Which models of a finished study stay on disk. Every trial keeps its record, metrics and curves; its model
(87 MB for a whole MiniLM fine-tune; a head or top layers are saved slim) stays only where it may still be
used: the study's final model and what it is built from, the ``keep`` best models by their recorded value, and
anything registered. Pure: the study driver and ``tuneloop gc`` remove the rest.
"""

from __future__ import annotations

from typing import Any

from tuneloop.tuning.seeds import best_trial, scored

KEEP_MODELS = 3  # of a study: its best models besides the final one and its members


def models_to_keep(trials: list[dict[str, Any]], keep: int = KEEP_MODELS) -> set[str]:
    """The run ids of ``trials`` (stored trial rows) whose models stay: the final model (as ``best_trial``
    picks it) and the trials it is made of (an ensemble's members), and the ``keep`` best-valued models."""
    with_model = [t for t in trials if scored(t) and t.get("run_id")]
    kept: set[str] = set()
    final = best_trial(trials)
    if final is not None and final.get("run_id"):
        kept.add(final["run_id"])
        members = set((final.get("evidence") or {}).get("members", []))
        kept |= {t["run_id"] for t in with_model if t["number"] in members}
    ranked = sorted(with_model, key=lambda t: t["value"], reverse=True)
    kept |= {t["run_id"] for t in ranked[:max(0, keep)]}
    return kept


def models_to_discard(trials: list[dict[str, Any]], registered: set[str], keep: int = KEEP_MODELS) -> list[str]:
    """The run ids of ``trials`` whose models can go: not kept by ``models_to_keep`` and not registered."""
    kept = models_to_keep(trials, keep) | registered
    return [t["run_id"] for t in trials if t.get("run_id") and t["run_id"] not in kept]
