"""Grids: named sets of run configs (builtin, or read from a YAML/JSON file), expanded and validated.

``--grid`` takes builtin grid names or YAML/JSON files, run one after the other. The builtin grids
are the YAML files of the repository's ``grids/`` folder, installed with the package as
``ease.grids`` (so a name works after ``pip install .`` from any folder); ``--grid exp5-6`` and
``--grid grids/exp5-6.yaml`` are the same grid. They are ``exp5-6`` (the default: the document's
Experiments 5 and 6, five seeds), ``forensics`` (the document's grid at the original code's sizes
and rules, on WikiText-2 and on the original's placeholder text), ``dense`` (1-, 2- and 3-layer
models with the last layer's loss only), ``regimes`` (the document's configurations trained with
cosine decay and patience) and ``alpha`` (α from 0 to 1 by 0.1 for A and B). ``BOOK_GRIDS`` lists
the ones the book reads. A grid file looks like ``examples/grid.yaml``::

    description: any text            # optional
    seeds: 3                         # optional: seeds 0..N-1, or an explicit list [0, 4]; default 3
    base:                            # optional: RunConfig fields shared by every run
      max_epochs: 30
    analyse: false                   # optional: also compute each run's checkpoint analysis (true), or
                                     # only its validation parts (validation: no `test` part, see ease.analysis)
    runs:                            # required: one entry per group of runs
      - {setting: A, alpha: [0.3, 0.5, 0.7]}           # a list means "each of these": 3 configs
      - {setting: B, alpha: 0.7, norm: [post, pre]}    # several lists: their product, 2 configs
      - {setting: custom, alpha: null, weights: {1: 0.5, 3: 0.5}}

Keys of ``base`` and of each entry are ``RunConfig`` fields (an entry overrides ``base``);
``seed`` is not one of them, since ``seeds`` sets it. An entry may also set its own ``seeds`` and
``analyse`` (e.g. more seeds and analyses for the models a first round singled out). Every config runs once per seed; runs
are ordered seed by seed (all of seed 0 first), so a stopped grid has whole seeds done, and a
config listed twice runs once. ``sweep_thresholds`` takes a list of numbers as its value; to
expand it give a list of such lists. ``--seeds N`` overrides the file's seeds, and ``--smoke``
replaces the sizes with the tiny ``SMOKE`` set and writes to ``results/smoke`` unless
``--results`` is given. Every entry is checked before anything runs; a bad one is an error
naming the entry.
"""
from __future__ import annotations

import itertools
import json
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ease.config import RunConfig

# The tiny sizes of a smoke run (tests, nbval, `--smoke`); defined once, here.
SMOKE = {"train_chars": 20_000, "val_chars": 5_000, "max_epochs": 1}
DEFAULT_SEEDS = 3

# The builtin grids: grids/<name>.yaml in the repository, the package ease.grids once installed.
GRIDS_PACKAGE = "ease.grids"
# The grids the book reads, in the order `--book` runs them. Only the first one's runs get lab
# notebooks in the book's appendix; the others need their records and analyses.
BOOK_GRIDS = ("exp5-6", "forensics", "dense", "regimes", "alpha", "converged", "converged-2x", "converged-4x",
              "multi-exit")
GRID_KEYS = {"description", "seeds", "base", "runs", "analyse"}
ANALYSE_VALIDATION = "validation"  # `analyse: validation`: analyses without their costly held-out (test) part
LIST_FIELDS = ("sweep_thresholds", "exits")  # RunConfig fields whose one value is a list: a list of lists is the choice


class GridError(ValueError):
    """A grid (builtin or file) is malformed or holds an invalid config."""


# --- configs -------------------------------------------------------------------------------
SMOKE_TEST_CHARS = 20_000  # a run that evaluates test text reads this much of it at smoke size


def smoke_config(config: RunConfig) -> RunConfig:
    """The same config at smoke size (a run with test text keeps some, SMOKE_TEST_CHARS of it)."""
    return config.replace(**SMOKE, **({"test_chars": SMOKE_TEST_CHARS} if config.test_chars else {}))


# --- grids ---------------------------------------------------------------------------------
def builtin_grids() -> list[str]:
    """The names of the builtin grids (the YAML files shipped in ease.grids)."""
    return sorted(entry.name.removesuffix(".yaml") for entry in resources.files(GRIDS_PACKAGE).iterdir()
                  if entry.name.endswith(".yaml"))


def load_grid(name_or_path: str | Path) -> dict:
    """A builtin grid by name, or a grid read from a .yaml/.yml/.json file."""
    name = str(name_or_path)
    if name in builtin_grids():
        source = resources.files(GRIDS_PACKAGE) / f"{name}.yaml"
        return _parse(source.read_text(encoding="utf-8"), ".yaml", f"builtin grid {name}")
    path = Path(name_or_path)
    if not path.is_file():
        raise GridError(f"grid {name!r} is neither a builtin grid ({', '.join(builtin_grids())}) "
                        "nor an existing .yaml/.json file")
    suffix = path.suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise GridError(f"grid file {path} must end in .yaml, .yml or .json")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise GridError(f"grid file {path} cannot be read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GridError(f"grid file {path} is not UTF-8 text: byte 0x{raw[exc.start]:02x} at byte offset "
                        f"{exc.start} cannot be decoded") from None
    return _parse(text, suffix, f"grid file {path}")


def _parse(text: str, suffix: str, where: str) -> dict:
    try:
        return json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise GridError(f"{where} could not be parsed: {exc}") from None


def _grid_seeds(value: Any) -> list[int]:
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if is_int(value):
        if value < 1:
            raise GridError(f"seeds must be at least 1, got {value}")
        return list(range(value))
    if isinstance(value, list) and value and all(is_int(v) and v >= 0 for v in value):
        if len(set(value)) != len(value):
            raise GridError(f"seeds list {value} repeats a seed")
        return list(value)
    raise GridError(f"seeds must be a count >= 1 or a non-empty list of seeds >= 0, got {value!r}")


def _expand_entry(fields: dict[str, Any]) -> list[dict[str, Any]]:
    """The product of an entry's list values (a list of numbers for sweep_thresholds or exits is one value)."""
    choices = {}
    for key, value in fields.items():
        is_choice = isinstance(value, list)
        if key in LIST_FIELDS:
            is_choice = isinstance(value, list) and bool(value) and all(isinstance(v, list) for v in value)
        if is_choice and not value:
            raise GridError(f"{key} is an empty list, which expands to no runs")
        choices[key] = value if is_choice else [value]
    return [dict(zip(choices, combo)) for combo in itertools.product(*choices.values())]


def expand_grid(grid: dict, seeds: int | None = None, smoke: bool = False) -> list[RunConfig]:
    """Every config of a grid, validated, duplicates dropped, ordered seed by seed.

    An entry may set its own `seeds` (a count or a list, as the grid's), e.g. more seeds for the models a
    first round singled out; every other entry keeps the grid's. `seeds` (a count) overrides every entry's
    and the grid's; `smoke` shrinks every run to the `SMOKE` sizes. Raises GridError naming the first bad
    entry; nothing is run here.
    """
    return [config for config, _ in _expand(grid, seeds, smoke)]


def analyses_wanted(grid: dict, seeds: int | None = None, smoke: bool = False) -> dict[str, bool | str]:
    """Per run id, the checkpoint analysis the grid asks for: its entry's `analyse`, else the grid's (true,
    false or "validation"); an entry may ask for analyses that the rest of its grid does without."""
    return {config.run_id: analyse for config, analyse in _expand(grid, seeds, smoke)}


def _expand(grid: dict, seeds: int | None, smoke: bool) -> list[tuple[RunConfig, bool | str]]:
    if not isinstance(grid, dict):
        raise GridError(f"a grid must be a mapping with a 'runs' list, got {type(grid).__name__}")
    unknown = sorted(set(grid) - GRID_KEYS)
    if unknown:
        raise GridError(f"unknown grid key(s) {unknown}; a grid has {sorted(GRID_KEYS)}")
    grid_analyse = _analyse_value(grid.get("analyse", False), "grid 'analyse'")
    seed_list = _grid_seeds(grid.get("seeds", DEFAULT_SEEDS) if seeds is None else seeds)
    base = grid.get("base") or {}
    if not isinstance(base, dict):
        raise GridError(f"grid 'base' must be a mapping of RunConfig fields, got {base!r}")
    entries = grid.get("runs")
    if not isinstance(entries, list) or not entries:
        raise GridError("grid 'runs' must be a non-empty list of entries (mappings of RunConfig fields)")

    per_entry: list[tuple[list[int], list[dict[str, Any]], bool | str]] = []
    for number, entry in enumerate(entries, start=1):
        where = f"grid entry {number} {entry!r}"
        if not isinstance(entry, dict):
            raise GridError(f"{where}: an entry must be a mapping of RunConfig fields")
        fields = {**base, **entry}
        if "seed" in fields:
            raise GridError(f"{where}: 'seed' is set by 'seeds' (the grid's or the entry's), not per entry")
        try:
            entry_seeds = _grid_seeds(fields.pop("seeds")) if "seeds" in fields and seeds is None else seed_list
            fields.pop("seeds", None)
            analyse = _analyse_value(fields.pop("analyse"), "'analyse'") if "analyse" in fields else grid_analyse
            combos = _expand_entry(fields)
            for combo in combos:  # validate every combination now, before anything runs
                config = RunConfig.from_dict({**combo, "seed": entry_seeds[0]})
                if smoke:
                    smoke_config(config)
        except (GridError, ValueError) as exc:
            raise GridError(f"{where}: {exc}") from None
        per_entry.append((entry_seeds, combos, analyse))

    configs: dict[str, tuple[RunConfig, bool | str]] = {}
    extra = sorted({s for entry_seeds, _, _ in per_entry for s in entry_seeds} - set(seed_list))
    for seed in seed_list + extra:
        for entry_seeds, combos, analyse in per_entry:
            if seed not in entry_seeds:
                continue
            for combo in combos:
                config = RunConfig.from_dict({**combo, "seed": seed})
                if smoke:
                    config = smoke_config(config)
                configs.setdefault(config.run_id, (config, analyse))
    return list(configs.values())


def _analyse_value(value: Any, where: str) -> bool | str:
    if not (isinstance(value, bool) or value == ANALYSE_VALIDATION):
        raise GridError(f"{where} must be true, false or {ANALYSE_VALIDATION}, got {value!r}")
    return value
