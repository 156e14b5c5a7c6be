"""Chapter "Real early exit": really skipping the layers (ease.decode), against the simulated exit.

From the checkpoint analyses of the exp5-6 runs at α = 0.7: teacher-forced PPL with real and simulated
exit at each threshold (`entry`), and their per-seed difference at threshold 0.5 judged by
companion.judge (`gap`). From the decoding benchmark (results/bench/decode.json, written by
benchmarks/bench_decode.py): measured speedups against the theoretical 1 / Compute, of early exit with either
batch schedule and of lossless self-speculative decoding.
"""
from __future__ import annotations

import html
import statistics
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from ease.config import DOC_THRESHOLDS
from ease.stats import mean_ci

from companion import core, judge

A7, B7 = ("A", 0.7), ("B", 0.7)
GAP_THRESHOLD = 0.5  # where the text compares real and simulated exit
SPEED_TARGET = 0.7  # measured speedup as a share of the theoretical one that counts as "meets the target"
SPEC_TARGET = 1.5  # the aim for lossless self-speculative decoding: the 12-layer model at batch 1
BATCH_TARGET = 0.8  # the aim for batched early exit: batch 16 of the 12-layer model, share of 1 / Compute
# The models whose early-exit speed the chapter shows (the benchmark's other cells are there for speculative
# decoding's acceptance against alpha and setting).
SPEED_MODELS = ("default", "large")


def speed_rows(bench: dict, key: str = "rows") -> list[dict]:
    return [r for r in bench[key] if r["model"] in SPEED_MODELS]
EXIT_COLOR = "#fdae6b"  # background of a character that exited early in the samples (the page's legend uses it)


def entry(analysis: dict, threshold: float) -> dict:
    """A checkpoint analysis's real-exit row (with its simulated twin) at one threshold."""
    return next(e for e in analysis["real_exit"] if abs(e["threshold"] - threshold) < 1e-9)


def gap(recs: Sequence[dict], analyses: dict[str, dict], threshold: float = GAP_THRESHOLD) -> judge.Comparison:
    """Real-exit PPL minus simulated PPL per seed, claimed positive (real exit costs PPL)."""
    diffs = [entry(analyses[r["run_id"]], threshold)["ppl"] - entry(analyses[r["run_id"]], threshold)["sim_ppl"]
             for r in recs]
    return judge.Comparison("ppl", diffs, +1)


def real_exit_table(exp: Sequence[dict], analyses: dict[str, dict], lang: str) -> str:
    h = core.labels(lang)["real_exit"]["table"]
    rows = []
    for cell in (A7, B7):
        recs = core.select(exp, setting=cell[0], alpha=cell[1])
        for t in DOC_THRESHOLDS:
            entries = [entry(analyses[r["run_id"]], t) for r in recs]

            def col(key: str, metric: str) -> str:
                return core.fmt_stat(mean_ci(e[key] for e in entries), metric)

            rows.append({h["run"]: core.cell_name(cell), "τ": f"{t:.2f}",
                         "Shallow": col("shallow_frac", "shallow_frac"), h["ppl_sim"]: col("sim_ppl", "ppl"),
                         h["ppl_real"]: col("ppl", "ppl"), h["compute_layers"]: col("compute_frac", "compute_frac"),
                         h["compute_flops"]: col("flop_compute_frac", "compute_frac")})
    return core.markdown_table(pd.DataFrame(rows))


# --- the decoding benchmark ----------------------------------------------------------------------
def speedup_range(bench: dict, row: dict) -> tuple[float, float]:
    """The speedup of each timed run of `row` against the median full-depth run: its (lowest, highest)."""
    full = next(r for r in bench["rows"] if r["model"] == row["model"] and r["batch"] == row["batch"]
                and r["threshold"] is None)
    median_full = statistics.median(full["times_s"])
    return median_full / max(row["times_s"]), median_full / min(row["times_s"])


def times(value: float, lang: str) -> str:
    """A speedup as the language writes it in text: the number, then the unit from labels (real_exit.times)."""
    return f"{value:.2f}{core.labels(lang)['real_exit']['times']}"


def bench_table(bench: dict, lang: str) -> str:
    h = core.labels(lang)["real_exit"]["bench"]
    rows = []
    for r in speed_rows(bench):
        lo, hi = speedup_range(bench, r)
        rows.append({h["model"]: f"{r['n_layers']}L × {r['dim']}", h["batch"]: str(r["batch"]),
                     "τ": h["full_depth"] if r["threshold"] is None else f"{r['threshold']:g}",
                     "Shallow": core.fmt_value(r["shallow_frac"], "shallow_frac"),
                     h["compute_layers"]: core.fmt_value(r["compute_frac"], "compute_frac"),
                     h["compute_flops"]: core.fmt_value(r["flop_compute_frac"], "compute_frac"),
                     h["rate"]: f"{r['tokens_per_s']:,.0f}",
                     h["speedup"]: f"{r['speedup']:.2f}× ({lo:.2f}–{hi:.2f})",
                     "1 / Compute": f"{r['theoretical_speedup']:.2f}×",
                     h["ratio"]: f"{100 * r['ratio']:.0f}%"})
    return core.markdown_table(pd.DataFrame(rows))


def model_label(row: dict, lang: str) -> str:
    """'12L × 256', or '3L × 64, Setting A, α=0.7' for a model of the document's settings."""
    size = f"{row['n_layers']}L × {row['dim']}"
    return size if row.get("setting") in (None, "custom") else \
        f"{size}, {core.cell_name((row['setting'], row['alpha']), lang)}"


def speculative_table(bench: dict, lang: str) -> str:
    """Lossless self-speculative decoding: per model, batch and draft length, the share of drafted tokens kept,
    the tokens per verification pass and the measured speedup over full-depth decoding (range of runs)."""
    h = core.labels(lang)["real_exit"]["bench"]
    rows = []
    for r in bench["speculative"]:
        lo, hi = speedup_range(bench, r)
        rows.append({h["model"]: model_label(r, lang), h["batch"]: str(r["batch"]), h["draft"]: str(r["draft"]),
                     h["accepted"]: f"{100 * r['acceptance']:.1f}%", h["per_pass"]: f"{r['tokens_per_pass']:.2f}",
                     h["rate"]: f"{r['tokens_per_s']:,.0f}", h["speedup"]: f"{r['speedup']:.2f}× ({lo:.2f}–{hi:.2f})",
                     h["identical"]: h["same_output"] if r["identical"] else h["other_output"]})
    return core.markdown_table(pd.DataFrame(rows))


def grouped_table(bench: dict, lang: str) -> str:
    """Batched early exit at each threshold: the measured speedup as a share of 1 / Compute with the lockstep
    schedule and with the grouped one, the grouped speedup (range of runs) and whether its output is lockstep's."""
    h = core.labels(lang)["real_exit"]["bench"]
    rows = []
    for r in speed_rows(bench, "grouped"):
        lo, hi = speedup_range(bench, r)
        rows.append({h["model"]: model_label(r, lang), h["batch"]: str(r["batch"]), "τ": f"{r['threshold']:g}",
                     h["compute_layers"]: core.fmt_value(r["compute_frac"], "compute_frac"),
                     h["lockstep"]: f"{100 * r['lockstep_ratio']:.0f}%", h["grouped"]: f"{100 * r['ratio']:.0f}%",
                     h["speedup"]: f"{r['speedup']:.2f}× ({lo:.2f}–{hi:.2f})",
                     h["identical"]: h["same_output"] if r["identical"] else h["other_output"]})
    return core.markdown_table(pd.DataFrame(rows))


def samples_html(samples: Sequence[dict], exit_layer: int) -> str:
    """Generated text with each character's background showing whether it exited at `exit_layer`;
    the prompt in grey. The legend is the page's."""
    def span(ch: str, layer: int) -> str:
        color = EXIT_COLOR if layer == exit_layer else "transparent"
        return f'<span style="background:{color}">{html.escape(ch)}</span>'

    lines = []
    for s in samples:
        text = "".join(span(c, layer) for c, layer in zip(s["text"], s["layers"]))
        lines.append(f'<div style="font-family:monospace;white-space:pre-wrap;margin:0.2em 0">'
                     f'<b>τ = {s["threshold"]:g}</b>&nbsp; <span style="color:#888">{html.escape(s["prompt"])}</span>'
                     f'{text}</div>')
    return f'<div class="exit-samples">{"".join(lines)}</div>'


def figure(exp: Sequence[dict], analyses: dict[str, dict], bench: dict, lang: str):
    """Left: PPL against Compute %, simulated and real exit (mean over seeds). Right: measured decoding
    speedup against layer Compute %, beside the theoretical 1 / Compute %."""
    import matplotlib.pyplot as plt

    words = core.labels(lang)["real_exit"]["figure"]
    with core.figure_style(lang):
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
        for i, cell in enumerate((A7, B7)):
            entries = [analyses[r["run_id"]]["real_exit"] for r in core.select(exp, setting=cell[0], alpha=cell[1])]
            comp = 100 * np.mean([[e["compute_frac"] for e in es] for es in entries], axis=0)
            order = np.argsort(comp)
            for key, style, kind in (("sim_ppl", "--", "simulated"), ("ppl", "-", "real")):
                ppl = np.mean([[e[key] for e in es] for es in entries], axis=0)
                left.plot(comp[order], ppl[order], style, marker=".", color=core.color(cell, i),
                          label=words["line"].format(setting=cell[0], kind=words[kind]))
        left.set_xlabel(words["x"])
        left.set_ylabel("PPL")
        left.set_title(words["left_title"], fontsize=10)
        left.legend(fontsize=8)
        xs = np.linspace(0.2, 1.0, 100)
        right.plot(100 * xs, 1 / xs, color="grey", linestyle=":", label=words["theory"])
        markers = {"default": "o", "large": "s"}
        for j, (model, batch) in enumerate(sorted({(r["model"], r["batch"]) for r in speed_rows(bench)})):
            rows = sorted((r for r in speed_rows(bench) if r["model"] == model and r["batch"] == batch),
                          key=lambda r: r["compute_frac"])
            right.plot([100 * r["compute_frac"] for r in rows], [r["speedup"] for r in rows],
                       marker=markers.get(model, "^"), color=f"C{j}",
                       label=words["model"].format(n_layers=rows[0]["n_layers"], dim=rows[0]["dim"], batch=batch))
        right.set_xlabel(words["x"])
        right.set_ylabel(words["speedup"])
        right.set_title(words["right_title"], fontsize=10)
        right.legend(fontsize=8)
        fig.tight_layout()
        return core.finish(fig)


# --- what the page shows -----------------------------------------------------------------------
@dataclass
class RealExit:
    exp: list[dict]
    a7: list[dict]  # setting A at α = 0.7, by seed
    analyses: dict[str, dict]
    bench: dict

    @property
    def gap(self) -> judge.Comparison:
        return gap(self.a7, self.analyses)

    @property
    def large(self) -> dict:
        """The large model at batch 1, at the threshold whose Compute is nearest 50%."""
        return next(r for r in self.bench["nearest_50"] if r["model"] == "large" and r["batch"] == 1)

    @property
    def large_batches(self) -> list[dict]:
        return [r for r in self.bench["nearest_50"] if r["model"] == "large" and r["batch"] > 1]

    @property
    def target_case(self) -> str:
        """'meets' or 'misses': the large model's measured speedup against SPEED_TARGET of the theoretical one."""
        return "meets" if self.large["ratio"] >= SPEED_TARGET else "misses"

    @property
    def best_draft(self) -> dict:
        """The large model's fastest draft length at batch 1 (lossless self-speculative decoding)."""
        return max((r for r in self.bench["speculative"] if r["model"] == "large" and r["batch"] == 1),
                   key=lambda r: r["speedup"])

    @property
    def spec_case(self) -> str:
        return "meets" if self.best_draft["speedup"] >= SPEC_TARGET else "misses"

    @property
    def large_grouped(self) -> dict:
        """The grouped schedule on the large model at its largest batch, at the threshold nearest 50% Compute."""
        near = max(self.large_batches, key=lambda r: r["batch"])
        return next(r for r in self.bench["grouped"] if r["model"] == "large" and r["batch"] == near["batch"]
                    and r["threshold"] == near["threshold"])

    @property
    def grouped_case(self) -> str:
        return "meets" if self.large_grouped["ratio"] >= BATCH_TARGET else "misses"

    @property
    def batch_case(self) -> str:
        """'shrinks' when every larger batch reaches a smaller share of its theoretical speedup than batch 1."""
        return "shrinks" if all(r["ratio"] < self.large["ratio"] for r in self.large_batches) else "holds"


def load(results=None) -> RealExit:
    exp = core.grid_records("exp5-6", results)
    a7 = core.select(exp, setting="A", alpha=0.7)
    analyses = core.grid_analyses(a7 + core.select(exp, setting="B", alpha=0.7), results, held_out=False)
    return RealExit(exp, a7, analyses, core.load_bench(results))


def texts(r: RealExit, lang: str) -> dict[str, str]:
    """The page's glued numbers (rx_* keys)."""
    at = [entry(r.analyses[x["run_id"]], GAP_THRESHOLD) for x in r.a7]
    large, env = r.large, r.bench["env"]
    return {
        "rx_seeds": str(len(r.a7)),
        "rx_sim_05": core.fmt_stat(mean_ci(e["sim_ppl"] for e in at), "ppl"),
        "rx_real_05": core.fmt_stat(mean_ci(e["ppl"] for e in at), "ppl"),
        "rx_gap": core.fmt_stat(r.gap.stat, "ppl"),
        "rx_gap_interval": core.fmt_diff(r.gap.stat, "ppl"),
        "rx_large_threshold": f"{large['threshold']:g}",
        "rx_large_compute": core.fmt_value(large["compute_frac"], "compute_frac"),
        "rx_large_flops": core.fmt_value(large["flop_compute_frac"], "compute_frac"),
        "rx_large_speedup": times(large["speedup"], lang),
        "rx_large_theory": times(large["theoretical_speedup"], lang),
        "rx_large_ratio": f"{100 * large['ratio']:.0f}%",
        "rx_large_batch": core.labels(lang)["real_exit"]["list_sep"].join(
            f"{b['batch']}: {times(b['speedup'], lang)} / {times(b['theoretical_speedup'], lang)}"
            for b in r.large_batches),
        "rx_env": f"{env['platform'].split('-')[0]}, torch {env['torch']}, {env['device']}, "
                  f"{env['threads']} thread(s)",
        "rx_repeats": str(r.bench["settings"]["repeats"]),
        "rx_exit_layer": str(r.a7[0]["config"]["exit_layer"]),
        "rx_exit_swatch": f'<span style="background:{EXIT_COLOR}">&nbsp;{core.labels(lang)["real_exit"]["exit_color"]}&nbsp;</span>',
        "rx_new_tokens": str(r.bench["settings"]["new_tokens"]),
        **spec_texts(r, lang),
    }


def spec_texts(r: RealExit, lang: str) -> dict[str, str]:
    """The numbers of the speculative-decoding and batched-schedule sentences (rx_spec_*, rx_grouped_*)."""
    best, grouped = r.best_draft, r.large_grouped
    lo, hi = speedup_range(r.bench, best)
    return {"rx_spec_draft": str(best["draft"]), "rx_spec_speedup": times(best["speedup"], lang),
            "rx_spec_range": f"{times(lo, lang)}–{times(hi, lang)}",
            "rx_spec_accept": f"{100 * best['acceptance']:.0f}%", "rx_spec_per_pass": f"{best['tokens_per_pass']:.2f}",
            "rx_grouped_batch": str(grouped["batch"]), "rx_grouped_threshold": f"{grouped['threshold']:g}",
            "rx_grouped_compute": core.fmt_value(grouped["compute_frac"], "compute_frac"),
            "rx_grouped_ratio": f"{100 * grouped['ratio']:.0f}%",
            "rx_lockstep_ratio": f"{100 * grouped['lockstep_ratio']:.0f}%"}
