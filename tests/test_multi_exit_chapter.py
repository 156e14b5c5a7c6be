"""The several-exit chapter's numbers and verdicts (book/companion/multi_exit.py) on designed records.

Each designed run's test text is built token by token and turned into its analysis's front by
ease.analysis.multi_exit_front, as a trained run's is, so a test can put a recipe ahead of or behind a
dense model by a known margin and check that the verdict follows.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ease.analysis import ANALYSIS_VERSION, MULTI_REAL_THRESHOLDS, multi_exit_front
from ease.decode import multi_exit_macs
from ease.exits import MultiExitStats, block_bounds, first_exit, per_block
from ease.grid import expand_grid, load_grid
from ease.model import ModelConfig
from ease.results import analysis_path, record_path, write_json
from ease.stats import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED

from companion import multi_exit
from test_held_out import BLOCKS, PER_BLOCK, designed_record, designed_stats

N_TOKENS, VOCAB = BLOCKS * PER_BLOCK, 50
CONFIGS = expand_grid(load_grid(multi_exit.GRID))
# the last layer's CE above 1.6 per recipe and dense model; the exits add EXIT_LOSS on top of it
OFFSETS = {"plain": 0.0, "layerskip": 0.0, "distill": 0.0, "warmup": 0.0, "propagation": 0.0,
           "dense2": 0.3, "dense4": 0.1, "dense6": 0.0}
EXIT_LOSS = {2: 0.4, 4: 0.1}


def text_ce(offset: float, seed: int) -> torch.Tensor:
    """The last layer's CE per test token: the held-out chapter's designed text (shared difficulty plus noise),
    so that a run's record (test_held_out.designed_record) and its analysis read the same tokens."""
    return designed_stats(CONFIGS[0], offset, seed).ce_last.double()


def designed_part(config, offset: float, seed: int, real_gap: float) -> dict:
    ce_last = text_ce(offset, seed)
    exits = tuple(config.exits)
    gen = torch.Generator().manual_seed(seed)
    conf = torch.rand(len(exits), N_TOKENS, generator=gen, dtype=torch.float64)
    stats = MultiExitStats(exits, config.n_layers, conf, torch.stack([ce_last + EXIT_LOSS[e] for e in exits] + [ce_last]))
    macs = multi_exit_macs(ModelConfig(vocab_size=VOCAB, n_layers=config.n_layers, dim=config.dim,
                                       n_heads=config.n_heads, max_seq_len=config.seq_len, norm=config.norm), exits)
    part = multi_exit_front(stats, macs)
    bounds = block_bounds(N_TOKENS, part["blocks"])
    layers = (*exits, config.n_layers)
    for t in MULTI_REAL_THRESHOLDS:  # real exit: each exited token costs `real_gap` more than simulated
        where = first_exit(conf, [t] * len(exits))
        ce = stats.ce.gather(0, where[None].long()).squeeze(0) + real_gap * (where < len(exits))
        shares = {str(layer): (where == i).double().mean().item() for i, layer in enumerate(layers)}
        part["real"].append({"threshold": t, "ppl": math.exp(ce.mean().item()), "shares": shares,
                             "compute_frac": sum(s * int(k) / config.n_layers for k, s in shares.items()),
                             "flop_compute_frac": sum(s * macs[int(k)] for k, s in shares.items()) / macs["full"],
                             "block_ce": per_block(ce, bounds),
                             "block_layers": {str(layer): per_block(where == i, bounds) for i, layer in enumerate(layers)}})
    return part


def write_designed(folder, offsets=OFFSETS, real_gap: float = 0.0) -> None:
    """A designed multi-exit grid's records and analyses, with the given offsets and real-exit gap."""
    for config in CONFIGS:
        key = multi_exit.recipe_key(config.to_dict())
        record = designed_record(config, offsets[key], config.seed)
        analysis = {"run_id": config.run_id, "analysis_version": ANALYSIS_VERSION, "vocab_size": VOCAB}
        if config.exits:
            analysis["multi_exit"] = designed_part(config, offsets[key], config.seed, real_gap)
        write_json(record_path(folder, config.run_id), record)
        write_json(analysis_path(folder, config.run_id), analysis)


@pytest.fixture
def chapter(tmp_path):
    """The chapter's fronts from a designed multi-exit grid with the given offsets and real-exit gap."""
    def build(offsets=OFFSETS, real_gap: float = 0.0):
        folder = tmp_path / f"r{len(list(tmp_path.iterdir()))}"
        write_designed(folder, offsets, real_gap)
        return multi_exit.fronts(folder)
    return build


def test_the_grid_has_every_recipe_and_dense_depth():
    keys = [multi_exit.recipe_key(c.to_dict()) for c in CONFIGS]
    assert sorted(set(keys)) == sorted([*multi_exit.RECIPES, "dense2", "dense4", "dense6"])
    assert all(keys.count(k) == keys.count("plain") for k in set(keys))  # as many seeds each


def test_front_ends_are_the_last_layer_and_the_first_exit(chapter):
    fs = chapter()
    plain = fs["plain"]
    assert list(fs) == [*multi_exit.RECIPES, "dense2", "dense4", "dense6"]
    # above every threshold every token reaches the last layer: the last layer's own PPL
    expected = [math.exp(text_ce(0.0, s).mean().item()) for s in plain.seeds]
    assert multi_exit.ppl(plain)(None) == pytest.approx(expected, rel=1e-9)
    # threshold 0: every token leaves at the first exit, which costs 2 of 6 layers
    first = [math.exp((text_ce(0.0, s) + EXIT_LOSS[2]).mean().item()) for s in plain.seeds]
    assert multi_exit.ppl_at_cost(plain, 2 / 6, "layers")(None) == pytest.approx(first, rel=1e-9)
    # cheaper than every token leaving at the first exit is out of reach
    assert np.isnan(multi_exit.ppl_at_cost(plain, 0.2, "layers")(None)).all()
    # a dense 2-layer model costs 2/6 of the layers, and less than that share of the multiply-adds' heads included
    assert multi_exit.dense_cost(2, plain, "layers") == pytest.approx(1 / 3)
    assert 0 < multi_exit.dense_cost(2, plain, "flops") < multi_exit.dense_cost(4, plain, "flops") < 1


def test_equal_compute_verdicts_follow_the_designed_margins(chapter):
    fs = chapter()
    rows = multi_exit.against_dense(fs)
    assert len(rows) == 5 * 3 * 2
    by = {(k, d, a): c for k, d, a, c in rows}
    # dense 2 layers is 0.3 nats worse than the last layer; every token at exit 2 is only 0.4 worse, and mixing
    # in exit 4 and the last layer at that cost is out of reach (exit 2 is the cheapest): PPL at 2/6 of the layers
    # is exit 2's own, 0.1 nats above dense 2
    assert multi_exit.verdict(by[("plain", 2, "layers")]) == NOT_REPRODUCED
    # at dense 6's cost every token can go deep: the same last layer as dense 6 (same offset): not told apart
    assert multi_exit.verdict(by[("plain", 6, "layers")]) == INCONCLUSIVE
    assert multi_exit.front_case(rows) == "behind"
    assert all(c.adjusted_p is None for *_, c in rows if not c.reachable)
    # a much worse dense 4 puts every recipe past it at its cost
    fs = chapter({**OFFSETS, "dense4": 0.8})
    rows = multi_exit.against_dense(fs)
    by = {(k, d, a): c for k, d, a, c in rows}
    assert multi_exit.verdict(by[("layerskip", 4, "layers")]) == REPRODUCED
    assert multi_exit.front_case(rows) == "past"
    counts = multi_exit.recipe_counts(rows)
    assert all(n["lower"] >= 1 for n in counts.values())
    assert sum(sum(n.values()) for n in counts.values()) == len(rows)


def test_real_exit_gaps_read_the_real_rows(chapter):
    fs = chapter(real_gap=0.2)
    rows = multi_exit.real_gaps(fs)
    assert len(rows) == 5 * len(MULTI_REAL_THRESHOLDS)
    assert all(c.text.lo > 0 for *_, c in rows)  # every exited token costs 0.2 nats more when really skipped
    rows0 = multi_exit.real_gaps(chapter(real_gap=0.0))
    assert all(c.text.mean == pytest.approx(0.0, abs=1e-9) for *_, c in rows0)  # real = simulated, designed
    assert multi_exit.gap_case(rows0) == "not smaller"


@pytest.mark.parametrize("lang", ["en", "ja"])
def test_every_table_figure_and_number_renders(chapter, lang):
    fs = chapter(real_gap=0.1)
    rows, gaps = multi_exit.against_dense(fs), multi_exit.real_gaps(fs)
    assert len(multi_exit.models_table(fs, lang).splitlines()) == 2 + 8
    assert len(multi_exit.against_table(rows, lang).splitlines()) == 2 + len(rows)
    assert len(multi_exit.real_table(fs, gaps, lang).splitlines()) == 2 + len(gaps)
    assert multi_exit.front_figure(fs, lang) is not None
    text = multi_exit.texts(fs, rows, lang)
    assert (text["me_layers"], text["me_recipes"], text["me_comparisons"]) == ("6", "5", "30")
    assert int(text["me_lower"]) + int(text["me_higher"]) + int(text["me_tied"]) == int(text["me_reachable"])


def test_fronts_read_on_other_text_are_refused(chapter):
    fs = chapter()
    fs["dense2"].records[0]["test"]["block_sums"]["tokens"][0] += 1
    fs["dense2"].__dict__.pop("tokens", None)
    with pytest.raises(ValueError, match="other test blocks"):
        multi_exit.check_text(fs)


@pytest.mark.parametrize("lang", ["en", "ja"])
def test_the_page_runs_and_glues_every_key_its_text_uses(tmp_path, monkeypatch, lang):
    """The chapter's page (not in the book until the grid's records are committed) on designed records."""
    import re

    import jupytext
    from nbclient import NotebookClient

    from companion.core import RESULTS_ENV

    write_designed(tmp_path, real_gap=0.1)
    monkeypatch.setenv(RESULTS_ENV, str(tmp_path))
    page = Path(__file__).resolve().parents[1] / "book" / lang / "multi_exit.md"
    nb = jupytext.read(page)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(page.parent)}}).execute()
    glued = {out["metadata"]["scrapbook"]["name"] for cell in nb.cells if cell.cell_type == "code"
             for out in cell.get("outputs", []) if out.get("metadata", {}).get("scrapbook")}
    stderr = [out["text"] for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
              if out.get("name") == "stderr"]
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    used = set(re.findall(r"\{glue:md\}`(\w+)`", text)) | set(re.findall(r"```\{glue:(?:md|figure)\} (\w+)", text))
    assert not stderr and used and used <= glued
