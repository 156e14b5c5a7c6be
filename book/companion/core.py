"""What every chapter module shares: the book's records, the document's values, labels, formatting,
glue and figure style. Language-neutral: it returns numbers, tables and figures; words come from
book/<lang>/labels.yml (`labels`) and sentences from the pages themselves.

Which records are "the book's grid": the configs of the `exp5-6` grid (setting A at α 0.3/0.5/0.7, B at
0.7, the document's sizes), seed ignored. When the results folder holds no complete set of such records
(e.g. small development runs), the one other set of records that covers every (setting, α) cell with a
single shared configuration is used instead, and the book says how it differs from the reference.
"""
from __future__ import annotations

import functools
import json
import math
import os
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import yaml

from ease.config import DOC_THRESHOLDS, RunConfig
from ease.grid import expand_grid, load_grid
from ease.analysis import load_analysis
from ease.results import analysis_path, bench_path, find_record, load_records, runs_dir
from ease.stats import Stat, mean_ci

RESULTS_ENV = "EASE_RESULTS"
BOOK_DIR = Path(__file__).resolve().parents[1]  # book/: the pages, labels and published values live here
PUBLISHED_PATH = BOOK_DIR / "data" / "published.yaml"
BOOK_GRID = "exp5-6"  # the grid whose runs the Exp 5/6 chapters report
LANGS = ("en", "ja")
# Fonts tried, in order, for Japanese figure text (fonts-noto-cjk provides the first).
CJK_FONTS = ("Noto Sans CJK JP", "Noto Serif CJK JP", "IPAexGothic", "IPAGothic", "TakaoGothic",
             "Source Han Sans JP", "Source Han Sans")
CJK_FILE_PATTERN = re.compile(r"(NotoSansCJK|NotoSerifCJK|SourceHanSans|ipaexg|ipag)", re.I)
METRICS = ("ppl", "shallow_frac", "compute_frac")
# Fields that vary inside the grid; everything else of a config must be shared by the book's records.
CELL_FIELDS = ("setting", "alpha", "weights", "seed")
PALETTE = {("A", 0.3): "#9ecae1", ("A", 0.5): "#4292c6", ("A", 0.7): "#08519c", ("B", 0.7): "#d94801"}


def check_lang(lang: str) -> str:
    if lang not in LANGS:
        raise ValueError(f"lang must be one of {LANGS}, got {lang!r}")
    return lang


@functools.lru_cache(maxsize=None)
def labels(lang: str) -> dict:
    """The words figures and tables need in one language: book/<lang>/labels.yml."""
    path = BOOK_DIR / check_lang(lang) / "labels.yml"
    return yaml.safe_load(path.read_text(encoding="utf-8"))


# --- inputs --------------------------------------------------------------------------------------
def results_dir() -> Path:
    """The results folder the book reads: $EASE_RESULTS, else the repository's results/."""
    return Path(os.environ.get(RESULTS_ENV) or BOOK_DIR.parent / "results")


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
    if not runs_dir(results).is_dir():
        raise FileNotFoundError(f"no run records: {runs_dir(results)} does not exist. Produce them with "
                                f"python -m ease.pipeline --grid {BOOK_GRID} --results {results}, or point "
                                f"{RESULTS_ENV} at a results folder that has them")
    return select_grid(load_records(results), reference_configs(), results)


def grid_records(name: str, results: str | Path | None = None, partial: bool = False) -> list[dict]:
    """The records of every config of a builtin grid; a clear error naming what is missing (`partial`: the
    records there are, for a grid still running)."""
    results = Path(results) if results is not None else results_dir()
    configs = expand_grid(load_grid(name))
    records = [find_record(c, results) for c in configs]
    missing = [c.run_id for c, r in zip(configs, records) if r is None]
    if partial:
        records = [r for r in records if r is not None]
    elif missing:
        raise LookupError(f"{len(missing)} of {len(configs)} runs of grid {name!r} have no record in "
                          f"{runs_dir(results)} (e.g. {missing[:3]}). Run them: python -m ease.pipeline --grid {name}")
    for record in records:  # read through RunConfig so older records show today's fields
        record["config"] = RunConfig.from_dict(record["config"]).to_dict()
    return records


def grid_analyses(records: Sequence[dict], results: str | Path | None = None,
                  held_out: bool = True) -> dict[str, dict]:
    """The checkpoint analysis of every record, by run id; a clear error when one is missing. `held_out` False:
    the caller reads the validation parts only (a grid analysed with `analyse: validation` serves it)."""
    results = Path(results) if results is not None else results_dir()
    out = {}
    for record in records:
        analysis = load_analysis(RunConfig.from_dict(record["config"]), results, held_out)
        if analysis is None:
            raise LookupError(f"run {record['run_id']} has no current analysis in {analysis_path(results, record['run_id']).parent}; "
                              "compute it with python -m ease.pipeline --book (it needs the run's checkpoint)")
        out[record["run_id"]] = analysis
    return out


def select(records: Sequence[dict], **fields) -> list[dict]:
    """The records whose config has all these field values, in seed order."""
    def match(record: dict) -> bool:
        c = record["config"]
        return all((c[k] is None and v is None) or (c[k] is not None and v is not None and
                                                    (c[k] == v or (isinstance(v, float) and math.isclose(c[k], v))))
                   for k, v in fields.items())
    chosen = sorted((r for r in records if match(r)), key=lambda r: r["config"]["seed"])
    if not chosen:
        raise LookupError(f"no records with {fields}")
    return chosen


def value(record: dict, metric: str, threshold: float | None = None) -> float:
    """A record's metric at its operating threshold (None) or a sweep entry's at `threshold`."""
    return float(record["metrics"][metric] if threshold is None else sweep_row(record, threshold)[metric])


def paired(a: Sequence[dict], b: Sequence[dict]) -> None:
    seeds_a, seeds_b = [r["config"]["seed"] for r in a], [r["config"]["seed"] for r in b]
    if seeds_a != seeds_b:
        raise ValueError(f"paired comparison needs the same seeds on both sides, got {seeds_a} and {seeds_b}")


def load_bench(results: str | Path | None = None) -> dict:
    path = bench_path(results if results is not None else results_dir())
    if not path.is_file():
        raise FileNotFoundError(f"no decoding benchmark at {path}: run python benchmarks/bench_decode.py "
                                f"--json {path}")
    return json.loads(path.read_text(encoding="utf-8"))


def sweep_curve(recs: Sequence[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per threshold: mean Compute fraction, mean PPL, and the per-seed PPL matrix [seed, threshold]."""
    thresholds = [row["threshold"] for row in recs[0]["sweep"]]
    comp = np.array([[sweep_row(r, t)["compute_frac"] for t in thresholds] for r in recs])
    ppl = np.array([[sweep_row(r, t)["ppl"] for t in thresholds] for r in recs])
    return comp.mean(axis=0), ppl.mean(axis=0), ppl


def ppl_at_compute(record: dict, compute: float) -> float:
    """A run's PPL at a given Compute fraction, interpolated along its sweep (NaN outside it)."""
    pts = sorted((row["compute_frac"], row["ppl"]) for row in record["sweep"])
    xs, ys = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    if compute < xs[0] - 1e-12 or compute > xs[-1] + 1e-12:
        return float("nan")
    return float(np.interp(compute, xs, ys))


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


# A cell that reads as a number (with its interval, unit or sign); other cells are text.
_NUMERIC_CELL = re.compile(r"^[\s\d.,:%+\-−±×/\[\]()—–]*(pp|pt|×|%|s)?[\s\d.,%+\-−±\[\]()]*$")


def markdown_table(df: pd.DataFrame) -> str:
    """A pipe table (MyST renders it as a real table); every cell must be a non-empty string.

    The first column and every column holding text are left-aligned, columns of numbers right-aligned."""
    for col in df.columns:
        for value in df[col]:
            if not isinstance(value, str) or not value.strip() or value.strip().lower() == "nan":
                raise ValueError(f"table column {col!r} has an empty or non-text cell {value!r}")

    def esc(s: str) -> str:
        return str(s).replace("|", "\\|")

    lines = ["| " + " | ".join(esc(c) for c in df.columns) + " |",
             "|" + "|".join(":---" if i == 0 or not all(_NUMERIC_CELL.match(str(v)) for v in df[c]) else "---:"
                            for i, c in enumerate(df.columns)) + "|"]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def fmt_diff(stat: Stat, metric: str) -> str:
    """'+0.12 [-0.30, +0.54]': a paired difference (percentage points for a share) with its 95% interval.

    When the interval excludes zero, an end that would round to zero gets more decimals, so that it shows
    the sign that decides the verdict ([-0.06, -0.004], not [-0.06, -0.00])."""
    scale, unit = (100, " pp") if PERCENT[metric] else (1, "")
    digits = 2 if metric == "ppl" else 1
    if stat.half is None:
        return f"{scale * stat.mean:+.{digits}f}{unit}"
    lo, hi = scale * stat.lo, scale * stat.hi
    excludes_zero = lo > 0 or hi < 0
    return (f"{scale * stat.mean:+.{digits}f}{unit} [{_interval_end(lo, digits, excludes_zero)}, "
            f"{_interval_end(hi, digits, excludes_zero)}]")


MAX_DIGITS = 6  # an interval end closer to zero than this shows as zero whatever its sign


def _interval_end(value: float, digits: int, excludes_zero: bool) -> str:
    if excludes_zero:
        while float(f"{value:.{digits}f}") == 0 and digits < MAX_DIGITS:
            digits += 1
    return f"{value:+.{digits}f}"


def cell_name(cell: tuple[str, float], lang: str | None = None) -> str:
    """A (setting, α) cell as tables and legends write it: 'A, α=0.7'; with `lang`, the setting's name
    from labels ('Setting A, α=0.7')."""
    setting = cell[0] if lang is None else labels(lang)["setting"][cell[0]]
    return f"{setting}, α={cell[1]:g}"


def short(value: Any) -> str:
    if isinstance(value, list):
        return f"[{len(value)} values]"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return f"{value}"


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
    rc["font.family"] = [cjk_font(), "DejaVu Sans"] if check_lang(lang) == "ja" else ["DejaVu Sans"]
    with mpl.rc_context(rc), warnings.catch_warnings():
        warnings.filterwarnings("error", message=r"Glyph .* missing from")
        yield


def finish(fig):
    fig.canvas.draw()  # render now, inside figure_style, so a missing glyph raises here
    return fig


def plain_log_scale(ax, which: str = "y") -> None:
    """A log scale on one axis labelled with plain numbers at 1, 2, 3, 5, 7 × 10ᵏ (7, 10, 20, 30),
    never "9 × 10⁰"; unlabelled minor ticks."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    axis = ax.yaxis if which == "y" else ax.xaxis
    axis.set_major_locator(LogLocator(base=10, subs=(1, 2, 3, 5, 7)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def color(cell: tuple[str, float], i: int = 0) -> str:
    import seaborn as sns

    return PALETTE.get(cell) or sns.color_palette("colorblind")[i % 10]


# --- glue (inside a page being executed) ----------------------------------------------------------
def glue_text(key: str, text: str) -> None:
    """Glue a short MyST fragment (a number, a verdict word, a cell) for the page's {glue:md}`key`."""
    from IPython.display import Markdown
    from myst_nb import glue

    glue(key, Markdown(str(text)), display=False)


def glue_all(values: dict[str, Any]) -> None:
    for key, text in values.items():
        glue_text(key, text)


def glue_table(key: str, table_markdown: str) -> None:
    glue_text(key, table_markdown)


def glue_figure(key: str, fig) -> None:
    """Glue a figure for a {glue:figure} in the same page, then close it so it is not shown twice."""
    import matplotlib.pyplot as plt
    from myst_nb import glue

    glue(key, fig, display=False)
    plt.close(fig)


def glue_choice(key: str, wordings: dict[str, str], case: str, **values: Any) -> None:
    """Glue the page's own wording for `case` (a sentence held in the page), filled with `values`."""
    if case not in wordings:
        raise KeyError(f"{key}: the page has no wording for case {case!r}; it has {sorted(wordings)}")
    glue_text(key, wordings[case].format(**values))
