"""Everything the book's pages show: record selection, statistics, tables, claims and figures.

The book (book/en, book/ja) only presents what these functions return, so every number and every
data-dependent statement in it is computed here from the run records (and from the experiment
document's published values in book/data/published.yaml, the one file of hand-typed numbers).
Each function that returns something readers see takes `lang` ("en" or "ja").

Which records are "the book's grid": the reference configs of the pipeline's `exp5-6` grid
(setting A at α 0.3/0.5/0.7, B at 0.7, the document's sizes), seed ignored. When the results
folder holds no complete set of such records (e.g. small development runs), the one other set of
records that covers every (setting, α) cell with a single shared configuration is used instead,
and the book says how it differs from the reference.
"""
from __future__ import annotations

import json
import math
import os
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import yaml

from ease.config import DOC_THRESHOLDS, RunConfig
from ease.exits import layer_compute_frac
from ease.results import load_records
from ease.stats import CI_LEVEL, Stat, diff_ci, mean_ci  # noqa: F401 (mean_ci: part of the report API)

RESULTS_ENV = "EASE_RESULTS"
REPO_ROOT = Path(__file__).resolve().parents[1]
PUBLISHED_PATH = REPO_ROOT / "book" / "data" / "published.yaml"
BOOK_GRID = "exp5-6"  # the pipeline grid whose runs the book reports
LANGS = ("en", "ja")
# Fonts tried, in order, for Japanese figure text (fonts-noto-cjk provides the first).
CJK_FONTS = ("Noto Sans CJK JP", "Noto Serif CJK JP", "IPAexGothic", "IPAGothic", "TakaoGothic",
             "Source Han Sans JP", "Source Han Sans")
CJK_FILE_PATTERN = re.compile(r"(NotoSansCJK|NotoSerifCJK|SourceHanSans|ipaexg|ipag)", re.I)
METRICS = ("ppl", "shallow_frac", "compute_frac")
# Fields that vary inside the grid; everything else of a config must be shared by the book's records.
CELL_FIELDS = ("setting", "alpha", "weights", "seed")


def _check_lang(lang: str) -> str:
    if lang not in LANGS:
        raise ValueError(f"lang must be one of {LANGS}, got {lang!r}")
    return lang


def _pick(lang: str, en: str, ja: str) -> str:
    return en if _check_lang(lang) == "en" else ja


# --- inputs --------------------------------------------------------------------------------------
def results_dir() -> Path:
    """The results folder the book reads: $EASE_RESULTS, else ./results (book/build.py always sets it)."""
    return Path(os.environ.get(RESULTS_ENV) or "results")


def load_published(path: str | Path = PUBLISHED_PATH) -> dict:
    """The document's published values (see the comments in the file for where each comes from)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"published values file {path} is missing; it holds the experiment document's "
                                "tables that the book compares against")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    for key in ("setup", "exp5_alpha", "exp5_threshold", "exp6_settings", "exp6_threshold", "discussion"):
        if key not in data:
            raise ValueError(f"{path}: section {key!r} is missing")
    return data


def reference_configs(grid: str = BOOK_GRID) -> list[RunConfig]:
    """The pipeline grid's configs (all seeds): what the book's records should be."""
    from ease.pipeline import expand_grid, load_grid

    return expand_grid(load_grid(grid))


def _rest(config: dict, drop: Sequence[str]) -> str:
    """A config without the fields in `drop`, as canonical JSON (a hashable grouping key)."""
    return json.dumps({k: v for k, v in config.items() if k not in drop}, sort_keys=True)


def _cell(config: dict) -> tuple[str, float]:
    return config["setting"], float(config["alpha"])


@dataclass
class Grid:
    """The book's records: per (setting, alpha) cell, every seed's record."""

    results_dir: Path
    cells: list[tuple[str, float]]  # in the grid's order
    runs: dict[tuple[str, float], list[dict]]  # cell -> records, by seed
    base: dict  # the config fields shared by all runs (no setting/alpha/weights/seed)
    deviations: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # field -> (ours, reference)

    def cell(self, setting: str, alpha: float) -> list[dict]:
        key = (setting, float(alpha))
        if key not in self.runs:
            raise KeyError(f"the book's grid has no cell setting={setting} alpha={alpha:g}; it has {self.cells}")
        return self.runs[key]

    def records(self) -> list[dict]:
        return [r for c in self.cells for r in self.runs[c]]

    def values(self, setting: str, alpha: float, metric: str, threshold: float | None = None) -> list[float]:
        """One value per seed: a record metric, or a sweep entry's at `threshold`."""
        out = []
        for record in self.cell(setting, alpha):
            if threshold is None:
                out.append(float(record["metrics"][metric]))
            else:
                out.append(float(sweep_row(record, threshold)[metric]))
        return out

    def stat(self, setting: str, alpha: float, metric: str, threshold: float | None = None) -> "Stat":
        return mean_ci(self.values(setting, alpha, metric, threshold))

    @property
    def seeds(self) -> dict[tuple[str, float], list[int]]:
        return {c: [r["config"]["seed"] for r in self.runs[c]] for c in self.cells}


def sweep_row(record: dict, threshold: float) -> dict:
    for row in record["sweep"]:
        if abs(row["threshold"] - threshold) < 1e-9:
            return row
    raise ValueError(f"record {record['run_id']} has no sweep entry at threshold {threshold:g}; the book needs "
                     f"its sweep_thresholds to include the document's thresholds {DOC_THRESHOLDS}")


def select_grid(records: list[dict], references: Sequence[RunConfig], results: Path | str = "") -> Grid:
    """Pick the book's records out of `records` (see the module docstring for the rule)."""
    ref_dicts = [json.loads(json.dumps(c.to_dict())) for c in references]
    cells = list(dict.fromkeys(_cell(c) for c in ref_dicts))
    ref_keys = {_rest(c, ("seed",)) for c in ref_dicts}

    def complete(recs: list[dict]) -> bool:
        return {_cell(r["config"]) for r in recs} >= set(cells)

    in_cells = [r for r in records if r["config"]["setting"] in ("A", "B") and r["config"]["alpha"] is not None
                and _cell(r["config"]) in cells]
    exact = [r for r in in_cells if _rest(r["config"], ("seed",)) in ref_keys]
    if exact and complete(exact):
        chosen = exact
    else:
        groups: dict[str, list[dict]] = {}
        for r in in_cells:
            groups.setdefault(_rest(r["config"], CELL_FIELDS), []).append(r)
        full = {k: v for k, v in groups.items() if complete(v)}
        where = f"in {Path(results) / 'runs'}" if results else "among the records given"
        wanted = ", ".join(f"{s} α={a:g}" for s, a in cells)
        if not full:
            seen = sorted({f"{s} α={a:g}" for s, a in (_cell(r["config"]) for r in in_cells)})
            raise LookupError(
                f"no complete set of records for the book's grid ({wanted}) {where}: found "
                f"{len(records)} record(s), covering {seen or 'none of those cells'}. Run the grid first: "
                f"python -m ease.pipeline --grid {BOOK_GRID} --results <that folder>")
        if len(full) > 1:
            diffs = [_diff(json.loads(k), json.loads(next(iter(full)))) for k in list(full)[1:]]
            raise LookupError(
                f"{len(full)} different configurations each cover the book's grid ({wanted}) {where}; they "
                f"differ in {sorted({f for d in diffs for f in d})}. Keep one set of runs per results folder.")
        chosen = next(iter(full.values()))
    runs = {c: sorted((r for r in chosen if _cell(r["config"]) == c), key=lambda r: r["config"]["seed"])
            for c in cells}
    base = {k: v for k, v in chosen[0]["config"].items() if k not in CELL_FIELDS}
    ref_base = {k: v for k, v in ref_dicts[0].items() if k not in CELL_FIELDS}
    return Grid(Path(results), cells, runs, base, _diff(base, ref_base))


def _diff(ours: dict, ref: dict) -> dict[str, tuple[Any, Any]]:
    return {k: (ours.get(k), ref.get(k)) for k in sorted(set(ours) | set(ref)) if ours.get(k) != ref.get(k)}


def book_grid(results: str | Path | None = None) -> Grid:
    """The book's records from a results folder (default: `results_dir()`)."""
    results = Path(results) if results is not None else results_dir()
    if not (results / "runs").is_dir():
        raise FileNotFoundError(f"no run records: {results / 'runs'} does not exist. Produce them with "
                                f"python -m ease.pipeline --grid {BOOK_GRID} --results {results}, or point "
                                f"{RESULTS_ENV} at a results folder that has them")
    return select_grid(load_records(results), reference_configs(), results)


# --- formatting ----------------------------------------------------------------------------------
DIGITS = {"ppl": 2, "shallow_frac": 1, "compute_frac": 1}
PERCENT = {"ppl": False, "shallow_frac": True, "compute_frac": True}


def fmt_value(value: float, metric: str) -> str:
    if PERCENT[metric]:
        return f"{100 * value:.{DIGITS[metric]}f}%"
    return f"{value:.{DIGITS[metric]}f}"


def fmt_stat(stat: Stat, metric: str) -> str:
    """'12.34 ± 0.56' (mean ± CI half-width), or the bare mean with one seed."""
    scale = 100 if PERCENT[metric] else 1
    unit = "%" if PERCENT[metric] else ""
    digits = DIGITS[metric]
    if stat.half is None:
        return f"{scale * stat.mean:.{digits}f}{unit}"
    return f"{scale * stat.mean:.{digits}f} ± {scale * stat.half:.{digits}f}{unit}"


def fmt_published(row: dict, metric: str) -> str:
    key = {"ppl": "ppl", "shallow_frac": "shallow_pct", "compute_frac": "compute_pct"}[metric]
    value = row[key]
    return f"{value:.{DIGITS[metric]}f}" + ("%" if PERCENT[metric] else "")


def markdown_table(df: pd.DataFrame) -> str:
    """A pipe table (MyST renders it as a real table); every cell must be a non-empty string."""
    for col in df.columns:
        for value in df[col]:
            if not isinstance(value, str) or not value.strip() or value.strip().lower() == "nan":
                raise ValueError(f"table column {col!r} has an empty or non-text cell {value!r}")

    def esc(s: str) -> str:
        return str(s).replace("|", "\\|")

    lines = ["| " + " | ".join(esc(c) for c in df.columns) + " |",
             "|" + "|".join(":---" if i == 0 else "---:" for i in range(len(df.columns))) + "|"]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _setting_name(setting: str, lang: str) -> str:
    return _pick(lang, f"Setting {setting}", f"設定{setting}")


# Column headers of the result tables.
def _headers(lang: str) -> dict[str, str]:
    if lang == "en":
        return {"doc": "doc", "ours": "repro", "ppl": "PPL", "shallow_frac": "Shallow", "compute_frac": "Compute",
                "seeds": "n", "alpha": "α", "threshold": "τ", "setting": "setting"}
    return {"doc": "文書", "ours": "再現", "ppl": "PPL", "shallow_frac": "Shallow", "compute_frac": "Compute",
            "seeds": "n", "alpha": "α", "threshold": "閾値 τ", "setting": "設定"}


def _metric_columns(h: dict, published: dict | None, grid: Grid, setting: str, alpha: float,
                    threshold: float | None) -> dict[str, str]:
    row = {}
    for m in METRICS:
        row[f"{h[m]} {h['doc']}"] = fmt_published(published, m) if published else "—"
        row[f"{h[m]} {h['ours']}"] = fmt_stat(grid.stat(setting, alpha, m, threshold), m)
    row[h["seeds"]] = str(len(grid.cell(setting, alpha)))
    return row


# --- tables --------------------------------------------------------------------------------------
def exp5_alpha_table(grid: Grid, published: dict, lang: str) -> str:
    """Setting A for each α: the document's row beside ours (at the runs' own threshold)."""
    h = _headers(lang)
    doc_rows = {float(r["alpha"]): r for r in published["exp5_alpha"]["rows"]}
    rows = []
    for setting, alpha in grid.cells:
        if setting != published["exp5_alpha"]["setting"]:
            continue
        rows.append({h["alpha"]: f"{alpha:g}", **_metric_columns(h, doc_rows.get(alpha), grid, setting, alpha, None)})
    return markdown_table(pd.DataFrame(rows))


def exp5_threshold_table(grid: Grid, published: dict, lang: str) -> str:
    """Setting A at α = 0.7 for each of the document's thresholds."""
    h = _headers(lang)
    doc = published["exp5_threshold"]
    rows = [{h["threshold"]: f"{r['threshold']:.2f}",
             **_metric_columns(h, r, grid, doc["setting"], doc["alpha"], r["threshold"])} for r in doc["rows"]]
    return markdown_table(pd.DataFrame(rows))


def exp6_settings_table(grid: Grid, published: dict, lang: str) -> str:
    """A and B at α = 0.7 (the runs' own threshold)."""
    h = _headers(lang)
    doc = published["exp6_settings"]
    rows = []
    for r in doc["rows"]:
        rows.append({h["setting"]: r["setting"], **_metric_columns(h, r, grid, r["setting"], doc["alpha"], None)})
    return markdown_table(pd.DataFrame(rows))


def exp6_threshold_table(grid: Grid, published: dict, lang: str) -> str:
    h = _headers(lang)
    doc = published["exp6_threshold"]
    rows = [{h["setting"]: r["setting"], h["threshold"]: f"{r['threshold']:.2f}",
             **_metric_columns(h, r, grid, r["setting"], doc["alpha"], r["threshold"])} for r in doc["rows"]]
    return markdown_table(pd.DataFrame(rows))


def setup_table(grid: Grid, published: dict, lang: str) -> str:
    """The configuration the records were trained with, beside what the document states."""
    b, doc = grid.base, published["setup"]
    not_stated = _pick(lang, "not stated", "記載なし")
    sweep = b["sweep_thresholds"]
    rows = [
        (_pick(lang, "layers", "層数"), str(b["n_layers"]), str(doc["n_layers"])),
        (_pick(lang, "width (dim) / heads", "幅 (dim) / ヘッド数"), f"{b['dim']} / {b['n_heads']}", not_stated),
        (_pick(lang, "normalisation", "正規化"), f"{b['norm']}-norm (RMSNorm)", not_stated),
        (_pick(lang, "corpus", "コーパス"), str(b["corpus"]), str(doc["corpus"])),
        (_pick(lang, "training characters", "学習文字数"), f"{b['train_chars']:,}", f"{doc['train_chars']:,}"),
        (_pick(lang, "validation characters", "検証文字数"), f"{b['val_chars']:,}", not_stated),
        (_pick(lang, "vocabulary built from", "語彙の構築元"), str(b["vocab_from"]), not_stated),
        (_pick(lang, "sequence length / batch size", "系列長 / バッチサイズ"),
         f"{b['seq_len']} / {b['batch_size']}", not_stated),
        (_pick(lang, "optimiser", "最適化"), f"AdamW, lr {b['lr']:g}, grad clip {b['grad_clip']:g}", not_stated),
        (_pick(lang, "epochs (max) / patience", "最大エポック数 / patience"),
         f"{b['max_epochs']} / {b['patience']}", not_stated),
        (_pick(lang, "loss", "損失"), _pick(lang, "weighted sum of per-layer cross-entropy",
                                              "層ごとの交差エントロピーの重み付き和"), str(doc["loss"])),
        (_pick(lang, "exit layer", "早期退出層"), f"L{b['exit_layer']}", not_stated),
        (_pick(lang, "operating threshold", "運用閾値"), f"{b['threshold']:g}", not_stated),
        (_pick(lang, "threshold sweep", "閾値スイープ"),
         _pick(lang, f"{len(sweep)} values, {min(sweep):g} to {max(sweep):g}",
               f"{min(sweep):g}〜{max(sweep):g} の {len(sweep)} 点"), not_stated),
    ]
    cols = [_pick(lang, "item", "項目"), _pick(lang, "this book's runs", "本書の実行"),
            _pick(lang, "document", "文書")]
    return markdown_table(pd.DataFrame(rows, columns=cols))


def training_table(grid: Grid, lang: str) -> str:
    """Per cell: epochs run, best epoch, training time and throughput (means over seeds)."""
    rows = []
    for setting, alpha in grid.cells:
        recs = grid.cell(setting, alpha)
        rows.append({
            _pick(lang, "run", "実行"): f"{_setting_name(setting, lang)}, α={alpha:g}",
            _pick(lang, "seeds", "シード"): ", ".join(str(r["config"]["seed"]) for r in recs),
            _pick(lang, "epochs run", "実行エポック数"): ", ".join(str(r["metrics"]["epochs_run"]) for r in recs),
            _pick(lang, "best epoch", "最良エポック"): ", ".join(str(r["metrics"]["best_epoch"]) for r in recs),
            _pick(lang, "training time (s, mean)", "学習時間（秒, 平均）"):
                f"{np.mean([r['timing']['train_s'] for r in recs]):.1f}",
            _pick(lang, "tokens/s (mean)", "トークン/秒（平均）"):
                f"{np.mean([r['timing']['tokens_per_s'] for r in recs]):,.0f}",
        })
    return markdown_table(pd.DataFrame(rows))


def environment_table(grid: Grid, lang: str) -> str:
    envs = sorted({(r["env"]["torch"], r["env"]["python"], r["env"]["device"], str(r["env"]["threads"]))
                   for r in grid.records()})
    rows = [{"PyTorch": t, "Python": p, _pick(lang, "device", "デバイス"): d,
             _pick(lang, "threads", "スレッド数"): th,
             _pick(lang, "runs", "実行数"): str(sum(1 for r in grid.records()
                                                  if (r["env"]["torch"], r["env"]["python"], r["env"]["device"],
                                                      str(r["env"]["threads"])) == (t, p, d, th)))}
            for t, p, d, th in envs]
    return markdown_table(pd.DataFrame(rows))


def runs_table(grid: Grid, lang: str, link_prefix: str = "runs/") -> str:
    """Every run of the book's grid with a link to its executed notebook page."""
    rows = []
    for setting, alpha in grid.cells:
        for r in grid.cell(setting, alpha):
            rows.append({_pick(lang, "run", "実行"): f"[`{r['run_id']}`]({link_prefix}{r['run_id']}.ipynb)",
                         _pick(lang, "setting", "設定"): setting, "α": f"{alpha:g}",
                         _pick(lang, "seed", "シード"): str(r["config"]["seed"]),
                         "PPL": fmt_value(r["metrics"]["ppl"], "ppl"),
                         _pick(lang, "epochs", "エポック"): str(r["metrics"]["epochs_run"])})
    return markdown_table(pd.DataFrame(rows))


# --- the document's own consistency ---------------------------------------------------------------
def _implied_compute(shallow_pct: float, exit_layer: int = 1, n_layers: int = 3) -> float:
    """Compute % implied by a Shallow %: an exited token costs exit_layer/n_layers, the rest 1."""
    return 100 * layer_compute_frac(shallow_pct / 100, exit_layer, n_layers)


def document_rows(published: dict) -> list[tuple[str, dict]]:
    """Every (table name, row) of the document's result tables."""
    out = []
    for key in ("exp5_alpha", "exp5_threshold", "exp6_settings", "exp6_threshold"):
        out += [(key, r) for r in published[key]["rows"]]
    return out


def consistency_table(published: dict, lang: str) -> str:
    """For each document row: its Compute % against the one its Shallow % implies."""
    names = {"exp5_alpha": _pick(lang, "Exp. 5 results", "実験5 結果"),
             "exp5_threshold": _pick(lang, "Exp. 5 thresholds", "実験5 閾値分析"),
             "exp6_settings": _pick(lang, "Exp. 6 results", "実験6 結果"),
             "exp6_threshold": _pick(lang, "Exp. 6 thresholds", "実験6 閾値比較")}
    rows = []
    for key, r in document_rows(published):
        label = ", ".join(p for p in (
            _setting_name(r.get("setting", published[key].get("setting", "")), lang),
            f"α={r['alpha']:g}" if "alpha" in r else f"α={published[key]['alpha']:g}",
            f"{_pick(lang, 'threshold', '閾値')} {r['threshold']:.2f}" if "threshold" in r else ""
        ) if p)
        implied = _implied_compute(r["shallow_pct"])
        rows.append({_pick(lang, "table", "表"): names[key], _pick(lang, "row", "行"): label,
                     "Shallow %": f"{r['shallow_pct']:.1f}%",
                     _pick(lang, "Compute % (printed)", "Compute %（記載値）"): f"{r['compute_pct']:.1f}%",
                     _pick(lang, "Compute % (implied)", "Compute %（Shallow % からの計算値）"): f"{implied:.2f}%",
                     _pick(lang, "difference (pp)", "差 (pt)"): f"{r['compute_pct'] - implied:+.2f}"})
    return markdown_table(pd.DataFrame(rows))


# --- claims: every data-dependent sentence of the book --------------------------------------------
def _ci_phrase(stat: Stat, metric: str, lang: str) -> str:
    if stat.half is None:
        return _pick(lang, f"{fmt_stat(stat, metric)} (one seed, no interval)",
                     f"{fmt_stat(stat, metric)}（シード1つのため区間なし）")
    return _pick(lang, f"{fmt_stat(stat, metric)} (95% CI, {stat.n} seeds)",
                 f"{fmt_stat(stat, metric)}（95% 信頼区間, シード {stat.n} 個）")


def _ordered(values: Sequence[float]) -> str:
    """'increasing', 'decreasing' or 'mixed' for a sequence of means."""
    d = np.diff(values)
    if np.all(d > 0):
        return "increasing"
    if np.all(d < 0):
        return "decreasing"
    return "mixed"


def facts(grid: Grid, published: dict, lang: str) -> dict[str, str]:
    """Every number and data-dependent statement the pages paste (MyST markdown strings)."""
    _check_lang(lang)
    f: dict[str, str] = {}
    say = lambda en, ja: _pick(lang, en, ja)  # noqa: E731
    b = grid.base
    A, B = "A", "B"
    alpha6 = float(published["exp6_settings"]["alpha"])
    n_seeds = sorted({len(v) for v in grid.runs.values()})
    # -- provenance
    f["n_runs"] = str(len(grid.records()))
    f["table_legend"] = say("Columns: *doc* is the document's published value, *repro* the reproduced mean "
                            "± the half-width of its 95% t-interval over the *n* seeds; Shallow and Compute are "
                            "percentages."
                            + (" A configuration with a single seed has no interval: its cell shows the bare value."
                               if n_seeds[0] == 1 else ""),
                            "列の見方: *文書* は文書の掲載値、*再現* は *n* 個のシードでの再現値の平均 ± 95% "
                            "t 区間の半幅。Shallow と Compute は百分率。"
                            + ("シードが1つの設定には区間がなく、値のみを示す。" if n_seeds[0] == 1 else ""))
    f["n_cells"] = str(len(grid.cells))
    f["seeds"] = (str(n_seeds[0]) if len(n_seeds) == 1 else f"{n_seeds[0]}–{n_seeds[-1]}")
    f["ci_note"] = (say("With a single seed per configuration no confidence interval can be computed: the tables "
                        "show bare values.",
                        "各設定のシードが1つしかないため信頼区間は計算できず、表には値のみを示す。")
                    if n_seeds[-1] == 1 else
                    say(f"Reproduced values are means over seeds ± the half-width of the {CI_LEVEL:.0%} "
                        "t-interval (Student's t, n − 1 degrees of freedom)"
                        + ("; a configuration with a single seed shows its bare value." if n_seeds[0] == 1 else "."),
                        f"再現値はシード間の平均 ± {CI_LEVEL:.0%} t 区間の半幅（自由度 n − 1 の Student の t 分布）"
                        + ("。シードが1つの設定は値のみを示す。" if n_seeds[0] == 1 else "。")))
    if grid.deviations:
        items = ", ".join(f"`{k}` = {_short(v[0])} ({say('reference', '基準')} {_short(v[1])})"
                          for k, v in grid.deviations.items())
        f["grid_note"] = say(
            f"**These records are not the reference runs.** They differ from the `{BOOK_GRID}` grid's configuration "
            f"in: {items}. Their numbers are not comparable with the document's.",
            f"**これらの記録は基準となる実行ではない。** `{BOOK_GRID}` グリッドの設定と次の点が異なる: {items}。"
            "したがって数値は文書の値と比較できない。")
    else:
        f["grid_note"] = say(f"The records use exactly the configuration of the `{BOOK_GRID}` grid, which "
                             "follows the document's stated setup.",
                             f"記録は `{BOOK_GRID}` グリッドの設定（文書に記載された条件に従う）と完全に一致する。")
    for k in ("n_layers", "dim", "n_heads", "seq_len", "batch_size", "max_epochs", "patience", "exit_layer"):
        f[f"cfg_{k}"] = str(b[k])
    f["cfg_train_chars"] = f"{b['train_chars']:,}"
    f["cfg_val_chars"] = f"{b['val_chars']:,}"
    f["cfg_threshold"] = f"{b['threshold']:g}"
    f["cfg_lr"] = f"{b['lr']:g}"
    f["cfg_norm"] = str(b["norm"])
    f["cfg_compute_exit"] = f"{b['exit_layer']}/{b['n_layers']}"
    f["eval_tokens"] = f"{grid.records()[0]['metrics']['eval_tokens']:,}"
    wB = grid.cell(B, alpha6)[0]["config"]["weights"]
    f["b_middle_weight"] = ", ".join(f"{wB[str(layer)]:g}" for layer in range(2, b["n_layers"]))
    wA = grid.cell(A, alpha6)[0]["config"]["weights"]
    last = str(b["n_layers"])
    f["weight_sum_a"], f["weight_sum_b"] = f"{sum(wA.values()):g}", f"{sum(wB.values()):g}"
    f["last_share_a"] = f"{wA[last] / sum(wA.values()):.0%}"
    f["last_share_b"] = f"{wB[last] / sum(wB.values()):.0%}"
    epochs = [r["metrics"]["epochs_run"] for r in grid.records()]
    f["epochs_min"], f["epochs_max"] = str(min(epochs)), str(max(epochs))
    f["doc_train_chars"] = f"{published['setup']['train_chars']:,}"

    # -- experiment 5: α
    alphas = [a for s, a in grid.cells if s == A]
    ppl = {a: grid.stat(A, a, "ppl") for a in alphas}
    best = min(alphas, key=lambda a: ppl[a].mean)
    doc_alpha = {float(r["alpha"]): r for r in published["exp5_alpha"]["rows"]}
    doc_best = min(doc_alpha, key=lambda a: doc_alpha[a]["ppl"])
    f["exp5_best_alpha"] = f"{best:g}"
    f["exp5_best_ppl"] = _ci_phrase(ppl[best], "ppl", lang)  # e.g. "16.80 ± 6.46 (95% CI, 2 seeds)"
    f["exp5_doc_best_alpha"] = f"{doc_best:g}"
    f["exp5_doc_best_ppl"] = f"{doc_alpha[doc_best]['ppl']:.2f}"
    trend = _ordered([ppl[a].mean for a in alphas])
    doc_trend = _ordered([doc_alpha[a]["ppl"] for a in sorted(doc_alpha)])
    f["exp5_alpha_trend"] = {
        "increasing": say("mean PPL rises as α grows", "α を大きくするほど平均 PPL は上がる"),
        "decreasing": say("mean PPL falls as α grows", "α を大きくするほど平均 PPL は下がる"),
        "mixed": say("mean PPL does not change monotonically with α", "平均 PPL は α に対して単調に変化しない"),
    }[trend]
    f["exp5_alpha_trend_agrees"] = (say("as in the document", "これは文書と同じ傾向である") if trend == doc_trend
                                    else say("unlike the document, where PPL falls as α grows",
                                             "文書では α とともに PPL が下がっており、傾向は一致しない")
                                    if doc_trend == "decreasing" else say("unlike the document", "文書とは異なる"))
    f["exp5_best_agrees"] = (say("This matches the document's best α.", "文書が最良とした α と一致する。")
                             if best == doc_best else
                             say(f"The document's best α is {doc_best:g} instead.",
                                 f"一方、文書で最良とされたのは α = {doc_best:g} である。"))
    spread = max(p.mean for p in ppl.values()) - min(p.mean for p in ppl.values())
    widest = max((p.half or 0.0) for p in ppl.values())
    f["exp5_alpha_spread"] = f"{spread:.2f}"
    f["exp5_alpha_resolved"] = (
        say("not judged: with one seed there is no confidence interval", "シードが1つのため信頼区間では評価できない")
        if n_seeds[0] < 2 else
        say("larger than the widest 95% CI half-width", "最大の 95% 信頼区間の半幅より大きい")
        if spread > widest else
        say("within the 95% CI half-width of at least one α, so the α ordering is not resolved by these seeds",
            "少なくとも1つの α の 95% 信頼区間の半幅に収まっており、これらのシードでは α の順位は確定しない"))
    f["exp5_alpha_ci_max"] = f"{widest:.2f}"
    # reproduced vs document at α = 0.7
    a07 = ppl.get(alpha6, ppl[best])
    doc07 = doc_alpha.get(alpha6, doc_alpha[doc_best])
    f["exp5_a07_ppl"] = fmt_stat(a07, "ppl")
    f["exp5_a07_doc_ppl"] = f"{doc07['ppl']:.2f}"
    f["exp5_a07_ratio"] = f"{a07.mean / doc07['ppl']:.2f}"
    f["exp5_a07_lower_higher"] = (say("lower", "低い") if a07.mean < doc07["ppl"] else say("higher", "高い"))
    if a07.half is None:
        f["exp5_a07_within"] = say("With one seed there is no interval to compare the document's value with.",
                                   "シードが1つなので、文書の値と比べる区間はない。")
    elif a07.lo <= doc07["ppl"] <= a07.hi:
        f["exp5_a07_within"] = say("The document's value lies inside the reproduced 95% interval.",
                                   "文書の値は再現値の 95% 信頼区間に含まれる。")
    else:
        f["exp5_a07_within"] = say("The document's value lies outside the reproduced 95% interval: the "
                                   "published PPL is not reproduced.",
                                   "文書の値は再現値の 95% 信頼区間の外にあり、公表された PPL は再現されない。")

    # -- experiment 5: thresholds (A at α = 0.7)
    thr_doc = published["exp5_threshold"]["rows"]
    thr = [r["threshold"] for r in thr_doc]
    thr_ppl = [grid.stat(A, alpha6, "ppl", t) for t in thr]
    best_t = thr[int(np.argmin([s.mean for s in thr_ppl]))]
    doc_best_t = thr[int(np.argmin([r["ppl"] for r in thr_doc]))]
    f["thr_best"] = f"{best_t:g}"
    f["thr_doc_best"] = f"{doc_best_t:g}"
    f["thr_list"] = ", ".join(f"{t:g}" for t in thr)
    t_trend = _ordered([s.mean for s in thr_ppl])
    f["thr_trend"] = {
        "increasing": say("PPL rises with the threshold", "閾値を上げるほど PPL は上がる"),
        "decreasing": say("PPL falls as the threshold rises", "閾値を上げるほど PPL は下がる"),
        "mixed": say("PPL is not monotonic in the threshold", "PPL は閾値に対して単調ではない"),
    }[t_trend]
    shallow_hi = grid.stat(A, alpha6, "shallow_frac", thr[-1])
    shallow_lo = grid.stat(A, alpha6, "shallow_frac", thr[0])
    f["thr_shallow_lo"] = fmt_stat(shallow_lo, "shallow_frac")
    f["thr_shallow_hi"] = fmt_stat(shallow_hi, "shallow_frac")
    f["thr_lo"], f["thr_hi"] = f"{thr[0]:g}", f"{thr[-1]:g}"
    op = grid.stat(A, alpha6, "ppl")
    f["op_ppl"] = fmt_stat(op, "ppl")
    f["op_deep_ppl"] = fmt_stat(grid.stat(A, alpha6, "ppl_deep"), "ppl")
    f["op_shallow_ppl"] = fmt_stat(grid.stat(A, alpha6, "ppl_shallow"), "ppl")

    # -- the document disagreeing with itself
    row07 = doc_alpha[alpha6]
    thr_row = {r["threshold"]: r for r in thr_doc}
    t_op = float(b["threshold"]) if float(b["threshold"]) in thr_row else thr[-1]
    r95 = thr_row[t_op]
    f["doc_a07_ppl"], f["doc_a07_shallow"] = f"{row07['ppl']:.2f}", f"{row07['shallow_pct']:.1f}%"
    f["doc_a07_compute"] = f"{row07['compute_pct']:.1f}%"
    f["doc_t_op"] = f"{t_op:g}"
    f["doc_t_op_ppl"], f["doc_t_op_shallow"] = f"{r95['ppl']:.2f}", f"{r95['shallow_pct']:.1f}%"
    f["doc_t_op_compute"] = f"{r95['compute_pct']:.1f}%"
    f["doc_thr_min_ppl"] = f"{min(r['ppl'] for r in thr_doc):.2f}"
    f["doc_thr_min_shallow"] = f"{min(r['shallow_pct'] for r in thr_doc):.1f}%"
    matches = [r for r in thr_doc if abs(r["shallow_pct"] - row07["shallow_pct"]) < 0.05]
    f["doc_self_conflict"] = (
        say(f"The α = {alpha6:g} row matches none of the threshold table's rows: its PPL "
            f"({row07['ppl']:.2f}) is {'below' if row07['ppl'] < min(r['ppl'] for r in thr_doc) else 'within'} "
            f"the table's range (lowest {min(r['ppl'] for r in thr_doc):.2f}) and its Shallow % "
            f"({row07['shallow_pct']:.1f}%) appears at no threshold.",
            f"α = {alpha6:g} の行は閾値表のどの行とも一致しない。PPL（{row07['ppl']:.2f}）は閾値表の最小値"
            f"（{min(r['ppl'] for r in thr_doc):.2f}）"
            f"{'よりも低く' if row07['ppl'] < min(r['ppl'] for r in thr_doc) else 'の範囲内にあるが'}、"
            f"Shallow %（{row07['shallow_pct']:.1f}%）はどの閾値にも現れない。")
        if not matches else
        say(f"The α = {alpha6:g} row matches the threshold table at {matches[0]['threshold']:g}.",
            f"α = {alpha6:g} の行は閾値表の {matches[0]['threshold']:g} の行と一致する。"))
    rows = document_rows(published)
    gaps = [abs(r["compute_pct"] - _implied_compute(r["shallow_pct"])) for _, r in rows]
    f["doc_compute_gap_max"] = f"{max(gaps):.2f}"
    f["doc_compute_consistent"] = (
        say("so every printed Compute % follows from its Shallow % up to rounding",
            "どの行の Compute % も丸め誤差の範囲で Shallow % から導かれる")
        if max(gaps) < 0.15 else
        say("so at least one printed Compute % does not follow from its Shallow %",
            "少なくとも1行の Compute % は Shallow % から導かれない"))
    exp6_a = next(r for r in published["exp6_settings"]["rows"] if r["setting"] == A)
    same = all(exp6_a[k] == row07[k] for k in ("ppl", "shallow_pct", "compute_pct"))
    f["doc_exp6_repeats_exp5"] = (say(f"Experiment 6's setting A row repeats Experiment 5's α = {alpha6:g} row.",
                                      f"実験6の設定Aの行は実験5の α = {alpha6:g} の行と同じ値である。")
                                  if same else
                                  say(f"Experiment 6's setting A row differs from Experiment 5's α = {alpha6:g} row.",
                                      f"実験6の設定Aの行は実験5の α = {alpha6:g} の行と値が異なる。"))

    # -- experiment 6: A vs B at α = 0.7
    pa, pb = grid.values(A, alpha6, "ppl"), grid.values(B, alpha6, "ppl")
    d = diff_ci(pa, pb)
    sa, sb = grid.stat(A, alpha6, "ppl"), grid.stat(B, alpha6, "ppl")
    f["exp6_a_ppl"], f["exp6_b_ppl"] = _ci_phrase(sa, "ppl", lang), _ci_phrase(sb, "ppl", lang)
    better = A if sa.mean < sb.mean else B
    worse = B if better == A else A
    f["exp6_better"] = _setting_name(better, lang)
    f["exp6_worse"] = _setting_name(worse, lang)
    f["exp6_diff"] = f"{abs(d.mean):.2f}"
    if d.half is None:
        f["exp6_diff_ci"] = say("(one seed: no interval)", "（シード1つのため区間なし）")
        resolved = None
    else:
        f["exp6_diff_ci"] = say(f"(95% Welch interval of B − A: {d.lo:+.2f} to {d.hi:+.2f})",
                                f"（B − A の 95% Welch 区間: {d.lo:+.2f} 〜 {d.hi:+.2f}）")
        resolved = d.lo > 0 or d.hi < 0
    f["exp6_resolved"] = {
        None: say("With one seed per setting the difference cannot be tested.",
                  "各設定のシードが1つなので、この差を検定することはできない。"),
        True: say("The interval excludes zero: the difference is resolved by these seeds.",
                  "区間は0を含まないので、これらのシードで差は確認できる。"),
        False: say("The interval includes zero: these seeds do not resolve which setting has the lower PPL.",
                   "区間は0を含むため、これらのシードではどちらの PPL が低いかは確定しない。"),
    }[resolved]
    doc_better = published["exp6_settings"]["claim_better_ppl"]
    f["exp6_doc_better"] = _setting_name(doc_better, lang)
    f["exp6_agrees"] = (say("the same ordering as the document", "文書と同じ順序である") if better == doc_better
                        else say("the opposite of the document's ordering", "文書とは逆の順序である"))
    sh_a, sh_b = grid.stat(A, alpha6, "shallow_frac"), grid.stat(B, alpha6, "shallow_frac")
    f["exp6_a_shallow"], f["exp6_b_shallow"] = fmt_stat(sh_a, "shallow_frac"), fmt_stat(sh_b, "shallow_frac")
    if math.isclose(sh_a.mean, sh_b.mean, abs_tol=1e-12):
        f["exp6_shallow_sentence"] = say(f"Both settings send the same share of characters out at layer 1 "
                                         f"({fmt_stat(sh_a, 'shallow_frac')}).",
                                         f"第1層で退出する文字の割合は両設定で同じである（{fmt_stat(sh_a, 'shallow_frac')}）。")
    else:
        more = _setting_name(B if sh_b.mean > sh_a.mean else A, lang)
        f["exp6_shallow_sentence"] = say(
            f"{more} sends more characters out at layer 1 (Shallow {f['exp6_a_shallow']} for A, "
            f"{f['exp6_b_shallow']} for B).",
            f"第1層で退出する文字が多いのは{more}である（Shallow は設定A が {f['exp6_a_shallow']}、"
            f"設定B が {f['exp6_b_shallow']}）。")
    # thresholds: how often each setting wins
    rows6 = published["exp6_threshold"]["rows"]
    t6 = sorted({r["threshold"] for r in rows6})
    wins = [t for t in t6 if grid.stat(A, alpha6, "ppl", t).mean < grid.stat(B, alpha6, "ppl", t).mean]
    doc_ppl = {(r["setting"], r["threshold"]): r["ppl"] for r in rows6}
    doc_wins = [t for t in t6 if doc_ppl[(A, t)] < doc_ppl[(B, t)]]
    f["exp6_thr_n"] = str(len(t6))
    f["exp6_thr_a_wins"] = str(len(wins))
    f["exp6_thr_doc_a_wins"] = str(len(doc_wins))
    f["exp6_thr_list"] = ", ".join(f"{t:g}" for t in t6)
    # iso-compute comparison from the full sweeps: PPL of each setting at the compute A reaches at the threshold
    f.update(_iso_compute(grid, alpha6, b["threshold"], lang))

    # -- discussion: the document's three claims against ours
    disc = published["discussion"]
    verdict = {True: say("consistent", "一致"), False: say("not reproduced", "再現せず")}
    f["claim1_verdict"] = verdict[better == disc["best_setting"]]
    f["claim2_verdict"] = verdict[best == float(disc["best_alpha"])]
    f["claim3_verdict"] = verdict[best_t == float(disc["best_threshold"])]
    f["claim1_ours"] = say(f"{_setting_name(better, lang)} has the lower mean PPL. {f['exp6_resolved']}",
                           f"平均 PPL が低いのは{_setting_name(better, lang)}。{f['exp6_resolved']}")
    f["claim2_ours"] = say(f"lowest mean PPL at α = {best:g}; the spread across α ({spread:.2f}) is "
                           f"{f['exp5_alpha_resolved']}",
                           f"平均 PPL が最も低いのは α = {best:g}。α 間の差（{spread:.2f}）は"
                           f"{f['exp5_alpha_resolved']}")
    f["claim3_ours"] = say(f"among the document's thresholds, the lowest mean PPL is at {best_t:g} ({f['thr_trend']})",
                           f"文書の閾値のうち平均 PPL が最も低いのは {best_t:g}（{f['thr_trend']}）")
    return f


def _short(value: Any) -> str:
    if isinstance(value, list):
        return f"[{len(value)} values]"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return f"{value}"


def _interp_ppl(record: dict, compute: float) -> float:
    """PPL of one run's sweep at a given compute fraction (linear interpolation along the curve)."""
    rows = sorted(record["sweep"], key=lambda r: r["compute_frac"])
    xs = np.array([r["compute_frac"] for r in rows])
    ys = np.array([r["ppl"] for r in rows])
    return float(np.interp(compute, xs, ys))


def _iso_compute(grid: Grid, alpha: float, threshold: float, lang: str) -> dict[str, str]:
    """Both settings' PPL at the same compute (A's compute at the operating threshold), from the sweeps."""
    comp = grid.stat("A", alpha, "compute_frac", threshold).mean
    pa = mean_ci([_interp_ppl(r, comp) for r in grid.cell("A", alpha)])
    pb = mean_ci([_interp_ppl(r, comp) for r in grid.cell("B", alpha)])
    lower = "A" if pa.mean < pb.mean else "B"
    return {"iso_compute": f"{100 * comp:.1f}%", "iso_a_ppl": fmt_stat(pa, "ppl"), "iso_b_ppl": fmt_stat(pb, "ppl"),
            "iso_lower": _setting_name(lower, lang)}


def claims_table(grid: Grid, published: dict, lang: str) -> str:
    """The document's three observations: its own evidence, the reproduction's, and a verdict."""
    f = facts(grid, published, lang)
    disc = published["discussion"]
    six = {r["setting"]: r["ppl"] for r in published["exp6_settings"]["rows"]}
    alpha6 = float(published["exp6_settings"]["alpha"])
    doc_alpha = min(published["exp5_alpha"]["rows"], key=lambda r: r["ppl"])
    doc_thr = min(published["exp5_threshold"]["rows"], key=lambda r: r["ppl"])
    best = _pick(lang, "best", "最良")
    rows = [
        (_pick(lang, f"setting {disc['best_setting']} has the better PPL",
               f"設定{disc['best_setting']}の方が PPL が良い"),
         ", ".join(f"{s} {v:.2f}" for s, v in six.items()),
         ", ".join(f"{s} {fmt_stat(grid.stat(s, alpha6, 'ppl'), 'ppl')}" for s in six),
         f["claim1_verdict"]),
        (_pick(lang, f"α = {disc['best_alpha']:g} is the best", f"α = {disc['best_alpha']:g} が最良"),
         f"{best} α = {doc_alpha['alpha']:g} ({doc_alpha['ppl']:.2f})",
         f"{best} α = {f['exp5_best_alpha']} ({fmt_stat(grid.stat('A', float(f['exp5_best_alpha']), 'ppl'), 'ppl')})",
         f["claim2_verdict"]),
        (_pick(lang, f"a high threshold ({disc['best_threshold']:g}) gives a good PPL",
               f"高い閾値（{disc['best_threshold']:g}）で PPL が良い"),
         f"{best} τ = {doc_thr['threshold']:g} ({doc_thr['ppl']:.2f})",
         f"{best} τ = {f['thr_best']} "
         f"({fmt_stat(grid.stat('A', alpha6, 'ppl', float(f['thr_best'])), 'ppl')})",
         f["claim3_verdict"]),
    ]
    cols = [_pick(lang, "document's observation", "文書の観察"), _pick(lang, "document (PPL)", "文書（PPL）"),
            _pick(lang, "reproduced (PPL)", "再現（PPL）"), _pick(lang, "verdict", "判定")]
    return markdown_table(pd.DataFrame(rows, columns=cols))


def start_page(lang: str) -> tuple[Grid, dict]:
    """What every page's first cell does: load the book's records and glue every fact for {glue:md}."""
    grid, published = book_grid(), load_published()
    glue_facts(facts(grid, published, lang))
    return grid, published


def glue_facts(values: dict[str, str]) -> None:
    """Glue every fact for the page's {glue:md} roles (inside a notebook being executed)."""
    from IPython.display import Markdown
    from myst_nb import glue

    for key, text in values.items():
        glue(key, Markdown(text), display=False)


def glue_table(key: str, table_markdown: str) -> None:
    from IPython.display import Markdown
    from myst_nb import glue

    glue(key, Markdown(table_markdown), display=False)


def glue_figure(key: str, fig) -> None:
    """Glue a figure for a {glue:figure} in the same page, then close it so it is not shown twice."""
    import matplotlib.pyplot as plt
    from myst_nb import glue

    glue(key, fig, display=False)
    plt.close(fig)


# --- figures -------------------------------------------------------------------------------------
def cjk_font() -> str:
    """The name of an installed font with Japanese glyphs; a clear error if there is none."""
    from matplotlib import font_manager as fm

    def available() -> str | None:
        names = {f.name for f in fm.fontManager.ttflist}
        return next((n for n in CJK_FONTS if n in names), None)

    if (name := available()) is None:
        # installed after matplotlib cached its font list: register the files directly
        for path in fm.findSystemFonts():
            if CJK_FILE_PATTERN.search(Path(path).name):
                fm.fontManager.addfont(path)
        name = available()
    if name is None:
        raise RuntimeError(
            "No font with Japanese glyphs was found, so Japanese figure text would render as empty boxes. "
            f"Install one of {', '.join(CJK_FONTS)} (on Debian/Ubuntu: apt-get install fonts-noto-cjk) and rebuild.")
    return name


@contextmanager
def figure_style(lang: str):
    """Seaborn style plus a font that covers the language; missing glyphs raise instead of drawing boxes."""
    import matplotlib as mpl
    import seaborn as sns

    rc = dict(sns.axes_style("whitegrid"))
    rc.update(sns.plotting_context("notebook", font_scale=0.9))
    rc.update({"figure.dpi": 110, "savefig.dpi": 150, "savefig.bbox": "tight", "axes.unicode_minus": False})
    # Concrete family names, not "sans-serif": text resolves its font when drawn, which for the
    # notebook's inline display happens after this context has restored the rc settings.
    rc["font.family"] = [cjk_font(), "DejaVu Sans"] if _check_lang(lang) == "ja" else ["DejaVu Sans"]
    with mpl.rc_context(rc), warnings.catch_warnings():
        warnings.filterwarnings("error", message=r"Glyph .* missing from")
        yield


def _finish(fig):
    fig.canvas.draw()  # render now, inside figure_style, so a missing glyph raises here
    return fig


PALETTE = {("A", 0.3): "#9ecae1", ("A", 0.5): "#4292c6", ("A", 0.7): "#08519c", ("B", 0.7): "#d94801"}


def _color(cell: tuple[str, float], i: int = 0) -> str:
    import seaborn as sns

    return PALETTE.get(cell) or sns.color_palette("colorblind")[i % 10]


def _label(cell: tuple[str, float], lang: str) -> str:
    return f"{_setting_name(cell[0], lang)}, α={cell[1]:g}"


def fig_architecture(lang: str, setting_weights: dict[str, dict[int, str]] | None = None):
    """Settings A and B side by side: layers, the shared head, and each loss's weight."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    from ease.losses import SETTINGS

    middle_b = f"{SETTINGS['B']:.1f}"
    weights = setting_weights or {"A": {1: "α", 2: "", 3: "1 − α"}, "B": {1: "α", 2: middle_b, 3: "1 − α"}}
    titles = {"A": _pick(lang, "Setting A: no loss on the middle layer", "設定A: 中間層ロスなし"),
              "B": _pick(lang, "Setting B: a loss on every layer (deep supervision)", "設定B: 全層ロス（深層監視）")}
    totals = {"A": r"$\mathcal{L} = \alpha\,\mathcal{L}_1 + (1-\alpha)\,\mathcal{L}_3$",
              "B": r"$\mathcal{L} = \alpha\,\mathcal{L}_1 + " + middle_b + r"\,\mathcal{L}_2 + (1-\alpha)\,\mathcal{L}_3$"}
    no_loss = _pick(lang, "no loss", "ロスなし")
    head = _pick(lang, "shared head → CE", "共有ヘッド → CE")
    exit_note = _pick(lang, "inference: exit here if max p ≥ τ", "推論時: max p ≥ τ ならここで退出")
    with figure_style(lang):
        fig, axes = plt.subplots(1, 2, figsize=(11, 5.2))
        for ax, setting in zip(axes, ("A", "B")):
            ax.set_xlim(0, 10)
            ax.set_ylim(0, 10)
            ax.axis("off")
            ax.set_title(titles[setting], fontsize=11)
            ys = {0: 1.0, 1: 3.0, 2: 5.0, 3: 7.0}
            box = dict(boxstyle="round,pad=0.3", linewidth=1.2)
            ax.add_patch(FancyBboxPatch((1.0, ys[0] - 0.4), 2.6, 0.8, facecolor="#f0f0f0", edgecolor="#666", **box))
            ax.text(2.3, ys[0], _pick(lang, "input x", "入力 x"), ha="center", va="center")
            for layer in (1, 2, 3):
                y = ys[layer]
                ax.add_patch(FancyBboxPatch((1.0, y - 0.4), 2.6, 0.8, facecolor="#deebf7", edgecolor="#08519c",
                                            **box))
                ax.text(2.3, y, f"Layer {layer}", ha="center", va="center", fontweight="bold")
                ax.add_patch(FancyArrowPatch((2.3, ys[layer - 1] + 0.45), (2.3, y - 0.45), arrowstyle="-|>",
                                             mutation_scale=12, color="#444"))
                w = weights[setting][layer]
                if w:
                    ax.add_patch(FancyArrowPatch((3.7, y), (5.2, y), arrowstyle="-|>", mutation_scale=12,
                                                 color="#d94801"))
                    ax.text(5.3, y, f"{head}\n" + _pick(lang, f"loss L{layer}, weight {w}",
                                                       f"損失 L{layer}（重み {w}）"),
                            va="center", fontsize=9)
                else:
                    ax.text(4.0, y, f"({no_loss})", va="center", fontsize=9, color="#888")
            ax.text(5.3, ys[1] - 0.95, exit_note, fontsize=8, color="#555", style="italic")
            ax.text(5.0, 8.8, totals[setting], ha="center", fontsize=12)
        fig.tight_layout()
        return _finish(fig)


def fig_tradeoff(grid: Grid, published: dict, cells: Sequence[tuple[str, float]], lang: str,
                 doc_tables: Sequence[str] = ()):
    """PPL against Compute % along each run's threshold sweep: mean curve, seed band, the document's points."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    with figure_style(lang):
        fig, ax = plt.subplots(figsize=(7.5, 4.6))
        for i, cell in enumerate(cells):
            recs = grid.cell(*cell)
            color = _color(cell, i)
            thresholds = [r["threshold"] for r in recs[0]["sweep"]]
            comp = np.array([[100 * sweep_row(r, t)["compute_frac"] for t in thresholds] for r in recs])
            ppl = np.array([[sweep_row(r, t)["ppl"] for t in thresholds] for r in recs])
            for row_c, row_p in zip(comp, ppl):
                ax.plot(row_c, row_p, color=color, alpha=0.25, linewidth=0.8)
            mean_c = comp.mean(axis=0)
            per_t = [mean_ci(ppl[:, j]) for j in range(len(thresholds))]
            order = np.argsort(mean_c)
            ax.plot(mean_c[order], [per_t[j].mean for j in order], color=color, linewidth=2,
                    label=_label(cell, lang) + _pick(lang, f" (mean of {len(recs)})", f"（{len(recs)} シード平均）"))
            if len(recs) > 1:
                ax.fill_between(mean_c[order], [per_t[j].lo for j in order], [per_t[j].hi for j in order],
                                color=color, alpha=0.2, linewidth=0)
            marks = [j for j, t in enumerate(thresholds) if any(abs(t - d) < 1e-9 for d in DOC_THRESHOLDS)]
            ax.scatter(mean_c[marks], [per_t[j].mean for j in marks], color=color, s=22, zorder=3)
        markers = {"A": "X", "B": "P"}
        for key in doc_tables:
            table = published[key]
            for setting in sorted({r.get("setting", table.get("setting")) for r in table["rows"]}):
                rows = [r for r in table["rows"] if r.get("setting", table.get("setting")) == setting]
                cell = (setting, float(table["alpha"]))
                ax.plot([r["compute_pct"] for r in rows], [r["ppl"] for r in rows], linestyle="--",
                        marker=markers.get(setting, "o"), color=_color(cell), markersize=8, markeredgecolor="black",
                        linewidth=1,
                        label=_pick(lang, f"document: {_label(cell, lang)}", f"文書: {_label(cell, lang)}"))
                for r in rows:
                    ax.annotate(f"{r['threshold']:g}", (r["compute_pct"], r["ppl"]), textcoords="offset points",
                                xytext=(5, 4), fontsize=7)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 3, 5, 7)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(_pick(lang, "Compute % (share of the full network's layer computations)",
                            "Compute %（全層計算に対する割合）"))
        ax.set_ylabel(_pick(lang, "PPL (log scale)", "PPL（対数軸）"))
        ax.set_title(_pick(lang, "Threshold sweep: PPL against compute (dots: the document's thresholds)",
                           "閾値スイープ: PPL と計算量（点: 文書の閾値）"), fontsize=10)
        ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        return _finish(fig)


def fig_alpha(grid: Grid, published: dict, lang: str):
    """PPL, Shallow % and Compute % of setting A against α: seeds, mean ± CI, and the document."""
    import matplotlib.pyplot as plt

    doc = {float(r["alpha"]): r for r in published["exp5_alpha"]["rows"]}
    alphas = [a for s, a in grid.cells if s == "A"]
    panels = (("ppl", "PPL", "ppl"), ("shallow_frac", "Shallow %", "shallow_pct"),
              ("compute_frac", "Compute %", "compute_pct"))
    with figure_style(lang):
        fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
        for ax, (metric, title, doc_key) in zip(axes, panels):
            scale = 100 if PERCENT[metric] else 1
            for a in alphas:
                vals = np.array(grid.values("A", a, metric)) * scale
                ax.scatter(np.full(len(vals), a) + np.linspace(-0.008, 0.008, len(vals)), vals, s=12,
                           color=_color(("A", a)), alpha=0.6, zorder=2)
            st = [mean_ci(np.array(grid.values("A", a, metric)) * scale) for a in alphas]
            ax.errorbar(alphas, [s.mean for s in st], yerr=[(s.half or 0.0) for s in st], color="#08519c",
                        marker="o", capsize=4, linewidth=1.5, label=_pick(lang, "reproduced (mean ± 95% CI)",
                                                                         "再現（平均 ± 95% 信頼区間）"))
            da = sorted(doc)
            ax.plot(da, [doc[a][doc_key] for a in da], linestyle="--", marker="X", color="black", markersize=7,
                    label=_pick(lang, "document", "文書"))
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("α")
            ax.set_xticks(alphas)
        axes[0].legend(fontsize=8)
        fig.suptitle(_pick(lang, f"Setting A against α (threshold {grid.base['threshold']:g})",
                           f"設定A: α ごとの指標（閾値 {grid.base['threshold']:g}）"), fontsize=11)
        fig.tight_layout()
        return _finish(fig)


def fig_learning_curves(grid: Grid, lang: str):
    """Validation PPL of L1 and L3 and the training loss per epoch: a line per run."""
    import matplotlib.pyplot as plt

    panels = (("val_ppl_shallow", _pick(lang, "validation PPL at L1", "検証 PPL（L1）")),
              ("val_ppl_deep", _pick(lang, "validation PPL at L3", "検証 PPL（L3）")),
              ("train_loss", _pick(lang, "training loss (weighted)", "学習損失（重み付き）")))
    with figure_style(lang):
        fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
        for i, cell in enumerate(grid.cells):
            for k, rec in enumerate(grid.cell(*cell)):
                hist = rec["history"]
                for ax, (key, _) in zip(axes, panels):
                    ax.plot([h["epoch"] for h in hist], [h[key] for h in hist], color=_color(cell, i),
                            marker="o", markersize=3, linewidth=1.2, alpha=0.85,
                            label=_label(cell, lang) if k == 0 else None)
        for ax, (_, title) in zip(axes, panels):
            ax.set_title(title, fontsize=10)
            ax.set_xlabel(_pick(lang, "epoch", "エポック"))
            ax.xaxis.get_major_locator().set_params(integer=True)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        return _finish(fig)


# --- a single run's sweep (the notebooks' plot) -----------------------------------------------------
def plot_sweep(table, threshold: float, exit_layer: int, axes=None):
    """Two panels of a threshold sweep table (rows of ease.exits.route): PPL against compute, with
    the document's thresholds marked, and the share of early exits against the threshold."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax_cost, ax_exit = axes
    compute, shallow = 100 * table["compute_frac"], 100 * table["shallow_frac"]
    ax_cost.plot(compute, table["ppl"], marker=".", label="sweep")
    doc = table[table["threshold"].isin(DOC_THRESHOLDS)]
    ax_cost.scatter(100 * doc["compute_frac"], doc["ppl"], color="C3", zorder=3, label="document's thresholds")
    # thresholds that route alike share a point: one label for them all
    for (x, y), group in doc.groupby([100 * doc["compute_frac"], doc["ppl"]]):
        ax_cost.annotate("/".join(f"{t:g}" for t in group["threshold"]), (x, y), textcoords="offset points",
                         xytext=(-4, 6), ha="right", fontsize=8)
    ax_cost.set(xlabel="compute (% of full depth)", ylabel="validation perplexity (routed)",
                title="Perplexity against compute")
    ax_cost.legend()
    ax_exit.plot(table["threshold"], shallow, marker=".")
    ax_exit.axvline(threshold, color="gray", linestyle="--", label=f"default threshold {threshold:g}")
    ax_exit.set(xlabel="confidence threshold", ylabel=f"tokens exiting at layer {exit_layer} (%)",
                title="Early exits against threshold")
    ax_exit.legend()
    return axes
