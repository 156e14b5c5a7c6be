"""Training with early stopping; `run`: train, evaluate, sweep and record one config; and loading a
finished run back (`load_checkpoint`, `load_trained`)."""
from __future__ import annotations

import copy
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm  # plain text bar: also fine in notebooks without ipywidgets

from ease.config import RunConfig
from ease.calibrate import block_risks, learn_then_test
from ease.data import CharCorpus, calibration_text, encode_held_out, load_corpus, make_batches, sha256_text
from ease.exits import TokenStats, block_sums, collect_token_stats, layer_losses, summary, sweep
from ease.losses import recipe_loss, trained_layers, weighted_loss
from ease.model import EarlyExitLM, ModelConfig
from ease.records import SCHEMA_VERSION, check_record, code_provenance
from ease.results import atomic_write, checkpoint_path, find_record, record_path, write_json


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def pick_device(device: str = "cpu") -> torch.device:
    """'cpu', 'cuda', or 'auto' (CUDA when available)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} was asked for, but CUDA is not available here; use 'cpu' or 'auto'")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'auto', got {device!r}")
    return torch.device(device)


def build_model(config: RunConfig, vocab_size: int) -> EarlyExitLM:
    torch.manual_seed(config.seed)
    return EarlyExitLM(ModelConfig(vocab_size=vocab_size, n_layers=config.n_layers, dim=config.dim,
                                   n_heads=config.n_heads, max_seq_len=config.seq_len, norm=config.norm))


@dataclass
class TrainResult:
    model: EarlyExitLM
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    last_state: dict | None = None  # the weights of the last epoch run (the model holds the best epoch's)
    train_s: float = 0.0  # the whole loop: training steps and the per-epoch evaluations
    train_tokens: int = 0


def train_model(config: RunConfig, corpus: CharCorpus, device: str = "cpu", progress: bool = True) -> TrainResult:
    """AdamW with gradient clipping; evaluate each epoch; keep the best epoch's weights.

    Early stopping and the kept epoch watch the last layer's validation PPL (select_on "deep") or
    the run's own weighted loss on the validation text (select_on "objective"): training stops once
    it has not improved for more than `patience` epochs (patience 0: at the first worse epoch). With
    lr_schedule "cosine" the learning rate decays step by step to 0 at the end of max_epochs.
    """
    dev = pick_device(device)
    model = build_model(config, corpus.vocab_size).to(dev)
    # fused: one kernel for the whole parameter update instead of a dozen small ops per tensor
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, fused=True)
    generator = torch.Generator().manual_seed(config.seed)
    train_x, train_y = make_batches(corpus.train_ids, config.seq_len, config.batch_size)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.max_epochs * len(train_x))
                 if config.lr_schedule == "cosine" else None)
    val_x, val_y = make_batches(corpus.val_ids, config.seq_len, config.batch_size)
    train_x, train_y = train_x.to(dev), train_y.to(dev)
    layers = trained_layers(config.weights)

    recipes = config.layer_dropout or config.distill or config.exit_warmup or config.train_propagation

    def training_loss(x: torch.Tensor, y: torch.Tensor, skip=None, ramp=None) -> torch.Tensor:
        if not recipes:  # the document's loss: nothing else in the step
            return weighted_loss(model(x, layers=layers), y, config.weights)
        propagate = (config.exit_layer, config.threshold) if config.train_propagation else None
        return recipe_loss(model(x, layers=layers, skip=skip, propagate=propagate), y, config.weights, ramp,
                           config.distill)

    # layer dropout: block l's skip probability rises from 0 (first block) to layer_dropout (last), as LayerSkip's
    drop_rates = torch.tensor([config.layer_dropout * (2 ** (l / max(1, config.n_layers - 1)) - 1)
                               for l in range(config.n_layers)])
    steps_per_epoch, step = len(train_x), 0

    if config.compile:  # compiled on the first step, inside the timed loop: its cost is counted in train_s
        training_loss = compiled(training_loss)
    result = TrainResult(model)
    best_ppl, best_state, since_best = float("inf"), None, 0
    start = time.perf_counter()
    bar = tqdm(range(1, config.max_epochs + 1), desc=config.run_id, unit="epoch", disable=not progress)
    for epoch in bar:
        model.train()
        loss_sum = torch.zeros((), device=dev)
        # batches in order, as the original code; `shuffle` permutes them each epoch instead
        order = torch.randperm(len(train_x), generator=generator) if config.shuffle else torch.arange(len(train_x))
        for i in order.tolist():
            if recipes:
                skip = (torch.rand(config.batch_size, config.n_layers, generator=generator) < drop_rates).to(dev) \
                    if config.layer_dropout else None
                ramp = torch.tensor(min(1.0, step / (config.exit_warmup * steps_per_epoch))
                                    if config.exit_warmup else 1.0, device=dev)
                loss = training_loss(train_x[i], train_y[i], skip, ramp)
            else:
                loss = training_loss(train_x[i], train_y[i])
            step += 1
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip, foreach=True)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            loss_sum += loss.detach()  # no per-step sync: summed on the device, read once per epoch
        train_loss = loss_sum.item() / len(train_x)
        if not torch.isfinite(torch.tensor(train_loss)):
            raise NonFiniteLossError(f"{config.run_id}: training loss became {train_loss} in epoch {epoch}; "
                                     "lower lr or check the loss weights")
        result.train_tokens += train_x.numel()
        stats = collect_token_stats(model, val_x, val_y, config.exit_layer, dev)
        val = summary(stats, config.threshold)
        result.history.append({"epoch": epoch, "train_loss": train_loss, "val_ppl": val["ppl"],
                               "val_ppl_shallow": val["ppl_shallow"], "val_ppl_deep": val["ppl_deep"],
                               "val_shallow_frac": val["shallow_frac"]})
        watched = val["ppl_deep"]
        if config.select_on == "objective":  # the run's own loss on the validation text
            losses = layer_losses(model, val_x, val_y, layers, dev)
            watched = sum(config.weights[layer] * ce for layer, ce in losses.items())
            result.history[-1]["val_objective"] = watched
        bar.set_postfix(loss=f"{train_loss:.3f}", val_ppl_deep=f"{val['ppl_deep']:.2f}")
        if not all(map(math.isfinite, [*val.values(), watched])):  # the epoch's last steps can break the weights
            raise NonFiniteLossError(f"{config.run_id}: validation metrics became non-finite in epoch {epoch} "
                                     f"({val}); lower lr or check the loss weights")
        if watched < best_ppl:
            best_ppl, since_best, result.best_epoch = watched, 0, epoch
            best_state = copy.deepcopy(model.state_dict())
        else:
            since_best += 1
            if since_best > config.patience:
                break
    bar.close()
    result.train_s = time.perf_counter() - start
    if config.sweep_weights == "last":
        result.last_state = copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return result


def compiled(fn):
    """torch.compile with its compiled code cached on disk, so only a machine's first run of a given
    shape pays the full compile (tens of seconds on CPU); later runs load it in a few seconds."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path.home() / ".cache" / "ease" / "torchinductor"))
    return torch.compile(fn)


def environment(device: torch.device) -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "device": str(device), "threads": torch.get_num_threads()}


def run(config: RunConfig, results_dir: str | Path = "results", device: str = "cpu", num_threads: int | None = 1,
        retrain: bool = False, progress: bool = True) -> dict:
    """Train, evaluate and sweep one config; write its checkpoint and record; return the record.

    A finished record of the same config made on the same text (its data fingerprint, see
    ease.data.data_provenance) is returned as it is (no retraining) unless `retrain`; one made on
    other text is an error (ease.results.find_record). So the data is read first, even for a
    finished run. `num_threads=1` by default: float sums can depend on the thread count, and one
    thread per run is also what the pipeline gives each worker. None leaves torch's setting alone.
    """
    if not isinstance(config, RunConfig):
        raise TypeError(f"run() needs a RunConfig, got {type(config).__name__}")
    corpus = load_corpus(config.corpus, config.train_chars, config.val_chars, config.vocab_from, config.test_chars)
    fingerprint = corpus.provenance["fingerprint"]
    if not retrain and (record := find_record(config, results_dir, fingerprint)) is not None:
        return record
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _train_and_record(config, corpus, results_dir, device, progress)
    finally:  # the caller's thread setting is theirs
        torch.set_num_threads(previous_threads)


def _train_and_record(config: RunConfig, corpus: CharCorpus, results_dir: str | Path, device: str,
                      progress: bool) -> dict:
    trained = train_model(config, corpus, device, progress)
    dev = next(trained.model.parameters()).device

    start = time.perf_counter()
    calibration = calibrate_threshold(trained.model, corpus, config, dev) if config.calibrate else None
    # the threshold the record's metrics are read at: the config's, or the calibrated one (none: never exit)
    operating = config.threshold if calibration is None else \
        (math.inf if calibration["threshold"] is None else calibration["threshold"])
    val_x, val_y = make_batches(corpus.val_ids, config.seq_len, config.batch_size)
    stats = collect_token_stats(trained.model, val_x, val_y, config.exit_layer, dev)
    metrics = summary(stats, operating)
    metrics.update(best_epoch=trained.best_epoch, epochs_run=len(trained.history), eval_tokens=len(stats))
    if trained.last_state is not None:  # sweep_weights "last": the original swept the post-stop weights
        last_model = build_model(config, corpus.vocab_size).to(dev)
        last_model.load_state_dict(trained.last_state)
        stats = collect_token_stats(last_model, val_x, val_y, config.exit_layer, dev)
        metrics["sweep_epoch"] = len(trained.history)
    sweep_rows = sweep(stats, config.sweep_thresholds)
    test = held_out(trained.model, corpus, config, dev, operating) if corpus.test_ids is not None else None
    eval_s = time.perf_counter() - start

    record = {
        "schema_version": SCHEMA_VERSION,
        "run_id": config.run_id,
        "config": config.to_dict(),
        "metrics": metrics,
        "sweep": sweep_rows,
        "history": trained.history,
        "env": environment(dev),
        "timing": {"train_s": trained.train_s, "eval_s": eval_s,
                   "tokens_per_s": trained.train_tokens / trained.train_s},
        "provenance": {"data": corpus.provenance, "code": code_provenance()},
    }
    if test is not None:
        record["test"] = test
    if calibration is not None:
        record["calibration"] = calibration
    check_record(record, record_path(results_dir, config.run_id))  # never write a record readers would refuse
    # Checkpoint first, record last: a record on disk means the whole run finished.
    state = {"config": config.to_dict(), "vocab": corpus.vocab,
             "model": {k: v.cpu() for k, v in trained.model.state_dict().items()}}
    atomic_write(checkpoint_path(results_dir, config.run_id), lambda f: torch.save(state, f))
    write_json(record_path(results_dir, config.run_id), record)
    return record


# Held-out intervals resample contiguous blocks of the test text: 50 blocks of about 25,000 characters,
# about one WikiText article each, so tokens inside a block (dependent) stay together.
TEST_BLOCKS = 50


def held_out(model: EarlyExitLM, corpus: CharCorpus, config: RunConfig, dev: torch.device,
             threshold: float) -> dict:
    """The kept model on the held-out test text: routed metrics at `threshold` (the operating one), the
    sweep, the two oracles, and per-block sums for intervals over the text (ease.exits.block_sums)."""
    test_x, test_y = make_batches(corpus.test_ids, config.seq_len, config.batch_size)
    stats = collect_token_stats(model, test_x, test_y, config.exit_layer, dev)
    label = torch.minimum(stats.ce_exit, stats.ce_last)
    consistency = torch.where(stats.agree, stats.ce_exit, stats.ce_last)
    return {"unknown_chars": corpus.test_unknown_chars, "tokens": len(stats), "blocks": TEST_BLOCKS,
            "metrics": summary(stats, threshold), "sweep": sweep(stats, config.sweep_thresholds),
            "oracles": {"label_ppl": math.exp(label.double().mean().item()),
                        "consistency_ppl": math.exp(consistency.double().mean().item()),
                        "consistency_shallow_frac": stats.agree.double().mean().item()},
            "block_sums": block_sums(stats, config.sweep_thresholds, TEST_BLOCKS)}


# Calibration blocks: one batch of tokens each (about 2,000 characters, a paragraph or two of an article);
# the default 200,000 calibration characters give 97 of them.
CALIBRATION_BLOCK_TOKENS = 2048


def calibrate_threshold(model: EarlyExitLM, corpus: CharCorpus, config: RunConfig, dev: torch.device) -> dict:
    """Learn-then-Test on the calibration text (ease.data.calibration_text): the record's "calibration"."""
    text = calibration_text(config.corpus, config.val_chars, config.calibration_chars)
    ids, unknown = encode_held_out(corpus, text)
    cal_x, cal_y = make_batches(ids, config.seq_len, config.batch_size)
    stats = collect_token_stats(model, cal_x, cal_y, config.exit_layer, dev)
    n_blocks = max(1, len(stats) // CALIBRATION_BLOCK_TOKENS)
    risks = block_risks(stats, config.sweep_thresholds, n_blocks, config.calibration_risk)
    result = learn_then_test(risks, config.sweep_thresholds, config.calibration_epsilon, config.calibration_delta,
                             config.calibration_risk)
    return {**result.to_dict(), "tokens": len(stats), "unknown_chars": unknown, "sha256": sha256_text(text)}


def load_checkpoint(results_dir: str | Path, config: RunConfig) -> tuple[EarlyExitLM, list[str]]:
    """The trained model and vocabulary of a finished run."""
    path = checkpoint_path(results_dir, config.run_id)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint {path}: records are committed without checkpoints. Rebuild it "
                                f"with ease.run(config, {str(results_dir)!r}, retrain=True) (deterministic on CPU)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(config, len(state["vocab"]))
    model.load_state_dict(state["model"])
    return model.eval(), state["vocab"]


def load_trained(results_dir: str | Path, config: RunConfig) -> tuple[EarlyExitLM, CharCorpus]:
    """A finished run's trained model and its corpus, checked to be the text it was trained on.

    The corpus (with its test text when the config has one) is read again from `config`; if its vocabulary is not the checkpoint's (the data
    changed since the run), character ids would mean other characters, so this is an error.
    """
    model, vocab = load_checkpoint(results_dir, config)
    corpus = load_corpus(config.corpus, config.train_chars, config.val_chars, config.vocab_from, config.test_chars)
    if corpus.vocab != vocab:
        raise ValueError(f"the corpus now gives a different vocabulary than the checkpoint of {config.run_id} "
                         "was trained with: the data changed; rebuild the run")
    return model, corpus


def collect_run_stats(config: RunConfig, results_dir: str | Path, device: str = "cpu") -> TokenStats:
    """Per-token exit statistics of a finished run on its validation text, from its checkpoint."""
    model, corpus = load_trained(results_dir, config)
    dev = pick_device(device)
    val_x, val_y = make_batches(corpus.val_ids, config.seq_len, config.batch_size)
    return collect_token_stats(model.to(dev), val_x, val_y, config.exit_layer, dev)
