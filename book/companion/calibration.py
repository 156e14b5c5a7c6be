"""Chapter "Calibrated thresholds": does Learn-then-Test's promise hold on the converged models' test text?

Each early-exit run of the `converged` grid has, in the `test` part of its checkpoint analysis
(ease.analysis.held_out_analysis), CALIBRATION_SPLITS random halvings of its test text's blocks: one half
calibrates the threshold (ease.calibrate.learn_then_test), the other measures the risk reached there. For
each risk and tolerance ε this chapter reads:

- the share of splits whose test-half risk exceeds ε (the promise: at most δ);
- the Shallow % and cost the calibrated threshold keeps, against the hindsight threshold, the most
  aggressive fixed threshold whose risk on the whole test text is within ε (what reading a sweep on this
  very text would pick, with no guarantee): the guarantee's price;
- the decoding speedup to expect at that cost: the decoding benchmark's measured speedup of the default
  model (same shape, 3 layers × 64) at batch 1, interpolated at the layer Compute % (`expected_speedup`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ease.calibrate import RISKS
from ease.exits import layer_compute_frac

from companion import core
from companion.held_out import EARLY_EXIT, Model, cost_line, model_name


@dataclass
class Cell:
    """One (risk, ε) over every early-exit model and seed."""

    risk: str
    epsilon: float
    delta: float
    by_model: dict[str, list[dict]]  # model key -> per seed, the analysis's validity run

    def splits(self, key: str | None = None) -> list[dict]:
        return [run for k, runs in self.by_model.items() if key in (None, k) for run in runs]

    def exceeded(self, key: str | None = None) -> float:
        """The share of all splits (of one model, or of every model) whose test risk exceeds ε."""
        runs = self.splits(key)
        return float(np.mean([r > self.epsilon for run in runs for r in run["test_risk"]]))

    def worst(self) -> float:
        """The largest share of one run (model and seed) whose splits exceed ε."""
        return max(run["exceeded"] for run in self.splits())

    @property
    def held(self) -> bool:
        return self.exceeded() <= self.delta

    def shallow(self, key: str) -> float:
        return float(np.mean([np.mean(run["shallow"]) for run in self.by_model[key]]))

    def hindsight_shallow(self, key: str) -> float:
        return float(np.mean([run["oracle_shallow"] for run in self.by_model[key]]))

    def never_exit(self, key: str) -> float:
        """The share of splits where nothing was certified (the calibrated model never exits)."""
        return float(np.mean([t is None for run in self.by_model[key] for t in run["thresholds"]]))

    def quantile(self, key: str, q: float) -> float:
        return float(np.quantile([r for run in self.by_model[key] for r in run["test_risk"]], q))


def cells(ms: dict[str, Model]) -> list[Cell]:
    keys = [f"{s}{a:g}" for s, a in EARLY_EXIT]
    runs = {k: [h["calibration"]["runs"] for h in ms[k].held_out] for k in keys}
    first = runs[keys[0]][0]
    out = []
    for i, run in enumerate(first):
        by_model = {k: [seed_runs[i] for seed_runs in runs[k]] for k in keys}
        for k, seed_runs in by_model.items():
            if any((r["risk"], r["epsilon"], r["delta"]) != (run["risk"], run["epsilon"], run["delta"])
                   for r in seed_runs):
                raise ValueError(f"the calibration runs of {k} are not those of {keys[0]}: analyses of different versions")
        out.append(Cell(run["risk"], run["epsilon"], run["delta"], by_model))
    return out


def cost(model: Model, shallow: float, accounting: str = "flops") -> float:
    a, b = cost_line(model, accounting)
    return a * shallow + b * (1 - shallow)


def expected_speedup(bench: dict, compute: float, batch: int = 1) -> float:
    """The benchmark's measured decoding speedup of the default model at this batch size, interpolated at a
    layer Compute % (rows that decide, i.e. with a threshold; NaN outside their range)."""
    rows = sorted((r["compute_frac"], r["speedup"]) for r in bench["rows"]
                  if r["model"] == "default" and r["batch"] == batch and r["threshold"] is not None)
    xs, ys = np.array([x for x, _ in rows]), np.array([y for _, y in rows])
    if not xs.size or not xs[0] - 1e-9 <= compute <= xs[-1] + 1e-9:
        return float("nan")
    return float(np.interp(compute, xs, ys))


def layer_cost(model: Model, shallow: float) -> float:
    c = model.records[0]["config"]
    return layer_compute_frac(shallow, c["exit_layer"], c["n_layers"])


def texts(ms: dict[str, Model], found: list[Cell]) -> dict[str, str]:
    h = ms["A0.7"].held_out[0]["calibration"]
    return {"cal_splits": str(found[0].by_model["A0.7"][0]["splits"]), "cal_blocks": str(h["n_blocks"]),
            "cal_block_tokens": f"{h['block_tokens']:,}", "cal_half": str(h["n_blocks"] // 2),
            "cal_delta": f"{found[0].delta:g}", "cal_epsilons": ", ".join(sorted({f"{c.epsilon:g}" for c in found})),
            "cal_runs": str(sum(len(v) for v in found[0].by_model.values())),
            "cal_worst": f"{100 * max(c.worst() for c in found):.1f}%",
            "cal_thresholds": str(len(h["thresholds"]))}


def price_texts(ms: dict[str, Model], found: list[Cell], bench: dict) -> dict[str, str]:
    """The guarantee's price over every cell and model: the calibrated Shallow % as a share of the hindsight
    threshold's (range), and the largest expected speedup of either threshold."""
    kept = [c.shallow(k) / c.hindsight_shallow(k) for c in found for k in c.by_model if c.hindsight_shallow(k) > 0]
    speed = [expected_speedup(bench, layer_cost(ms[k], x)) for c in found for k in c.by_model
             for x in (c.shallow(k), c.hindsight_shallow(k))]
    speed = [x for x in speed if np.isfinite(x)]
    return {"cal_kept_lo": f"{100 * min(kept):.0f}%", "cal_kept_hi": f"{100 * max(kept):.0f}%",
            "cal_best_speedup": f"{max(speed):.2f}×" if speed else "—"}


def case(found: list[Cell]) -> str:
    return "held" if all(c.held for c in found) else "broken"


def table(ms: dict[str, Model], found: list[Cell], bench: dict, lang: str) -> str:
    words = core.labels(lang)["calibration"]
    h = words["table"]
    rows = []
    for c in found:
        for key in c.by_model:
            m = ms[key]
            rows.append({h["risk"]: words["risk"][c.risk], "ε": f"{c.epsilon:g}", h["model"]: model_name(key, lang),
                         h["exceeded"]: f"{100 * c.exceeded(key):.1f}%",
                         h["q90"]: f"{c.quantile(key, 1 - c.delta):.4f}",
                         h["shallow"]: f"{100 * c.shallow(key):.1f}%",
                         h["hindsight"]: f"{100 * c.hindsight_shallow(key):.1f}%",
                         h["cost"]: f"{100 * cost(m, c.shallow(key)):.1f}%",
                         h["hindsight_cost"]: f"{100 * cost(m, c.hindsight_shallow(key)):.1f}%",
                         h["speedup"]: _times(expected_speedup(bench, layer_cost(m, c.shallow(key)))),
                         h["hindsight_speedup"]: _times(expected_speedup(bench, layer_cost(m, c.hindsight_shallow(key)))),
                         h["never"]: f"{100 * c.never_exit(key):.0f}%"})
    return core.markdown_table(pd.DataFrame(rows))


def _times(x: float) -> str:
    return "—" if not np.isfinite(x) else f"{x:.2f}×"


def figure(found: list[Cell], lang: str):
    """Target ε against the test risk reached, per risk: every split's test risk (points, jittered) and each
    model's (1 - δ) quantile across splits (bars), with the line risk = ε; and the Shallow % kept."""
    import matplotlib.pyplot as plt

    words = core.labels(lang)["calibration"]
    keys = list(found[0].by_model)
    with core.figure_style(lang):
        fig, axes = plt.subplots(1, len(RISKS) + 1, figsize=(13, 4))
        rng = np.random.default_rng(0)
        for ax, risk in zip(axes, RISKS):
            mine = [c for c in found if c.risk == risk]
            eps = np.array([c.epsilon for c in mine])
            for i, key in enumerate(keys):
                offset = (i - (len(keys) - 1) / 2) * 0.06
                for j, c in enumerate(mine):
                    r = np.array([x for run in c.by_model[key] for x in run["test_risk"]])
                    x = np.log10(c.epsilon) + offset + rng.uniform(-0.012, 0.012, r.size)
                    ax.scatter(10 ** x, r, s=2, alpha=0.15, color=f"C{i}")
                    ax.plot(10 ** (np.log10(c.epsilon) + offset), c.quantile(key, 1 - c.delta), marker="_",
                            markersize=14, color=f"C{i}", label=model_name(key, lang) if j == 0 else None)
            ax.plot(eps, eps, color="black", linewidth=1, label=words["promise"])
            ax.set(xscale="log", xlabel=words["epsilon"], ylabel=words["test_risk"], title=words["risk"][risk])
            ax.set_xticks(eps, [f"{e:g}" for e in eps])
            ax.minorticks_off()
        axes[0].legend(fontsize=7)
        ax = axes[-1]
        for i, key in enumerate(keys):
            for risk, marker in zip(RISKS, ("o", "s")):
                mine = [c for c in found if c.risk == risk]
                ax.plot([c.epsilon for c in mine], [100 * c.shallow(key) for c in mine], marker=marker,
                        color=f"C{i}", linewidth=1)
                ax.plot([c.epsilon for c in mine], [100 * c.hindsight_shallow(key) for c in mine], marker=marker,
                        color=f"C{i}", linewidth=0.8, linestyle=":", fillstyle="none")
        ax.set(xscale="log", xlabel=words["epsilon"], ylabel=words["shallow"], title=words["kept"])
        eps = sorted({c.epsilon for c in found})
        ax.set_xticks(eps, [f"{e:g}" for e in eps])
        ax.minorticks_off()
        fig.tight_layout()
        return core.finish(fig)
