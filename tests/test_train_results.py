"""Training, early stopping, `run` and its records, and the results tables.

Everything trains tiny models (dim 16, 2 heads) on a few thousand characters of synthetic text
written to a temporary corpus folder, so no real data and no network are needed.
"""
from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import json
import math
import os
import random
import stat
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import ease
import ease.train as train
from ease.config import DOC_THRESHOLDS, RunConfig
from ease.data import build_corpus, load_corpus, make_batches
from ease.exits import collect_token_stats, route
from ease.records import SCHEMA_VERSION
from ease.results import (atomic_write, checkpoint_path, find_record, load_histories, load_results,
                          load_sweeps, record_path, runs_dir, write_json)
from ease.train import NonFiniteLossError, build_model, pick_device, train_model

REPO = Path(__file__).resolve().parents[1]
WORDS = ("the cat sat on a mat and the dog ran far away from home while small birds sing "
         "über café 東京 , . = @-@").split()


def synthetic_text(n_chars: int, seed: int) -> str:
    rng = random.Random(seed)
    lines = []
    while sum(map(len, lines)) < n_chars:
        lines.append(" " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + " \n")
        if rng.random() < 0.2:
            lines.append(" \n")
    return "".join(lines)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    for split, seed in (("train", 0), ("valid", 1), ("test", 2)):
        (folder / f"{split}.txt").write_text(synthetic_text(5000, seed), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def tiny(corpus_dir):
    return RunConfig(corpus=str(corpus_dir), train_chars=3000, val_chars=800, seq_len=16, batch_size=4,
                     dim=16, n_heads=2, max_epochs=2, patience=2, sweep_thresholds=DOC_THRESHOLDS)


@pytest.fixture(scope="module")
def runs(tiny, tmp_path_factory):
    """The tiny config run twice into separate folders, and once with another seed."""
    dirs = [tmp_path_factory.mktemp(name) for name in ("first", "second", "seed1")]
    records = [ease.run(tiny, dirs[0], progress=False), ease.run(tiny, dirs[1], progress=False),
               ease.run(tiny.replace(seed=1), dirs[2], progress=False)]
    return dirs, records


def test_run_uses_one_thread_and_gives_the_callers_setting_back(tiny, tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        record = ease.run(tiny.replace(max_epochs=1), tmp_path, progress=False)
        assert record["env"]["threads"] == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def fake_summary(ppl_deep_values):
    """A stand-in for the per-epoch validation summary that reports scripted deep PPLs."""
    values = iter(ppl_deep_values)

    def summary(stats, threshold):
        p = next(values)
        return {"ppl": p, "shallow_frac": 0.0, "compute_frac": 1.0, "ppl_shallow": p, "ppl_deep": p}
    return summary


@pytest.fixture(scope="module")
def small_corpus():
    return build_corpus(synthetic_text(2000, 0)[:2000], synthetic_text(300, 1)[:300])


# --- determinism --------------------------------------------------------------------------

def test_same_config_same_numbers(runs):
    _, (a, b, _) = runs
    assert a["metrics"] == b["metrics"]
    assert a["history"] == b["history"]
    assert a["sweep"] == b["sweep"]
    assert a["run_id"] == b["run_id"]


def test_same_config_same_checkpoint(runs, tiny):
    dirs, _ = runs
    sa = torch.load(checkpoint_path(dirs[0], tiny.run_id), weights_only=True)
    sb = torch.load(checkpoint_path(dirs[1], tiny.run_id), weights_only=True)
    assert sa["vocab"] == sb["vocab"]
    for name, value in sa["model"].items():
        assert torch.equal(value, sb["model"][name]), name


def test_other_seed_other_numbers(runs):
    _, (a, _, other) = runs
    assert other["run_id"] != a["run_id"]
    assert other["metrics"]["ppl_deep"] != a["metrics"]["ppl_deep"]
    assert other["history"][0]["train_loss"] != a["history"][0]["train_loss"]


# --- the record ---------------------------------------------------------------------------

def test_record_shape(runs, tiny):
    dirs, (record, _, _) = runs
    assert set(record) == {"schema_version", "run_id", "config", "metrics", "sweep", "history", "env", "timing",
                           "provenance"}
    assert record["schema_version"] == SCHEMA_VERSION
    assert record["run_id"] == tiny.run_id
    assert record["config"] == json.loads(json.dumps(tiny.to_dict()))
    assert set(record["metrics"]) == {"ppl", "shallow_frac", "compute_frac", "ppl_shallow", "ppl_deep",
                                      "best_epoch", "epochs_run", "eval_tokens"}
    assert [row["threshold"] for row in record["sweep"]] == list(DOC_THRESHOLDS)
    assert [h["epoch"] for h in record["history"]] == list(range(1, record["metrics"]["epochs_run"] + 1))
    assert set(record["history"][0]) == {"epoch", "train_loss", "val_ppl", "val_ppl_shallow", "val_ppl_deep",
                                         "val_shallow_frac"}
    assert record["env"]["device"] == "cpu" and record["env"]["threads"] == 1
    assert record["timing"]["train_s"] > 0 and record["timing"]["tokens_per_s"] > 0
    # on disk: exactly the returned record, plus the checkpoint, and no temporary files
    assert json.loads(record_path(dirs[0], tiny.run_id).read_text(encoding="utf-8")) == record
    assert sorted(os.listdir(runs_dir(dirs[0]))) == sorted([f"{tiny.run_id}.json", f"{tiny.run_id}.pt"])


def test_record_provenance_is_the_text_and_code_used(runs, tiny, corpus_dir):
    _, (record, _, _) = runs
    files = {split: (corpus_dir / f"{split}.txt").read_text(encoding="utf-8") for split in ("train", "valid", "test")}
    hashes = {"train": hashlib.sha256(files["train"][:tiny.train_chars].encode()).hexdigest(),
              "valid": hashlib.sha256(files["valid"][:tiny.val_chars].encode()).hexdigest(),
              "test": hashlib.sha256((corpus_dir / "test.txt").read_bytes()).hexdigest()}
    data = record["provenance"]["data"]
    assert data == {"source": "local", "location": str(corpus_dir.resolve()), "sha256": hashes,
                    "fingerprint": hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()[:16]}
    code = record["provenance"]["code"]
    assert code["ease_version"] == importlib.metadata.version("ease-companion")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if head.returncode == 0:  # a git checkout: the commit it is at, and whether it has changes
        assert code["git_commit"] == head.stdout.strip() and isinstance(code["git_dirty"], bool)


def test_eval_tokens_counts_full_validation_batches(runs):
    _, (record, _, _) = runs
    # 800 chars -> (800 - 1) // 16 = 49 windows -> 12 batches of 4 -> 12 * 4 * 16 tokens
    assert record["metrics"]["eval_tokens"] == 12 * 4 * 16


def test_metric_threshold_row_matches_the_sweep(runs, tiny):
    _, (record, _, _) = runs
    row = next(r for r in record["sweep"] if r["threshold"] == tiny.threshold)
    for key in ("ppl", "shallow_frac", "compute_frac"):
        assert record["metrics"][key] == row[key]


def test_final_metrics_are_the_best_epochs(runs, tiny):
    _, (record, _, _) = runs
    history, m = record["history"], record["metrics"]
    deep = [h["val_ppl_deep"] for h in history]
    assert m["best_epoch"] == deep.index(min(deep)) + 1
    assert m["epochs_run"] == len(history) <= m["best_epoch"] + tiny.patience + 1
    assert m["ppl_deep"] == pytest.approx(history[m["best_epoch"] - 1]["val_ppl_deep"], rel=1e-9)


def test_checkpoint_reproduces_the_record(runs, tiny):
    dirs, (record, _, _) = runs
    model, vocab = ease.load_checkpoint(dirs[0], tiny)
    corpus = load_corpus(tiny.corpus, tiny.train_chars, tiny.val_chars)
    assert vocab == corpus.vocab
    assert not model.training
    val_x, val_y = make_batches(corpus.val_ids, tiny.seq_len, tiny.batch_size)
    with torch.no_grad():
        out = [model(x, layers=[1, 3]) for x in val_x]
    flat_y = val_y.reshape(-1)
    deep = torch.cat([o[3].reshape(-1, len(vocab)) for o in out])
    shallow = torch.cat([o[1].reshape(-1, len(vocab)) for o in out])
    assert math.exp(F.cross_entropy(deep, flat_y).item()) == pytest.approx(record["metrics"]["ppl_deep"], rel=1e-5)
    assert math.exp(F.cross_entropy(shallow, flat_y).item()) == pytest.approx(record["metrics"]["ppl_shallow"],
                                                                             rel=1e-5)
    routed = route(collect_token_stats(model, val_x, val_y, tiny.exit_layer), tiny.threshold)
    assert routed["ppl"] == pytest.approx(record["metrics"]["ppl"], rel=1e-6)


def test_load_checkpoint_missing(tmp_path, tiny):
    with pytest.raises(FileNotFoundError, match="retrain=True"):
        ease.load_checkpoint(tmp_path, tiny)


def test_load_trained_gives_the_checkpoint_and_the_text_it_was_trained_on(runs, tiny):
    dirs, _ = runs
    model, corpus = train.load_trained(dirs[0], tiny)
    _, vocab = ease.load_checkpoint(dirs[0], tiny)
    assert corpus.vocab == vocab
    assert torch.equal(corpus.val_ids, load_corpus(tiny.corpus, tiny.train_chars, tiny.val_chars).val_ids)


def test_load_trained_refuses_a_checkpoint_of_another_vocabulary(runs, tiny, tmp_path):
    dirs, _ = runs
    state = torch.load(checkpoint_path(dirs[0], tiny.run_id), weights_only=True)
    state["vocab"] = state["vocab"][:-1] + ["\u2603"]  # as if the text had changed since training
    changed = checkpoint_path(tmp_path, tiny.run_id)
    changed.parent.mkdir(parents=True)
    torch.save(state, changed)
    with pytest.raises(ValueError, match=f"vocabulary.*{tiny.run_id}"):
        train.load_trained(tmp_path, tiny)
    with pytest.raises(ValueError, match="vocabulary"):  # and so does everything that reads a checkpoint
        train.collect_run_stats(tiny, tmp_path)


# --- `run` skips finished work and writes safely ---------------------------------------------

def test_run_returns_an_existing_record_without_training(runs, tiny, monkeypatch):
    dirs, (record, _, _) = runs

    def must_not_train(*args, **kwargs):
        raise AssertionError("training was started although the record exists")

    # the data is read (its fingerprint must be the record's), the model is not trained
    monkeypatch.setattr(train, "train_model", must_not_train)
    assert ease.run(tiny, dirs[0], progress=False) == record
    with pytest.raises(AssertionError, match="training was started"):  # the stand-in is really in place
        ease.run(tiny, dirs[0], retrain=True, progress=False)


def test_run_needs_a_run_config(tmp_path, tiny):
    with pytest.raises(TypeError, match="run\\(\\) needs a RunConfig, got dict"):
        ease.run(tiny.to_dict(), tmp_path)


def test_failed_checkpoint_leaves_no_record(tmp_path, tiny, monkeypatch):
    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    cfg = tiny.replace(max_epochs=1)
    with pytest.raises(OSError, match="disk full"):
        ease.run(cfg, tmp_path, progress=False)
    assert find_record(cfg, tmp_path) is None
    assert os.listdir(runs_dir(tmp_path)) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_unavailable_is_a_clear_error(tmp_path, tiny):
    with pytest.raises(RuntimeError, match="'cuda' was asked for, but CUDA is not available"):
        ease.run(tiny, tmp_path, device="cuda", progress=False)
    assert find_record(tiny, tmp_path) is None


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda' or 'auto', got 'tpu'"):
        pick_device("tpu")


# --- training: early stopping, best weights, non-finite losses --------------------------------

@pytest.mark.parametrize("patience, deep_ppls, epochs_run, best_epoch", [
    (0, [5.0, 4.0, 4.5, 1.0], 3, 2),           # stops at the first worse epoch
    (0, [5.0, 5.0, 1.0], 2, 1),                # a tie is not an improvement
    (1, [5.0, 4.0, 4.5, 3.0, 3.5, 3.6, 1.0], 6, 4),  # one worse epoch is tolerated, two are not
    (2, [5.0, 4.0, 4.5, 4.6, 4.7, 1.0], 5, 2),
    (3, [5.0, 4.0, 3.0, 2.0], 4, 4),           # max_epochs reached first
])
def test_early_stopping(patience, deep_ppls, epochs_run, best_epoch, small_corpus, monkeypatch):
    monkeypatch.setattr(train, "summary", fake_summary(deep_ppls))
    cfg = RunConfig(train_chars=2000, val_chars=300, seq_len=16, batch_size=4, dim=16, n_heads=2,
                    max_epochs=4 if patience == 3 else 10, patience=patience)
    result = train_model(cfg, small_corpus, progress=False)
    assert len(result.history) == epochs_run
    assert result.best_epoch == best_epoch
    assert [h["val_ppl_deep"] for h in result.history] == deep_ppls[:epochs_run]


def test_best_epochs_weights_are_kept(small_corpus, monkeypatch):
    snapshots = []
    real_collect = train.collect_token_stats

    def collect_and_snapshot(model, *args, **kwargs):
        snapshots.append(copy.deepcopy(model.state_dict()))
        return real_collect(model, *args, **kwargs)

    monkeypatch.setattr(train, "collect_token_stats", collect_and_snapshot)
    monkeypatch.setattr(train, "summary", fake_summary([5.0, 4.0, 4.5, 4.6]))
    cfg = RunConfig(train_chars=2000, val_chars=300, seq_len=16, batch_size=4, dim=16, n_heads=2,
                    max_epochs=4, patience=2)
    result = train_model(cfg, small_corpus, progress=False)
    assert result.best_epoch == 2 and len(snapshots) == 4
    final = result.model.state_dict()
    assert all(torch.equal(final[k], snapshots[1][k]) for k in final)  # epoch 2's weights
    assert not all(torch.equal(final[k], snapshots[3][k]) for k in final)  # not the last epoch's


def test_nan_loss_raises(small_corpus, monkeypatch):
    real_loss = train.weighted_loss
    monkeypatch.setattr(train, "weighted_loss", lambda *args: real_loss(*args) * float("nan"))
    cfg = RunConfig(train_chars=2000, val_chars=300, seq_len=16, batch_size=4, dim=16, n_heads=2)
    with pytest.raises(NonFiniteLossError, match="training loss became nan in epoch 1; lower lr"):
        train_model(cfg, small_corpus, progress=False)


def test_huge_learning_rate_raises(small_corpus):
    cfg = RunConfig(train_chars=2000, val_chars=300, seq_len=16, batch_size=4, dim=16, n_heads=2, lr=1e30)
    with pytest.raises(NonFiniteLossError, match="training loss became (nan|inf)"):
        train_model(cfg, small_corpus, progress=False)


def test_nan_validation_ppl_is_a_clear_error(small_corpus, monkeypatch):
    # e.g. the epoch's last step breaks the weights after the last (finite) training loss was taken
    monkeypatch.setattr(train, "summary", fake_summary([float("nan")] * 5))
    cfg = RunConfig(train_chars=2000, val_chars=300, seq_len=16, batch_size=4, dim=16, n_heads=2, max_epochs=1)
    with pytest.raises(NonFiniteLossError, match="nan"):
        train_model(cfg, small_corpus, progress=False)


def test_zero_weight_layers_above_the_exit_are_never_trained(small_corpus):
    cfg = RunConfig(setting="custom", weights={1: 1.0, 3: 0.0}, train_chars=2000, val_chars=300, seq_len=16,
                    batch_size=4, dim=16, n_heads=2, max_epochs=1)
    trained = train_model(cfg, small_corpus, progress=False).model
    initial = build_model(cfg, small_corpus.vocab_size)
    # AdamW's weight decay would move any parameter that got a gradient, even a zero one
    for block in (1, 2):
        for (name, p), q in zip(trained.blocks[block].named_parameters(), initial.blocks[block].parameters()):
            assert torch.equal(p, q), f"block {block + 1} {name} changed"
    assert not torch.equal(trained.blocks[0].attn.qkv.weight, initial.blocks[0].attn.qkv.weight)


# --- atomic writing and record files ---------------------------------------------------------

@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_atomic_write_failure_keeps_the_old_file(tmp_path, error):
    path = tmp_path / "runs" / "r.json"
    write_json(path, {"old": True})

    def half_then_fail(f):
        f.write(b'{"new": ')
        raise error

    with pytest.raises(type(error)):
        atomic_write(path, half_then_fail)
    assert json.loads(path.read_text(encoding="utf-8")) == {"old": True}
    assert os.listdir(path.parent) == ["r.json"]


def test_written_files_are_readable_by_all(tmp_path):
    """Finding 4: records were written 0600 (mkstemp's mode), unreadable to anyone else sharing the folder."""
    write_json(tmp_path / "r.json", {"a": 1})
    atomic_write(tmp_path / "c.pt", lambda f: f.write(b"x"))
    for name in ("r.json", "c.pt"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644, name


def test_atomic_write_failure_on_a_new_path_leaves_nothing(tmp_path):
    def fail(f):
        f.write(b"partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "new.json", fail)
    assert os.listdir(tmp_path) == []


def test_write_json_round_trip(tmp_path):
    obj = {"name": "東京 café", "values": [1, 2.5, None], "nested": {"a": True}}
    path = tmp_path / "deep" / "folder" / "x.json"
    write_json(path, obj)
    assert json.loads(path.read_text(encoding="utf-8")) == obj
    assert "東京" in path.read_text(encoding="utf-8")  # stored readable, not escaped
    assert os.listdir(path.parent) == ["x.json"]


def test_find_record_missing_is_none(tmp_path):
    assert find_record(RunConfig(), tmp_path) is None


def test_find_record_corrupt_json_names_the_file(tmp_path):
    cfg = RunConfig()
    path = record_path(tmp_path, cfg.run_id)
    path.parent.mkdir(parents=True)
    path.write_text('{"run_id": "trunc', encoding="utf-8")
    with pytest.raises(ValueError) as err:
        find_record(cfg, tmp_path)
    assert str(path) in str(err.value) and "not valid JSON" in str(err.value)


def test_find_record_with_another_config_is_refused(tmp_path):
    cfg = RunConfig()
    write_json(record_path(tmp_path, cfg.run_id), {"run_id": cfg.run_id, "config": cfg.replace(seed=9).to_dict()})
    with pytest.raises(ValueError, match="different config"):
        find_record(cfg, tmp_path)


# --- results tables --------------------------------------------------------------------------

def hand_record(cfg: RunConfig, ppl: float, thresholds: list[float], epochs: int) -> dict:
    return {
        "run_id": cfg.run_id, "config": cfg.to_dict(),
        "metrics": {"ppl": ppl, "shallow_frac": 0.5, "compute_frac": 2 / 3, "ppl_shallow": ppl + 1,
                    "ppl_deep": ppl - 1, "best_epoch": epochs, "epochs_run": epochs, "eval_tokens": 100},
        "sweep": [{"threshold": t, "ppl": ppl + t, "shallow_frac": 1 - t, "compute_frac": 1 - 2 * (1 - t) / 3}
                  for t in thresholds],
        "history": [{"epoch": e, "train_loss": 3.0 / e, "val_ppl": ppl + e, "val_ppl_shallow": ppl + e + 1,
                     "val_ppl_deep": ppl + e - 1, "val_shallow_frac": 0.1 * e} for e in range(1, epochs + 1)],
        "env": {"python": "3", "torch": "2", "platform": "x", "device": "cpu", "threads": 1},
        "timing": {"train_s": 10.0, "eval_s": 1.0, "tokens_per_s": 1000.0},
    }


@pytest.fixture
def results_dir(tmp_path):
    a = RunConfig(setting="A", alpha=0.7, seed=0)
    b = RunConfig(setting="B", alpha=0.3, seed=2, n_layers=4)
    write_json(record_path(tmp_path, a.run_id), hand_record(a, 10.0, [0.5, 0.9], 3))
    write_json(record_path(tmp_path, b.run_id), hand_record(b, 20.0, [0.5, 0.7, 0.9], 1))
    checkpoint_path(tmp_path, a.run_id).write_bytes(b"not a record")  # ignored: only *.json are records
    return tmp_path, a, b


def test_load_results(results_dir):
    folder, a, b = results_dir
    df = load_results(folder).set_index("run_id")
    assert len(df) == 2 and set(df.index) == {a.run_id, b.run_id}
    ra, rb = df.loc[a.run_id], df.loc[b.run_id]
    assert (ra["setting"], ra["alpha"], ra["seed"], ra["n_layers"]) == ("A", 0.7, 0, 3)
    assert (rb["setting"], rb["alpha"], rb["seed"], rb["n_layers"]) == ("B", 0.3, 2, 4)
    assert ra["weights"] == "1:0.7 2:0 3:0.3"
    assert rb["weights"] == "1:0.3 2:1 3:1 4:0.7"
    assert ra["sweep_thresholds"] == 41  # the default 0.025 grid from 0 to 1
    assert (ra["ppl"], ra["ppl_deep"], ra["epochs_run"], ra["train_s"]) == (10.0, 9.0, 3, 10.0)
    assert rb["ppl"] == 20.0 and len(rb["sweep"]) == 3 and len(rb["history"]) == 1


def test_load_sweeps(results_dir):
    folder, a, b = results_dir
    df = load_sweeps(folder)
    assert len(df) == 5
    assert {"run_id", "setting", "alpha", "seed", "n_layers", "threshold", "ppl", "shallow_frac",
            "compute_frac"} <= set(df.columns)
    rows_b = df[df["run_id"] == b.run_id].sort_values("threshold")
    assert rows_b["threshold"].tolist() == [0.5, 0.7, 0.9]
    assert rows_b["ppl"].tolist() == pytest.approx([20.5, 20.7, 20.9])
    assert set(rows_b["setting"]) == {"B"} and set(rows_b["n_layers"]) == {4}


def test_load_histories(results_dir):
    folder, a, b = results_dir
    df = load_histories(folder)
    assert len(df) == 4
    rows_a = df[df["run_id"] == a.run_id].sort_values("epoch")
    assert rows_a["epoch"].tolist() == [1, 2, 3]
    assert rows_a["train_loss"].tolist() == pytest.approx([3.0, 1.5, 1.0])
    assert set(rows_a["alpha"]) == {0.7} and set(rows_a["seed"]) == {0}


def test_load_results_of_an_empty_folder(tmp_path):
    assert len(load_results(tmp_path)) == 0
    assert len(load_sweeps(tmp_path)) == 0


def test_load_results_reads_real_runs(runs, tiny):
    dirs, (record, _, _) = runs
    df = load_results(dirs[0])
    assert df["run_id"].tolist() == [tiny.run_id]
    assert df.loc[0, "ppl"] == record["metrics"]["ppl"]
    assert len(load_sweeps(dirs[0])) == len(DOC_THRESHOLDS)
    assert len(load_histories(dirs[0])) == record["metrics"]["epochs_run"]



# --- the original's sweep of the last epoch's weights, and cosine decay ----------------------------
def test_sweep_of_the_last_epochs_weights(tiny, tmp_path, monkeypatch):
    # scripted validation: epoch 2 is the best, epoch 3 worse, so training stops after epoch 3 and the
    # last weights are not the kept ones (the fourth value is the final summary of the kept weights)
    config = tiny.replace(max_epochs=5, patience=0)
    records = {}
    for which in ("last", "best"):
        monkeypatch.setattr(train, "summary", fake_summary([5.0, 4.0, 6.0, 4.0]))
        records[which] = ease.run(config.replace(sweep_weights=which), tmp_path / which, progress=False)
    last, best = records["last"], records["best"]
    assert last["metrics"]["best_epoch"] == 2 and last["metrics"]["epochs_run"] == 3
    assert last["metrics"]["sweep_epoch"] == 3 and "sweep_epoch" not in best["metrics"]
    assert {k: v for k, v in last["metrics"].items() if k != "sweep_epoch"} == best["metrics"]
    assert last["history"] == best["history"]  # the same training
    assert last["sweep"] != best["sweep"]  # but another set of weights swept


def test_cosine_schedule_decays_to_zero(small_corpus, monkeypatch):
    seen = []
    original = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    config = RunConfig(train_chars=2000, val_chars=300, seq_len=16, batch_size=4, dim=16, n_heads=2,
                       max_epochs=2, patience=2, lr_schedule="cosine", lr=1e-3)
    train_model(config, small_corpus, progress=False)
    assert seen[0] == pytest.approx(1e-3)
    assert all(b < a for a, b in zip(seen, seen[1:]))  # strictly decreasing, step by step
    steps = len(seen)
    assert seen[-1] == pytest.approx(1e-3 * (1 + math.cos(math.pi * (steps - 1) / steps)) / 2)


def test_compiled_training_repeats_exactly_and_matches_eager_closely(small_corpus):
    cfg = RunConfig(train_chars=2000, val_chars=300, seq_len=16, batch_size=4, dim=16, n_heads=2, max_epochs=2,
                    patience=2)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as run() and the pipeline give each run (compiled kernels may add up in parallel)
    try:
        compiled = [train_model(cfg.replace(compile=True), small_corpus, progress=False) for _ in range(2)]
        eager = train_model(cfg, small_corpus, progress=False)
    finally:
        torch.set_num_threads(before)
    assert compiled[0].history == compiled[1].history  # same config, same numbers
    for fast, plain in zip(compiled[0].history, eager.history):
        assert fast["train_loss"] == pytest.approx(plain["train_loss"], rel=1e-4)
        assert fast["val_ppl_deep"] == pytest.approx(plain["val_ppl_deep"], rel=1e-4)
    assert cfg.replace(compile=True).run_id != cfg.run_id  # rounding differs, so identity does too


def test_held_out_results_and_selection_on_the_runs_own_objective(tiny, tmp_path):
    cfg = tiny.replace(setting="B", alpha=0.5, test_chars=-1, select_on="objective", max_epochs=3, patience=3)
    record = ease.run(cfg, tmp_path, progress=False)
    history = record["history"]
    assert record["metrics"]["best_epoch"] == min(history, key=lambda h: h["val_objective"])["epoch"]
    test = record["test"]
    # the test numbers are those of the kept model on the whole test split, computed again here
    model, _ = train.load_trained(tmp_path, cfg)
    corpus = load_corpus(cfg.corpus, cfg.train_chars, cfg.val_chars, test_chars=-1)
    x, y = make_batches(corpus.test_ids, cfg.seq_len, cfg.batch_size)
    with torch.no_grad():
        ce = torch.cat([F.cross_entropy(model(xb)[cfg.n_layers].reshape(-1, corpus.vocab_size), yb.reshape(-1),
                                        reduction="none") for xb, yb in zip(x, y)])
    assert test["tokens"] == y.numel() == sum(test["block_sums"]["tokens"])
    assert test["metrics"]["ppl_deep"] == pytest.approx(math.exp(ce.double().mean().item()), rel=1e-5)
    assert test["oracles"]["label_ppl"] <= min(test["metrics"]["ppl_deep"], test["metrics"]["ppl_shallow"])
    assert [row["threshold"] for row in test["sweep"]] == list(cfg.sweep_thresholds)
    # a record whose test results are missing is refused
    path = record_path(tmp_path, cfg.run_id)
    stripped = {k: v for k, v in record.items() if k != "test"}
    path.write_text(json.dumps(stripped))
    with pytest.raises(ease.records.RecordError, match="has no test-text results, but its config has test_chars=-1"):
        find_record(cfg, tmp_path)


def test_validation_only_runs_read_no_test_text(runs):
    _, (record, _, _) = runs
    assert "test" not in record and "val_objective" not in record["history"][0]


def test_calibrated_threshold_is_learn_then_tests_choice_and_the_metrics_are_read_there(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(train, "CALIBRATION_BLOCK_TOKENS", 16)  # many small blocks from the small corpus
    cfg = tiny.replace(calibrate=True, calibration_chars=3000, calibration_epsilon=0.2, calibration_delta=0.2,
                       sweep_thresholds=tuple(i / 20 for i in range(21)))
    record = ease.run(cfg, tmp_path, progress=False)
    cal = record["calibration"]
    assert cal["n_blocks"] == cal["tokens"] // 16 > 50
    assert cal["thresholds"][0] == 1.0  # tested from the safest down
    # every tested threshold but a failing last one is certified, and the kept one is the last certified
    certified = [t for t, p in zip(cal["thresholds"], cal["p_values"]) if p <= cal["delta"]]
    assert certified == cal["thresholds"][:len(certified)] and certified, cal
    assert cal["threshold"] == certified[-1]
    assert len(certified) == len(cal["thresholds"]) or cal["p_values"][len(certified)] > cal["delta"]
    row = next(r for r in record["sweep"] if r["threshold"] == cal["threshold"])
    assert record["metrics"]["shallow_frac"] == row["shallow_frac"] and record["metrics"]["ppl"] == row["ppl"]
    assert ease.calibrate.operating_threshold(record) == cal["threshold"]
    # the calibration text is the validation split after the text that chose the epoch
    text = (Path(tiny.corpus) / "valid.txt").read_text(encoding="utf-8")[cfg.val_chars:cfg.val_chars + 3000]
    assert cal["sha256"] == hashlib.sha256(text.encode()).hexdigest()


def test_nothing_certified_means_never_exit(tiny, tmp_path):
    # one block of calibration text can certify nothing at delta 0.1: the run never exits
    cfg = tiny.replace(calibrate=True, calibration_chars=3000)
    record = ease.run(cfg, tmp_path, progress=False)
    assert record["calibration"]["n_blocks"] == 1 and record["calibration"]["threshold"] is None
    assert record["metrics"]["shallow_frac"] == 0.0 and ease.calibrate.operating_threshold(record) is None


@pytest.mark.parametrize("recipe", [{"layer_dropout": 0.5}, {"distill": 1.0}, {"exit_warmup": 1},
                                    {"train_propagation": True, "threshold": 0.3}])
def test_each_training_recipe_trains_repeatably_and_changes_the_run(tiny, runs, recipe, tmp_path):
    config = tiny.replace(**recipe)
    first = ease.run(config, tmp_path / "a", progress=False)
    again = ease.run(config, tmp_path / "b", progress=False)
    assert first["metrics"] == again["metrics"]  # seeded: the same layers dropped, the same numbers
    assert first["metrics"]["ppl"] != runs[1][0]["metrics"]["ppl"]  # the recipe changed training
    assert all(math.isfinite(v) for v in first["metrics"].values() if isinstance(v, float))


def _budget_record(seed: int, losses: list[float]) -> dict:
    best = min(range(len(losses)), key=losses.__getitem__) + 1
    return {"run_id": f"r{seed}-{len(losses)}", "config": {"seed": seed}, "metrics": {"best_epoch": best},
            "history": [{"epoch": e + 1, "val_objective": v} for e, v in enumerate(losses)]}


def test_choose_budget_reads_the_kept_epochs_validation_loss_over_common_seeds():
    from ease.results import choose_budget, kept_val_objective

    short = [_budget_record(0, [2.0, 1.9]), _budget_record(1, [2.1, 1.8])]
    long_ = [_budget_record(0, [2.0, 1.7, 1.75, 1.8]), _budget_record(1, [2.0, 1.95, 1.9, 1.85])]
    assert kept_val_objective(long_[0]) == 1.7  # the kept epoch's, not the last one's
    assert choose_budget({20: short, 40: long_}) == 40  # mean 1.775 against 1.85
    worse = [_budget_record(0, [2.0, 1.95]), _budget_record(1, [2.0, 1.95]), _budget_record(2, [0.1, 0.1])]
    # seed 2 exists at one budget only: it must not decide
    assert choose_budget({20: short, 40: worse}) == 20
    with pytest.raises(ValueError, match="no seed in common"):
        choose_budget({20: short[:1], 40: long_[1:]})
    # three budgets: double while validation improves, each step over the seeds both budgets have
    longer = [_budget_record(0, [2.0, 1.6])]  # seed 0 only: 1.6 against 40's seed-0 1.7
    assert choose_budget({20: short, 40: long_, 80: longer}) == 80
    assert choose_budget({20: short, 40: long_, 80: [_budget_record(0, [2.0, 1.72])]}) == 40
    # a larger budget is not reached past one that does not improve, even if it would be lower still
    assert choose_budget({20: short, 40: worse, 80: [_budget_record(0, [1.0]), _budget_record(1, [1.0])]}) == 20
    no_objective = {"run_id": "doc", "config": {"seed": 0}, "metrics": {"best_epoch": 1}, "history": [{"epoch": 1}]}
    with pytest.raises(ValueError, match="select_on"):
        kept_val_objective(no_objective)
