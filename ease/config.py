"""Run configuration: every knob of one training run, validated on construction.

A `RunConfig` fully determines a run's numbers (on CPU), so its canonical JSON form is
hashed into the run's id: the same config finds its finished record.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from ease.losses import SETTINGS, setting_weights, validate_weights

# Thresholds the experiment document reports, and the default sweep: a 0.025 grid from 0 to 1
# (it contains the document's thresholds, so one sweep serves both its tables and the curves).
DOC_THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95)
FINE_THRESHOLDS = tuple(round(i * 0.025, 3) for i in range(41))
NORMS = ("post", "pre")
VOCAB_SOURCES = ("train+valid", "train")
LR_SCHEDULES = ("constant", "cosine")
SWEEP_WEIGHTS = ("best", "last")
SELECT_ON = ("deep", "objective")
CALIBRATION_RISKS = ("inconsistency", "ppl_increase")  # see ease.calibrate
# Fields added after records were first published. They enter the run_id hash only when they
# differ from these defaults, so every record made before they existed keeps its id.
LATER_FIELDS = {"lr_schedule": "constant", "sweep_weights": "best", "compile": False, "test_chars": 0,
                "select_on": "deep", "calibrate": False, "calibration_risk": "inconsistency",
                "calibration_epsilon": 0.05, "calibration_delta": 0.1, "calibration_chars": 200_000,
                "layer_dropout": 0.0, "distill": 0.0, "exit_warmup": 0, "train_propagation": False, "exits": []}


@dataclass(frozen=True)
class RunConfig:
    """One (setting, alpha, seed) run. Defaults reproduce the experiment document's setup."""

    setting: str = "A"  # "A", "B", or "custom" (then `weights` is required)
    alpha: float | None = 0.7  # weight of the exit layer's loss in settings A and B
    weights: dict[int, float] | None = None  # {layer: weight}, 1-indexed; derived for A and B
    seed: int = 0
    # model
    n_layers: int = 3
    dim: int = 64
    n_heads: int = 4
    norm: str = "post"  # "post" as in the original code, or "pre"
    # data
    corpus: str = "wikitext-2"  # "wikitext-2", "placeholder" (see ease.data), or a folder with train.txt, valid.txt
    train_chars: int = 200_000
    val_chars: int = 20_000
    vocab_from: str = "train+valid"  # the original code built its vocabulary from both texts
    # held-out text evaluated once after training (record["test"]): the first test_chars characters of
    # the test split, -1 for all of it, 0 for none (the document evaluated on validation text only)
    test_chars: int = 0
    seq_len: int = 64
    batch_size: int = 32
    shuffle: bool = False  # False: batches in corpus order every epoch, as the original code
    # optimisation
    lr: float = 1e-3
    grad_clip: float = 1.0
    max_epochs: int = 50
    patience: int = 0  # 0: stop at the first epoch whose validation PPL is worse
    # what the kept epoch and early stopping watch on the validation text: "deep", the last layer's PPL (the
    # document's rule), or "objective", the run's own training loss (the weighted per-layer CE)
    select_on: str = "deep"
    lr_schedule: str = "constant"  # "constant" as in the original, or "cosine" (decay to 0 over max_epochs)
    # torch.compile the training step: fused kernels, about 1.2x faster on CPU once compiled (the compiled
    # code is cached on disk across runs). Its sums round differently from eager mode, so a compiled run's
    # numbers differ from an eager run's at float tolerance: that is why it is part of the run's identity.
    # Repeatable with one thread (what ease.run and the pipeline give a run); with more, compiled kernels
    # may add up gradients in a varying order.
    compile: bool = False
    # training recipes for early exit (each off by default; see ease.train.recipe_loss and EarlyExitLM.hidden_states):
    # layer_dropout: LayerSkip's layer dropout, block l (0-indexed) of a training sequence skipped with probability
    # layer_dropout · (2^(l / (n_layers - 1)) - 1), from 0 at the first block to layer_dropout at the last;
    # distill: weight of the self-distillation loss KL(last layer || layer) of every other layer with a loss weight
    # (the last layer's distribution is the teacher, without gradient); exit_warmup: epochs over which the loss
    # weights of the layers below the last rise linearly from 0 (EE-LLM's warm-up); train_propagation: train with
    # the state propagation of real exit (tokens at least `threshold` sure at exit_layer keep that state deeper)
    layer_dropout: float = 0.0
    distill: float = 0.0
    exit_warmup: int = 0
    train_propagation: bool = False
    # several exits: the exit layers of a model studied with several (increasing, each below the last layer); the
    # run's analysis then adds the several-exit sweep on test text (ease.analysis.multi_exit_analysis). Empty: one
    # exit, `exit_layer`, as everywhere else
    exits: tuple[int, ...] = ()
    # early exit
    exit_layer: int = 1
    threshold: float = 0.95  # the operating threshold (with `calibrate`: the one per-epoch numbers use)
    # calibrate: after training, choose the operating threshold by Learn-then-Test (ease.calibrate) on held-out
    # validation text (the calibration_chars characters after the first val_chars): the most aggressive
    # sweep threshold whose risk (calibration_risk, against the full model) is <= calibration_epsilon with
    # probability >= 1 - calibration_delta; record["calibration"] says which, and metrics are read there
    calibrate: bool = False
    calibration_risk: str = "inconsistency"
    calibration_epsilon: float = 0.05
    calibration_delta: float = 0.1
    calibration_chars: int = 200_000
    sweep_thresholds: tuple[float, ...] = field(default=FINE_THRESHOLDS)
    # "best": sweep the kept (best-epoch) weights; "last": sweep the weights of the last epoch run,
    # as the original code did after early stopping (its results table used the best epoch)
    sweep_weights: str = "best"

    def __post_init__(self) -> None:
        def fail(msg: str) -> None:
            raise ValueError(f"RunConfig: {msg}")

        for name in ("seed", "n_layers", "dim", "n_heads", "train_chars", "val_chars", "seq_len",
                     "batch_size", "max_epochs", "patience", "exit_layer", "test_chars", "calibration_chars",
                     "exit_warmup"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                fail(f"{name} must be an integer, got {value!r}")
        for name in ("n_layers", "dim", "n_heads", "seq_len", "batch_size", "max_epochs",
                     "train_chars", "val_chars"):
            if getattr(self, name) < 1:
                fail(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.seed < 0 or self.patience < 0:
            fail("seed and patience must be non-negative")
        if self.test_chars < -1:
            fail(f"test_chars must be a number of characters, 0 (no test text) or -1 (all of it), got {self.test_chars}")
        if self.select_on not in SELECT_ON:
            fail(f"select_on must be one of {SELECT_ON}, got {self.select_on!r}")
        if self.calibration_risk not in CALIBRATION_RISKS:
            fail(f"calibration_risk must be one of {CALIBRATION_RISKS}, got {self.calibration_risk!r}")
        for name in ("calibration_epsilon", "calibration_delta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                fail(f"{name} must be a number between 0 and 1 (exclusive), got {value!r}")
        if isinstance(self.layer_dropout, bool) or not isinstance(self.layer_dropout, (int, float)) \
                or not 0 <= self.layer_dropout < 1:
            fail(f"layer_dropout must be a probability in [0, 1), got {self.layer_dropout!r}")
        if isinstance(self.distill, bool) or not isinstance(self.distill, (int, float)) \
                or not math.isfinite(self.distill) or self.distill < 0:
            fail(f"distill must be a finite number >= 0, got {self.distill!r}")
        if self.exit_warmup < 0:
            fail(f"exit_warmup must be a number of epochs >= 0, got {self.exit_warmup}")
        if not isinstance(self.train_propagation, bool):
            fail(f"train_propagation must be true or false, got {self.train_propagation!r}")
        if self.train_propagation and self.exit_layer >= self.n_layers:
            fail("train_propagation needs an exit layer below the last layer (exit_layer < n_layers)")
        if self.calibration_chars < 1:
            fail(f"calibration_chars must be at least 1, got {self.calibration_chars}")
        if self.calibrate and self.exit_layer >= self.n_layers:
            fail("calibrate needs an exit layer below the last layer (exit_layer < n_layers)")
        if self.dim % self.n_heads or (self.dim // self.n_heads) % 2:
            fail(f"dim ({self.dim}) must split into n_heads ({self.n_heads}) heads of even size "
                 "(rotary positions rotate pairs of channels)")
        for name in ("shuffle", "compile", "calibrate"):
            if not isinstance(getattr(self, name), bool):
                fail(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.norm not in NORMS:
            fail(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            fail(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.sweep_weights not in SWEEP_WEIGHTS:
            fail(f"sweep_weights must be one of {SWEEP_WEIGHTS}, got {self.sweep_weights!r}")
        if self.vocab_from not in VOCAB_SOURCES:
            fail(f"vocab_from must be one of {VOCAB_SOURCES}, got {self.vocab_from!r}")
        if not 1 <= self.exit_layer <= self.n_layers:
            fail(f"exit_layer must be between 1 and n_layers={self.n_layers}, got {self.exit_layer}")
        for name in ("lr", "grad_clip"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                fail(f"{name} must be a positive number, got {value!r}")
        if not isinstance(self.corpus, str) or not self.corpus:
            fail(f"corpus must be 'wikitext-2', 'placeholder' or a folder path, got {self.corpus!r}")
        _check_threshold(self.threshold, "threshold")
        if isinstance(self.sweep_thresholds, (str, bytes)) or not hasattr(self.sweep_thresholds, "__iter__"):
            fail(f"sweep_thresholds must be a list of numbers, got {self.sweep_thresholds!r}")
        sweep = tuple(self.sweep_thresholds)
        if not sweep:
            fail("sweep_thresholds must not be empty")
        for t in sweep:
            _check_threshold(t, "sweep_thresholds entry")
        object.__setattr__(self, "sweep_thresholds", tuple(sorted({float(t) for t in sweep})))
        if isinstance(self.exits, (str, bytes)) or not hasattr(self.exits, "__iter__"):
            fail(f"exits must be a list of layers, got {self.exits!r}")
        if self.exits:
            from ease.exits import check_exits  # the one rule for exit layers (imports torch: only when asked)
            try:
                object.__setattr__(self, "exits", check_exits(self.exits, self.n_layers))
            except ValueError as exc:
                fail(str(exc))
        else:
            object.__setattr__(self, "exits", ())
        # ints and floats of equal value must hash to the same run_id (threshold=1 is threshold=1.0)
        for name in ("threshold", "lr", "grad_clip", "calibration_epsilon", "calibration_delta", "layer_dropout",
                     "distill"):
            object.__setattr__(self, name, float(getattr(self, name)))

        if self.setting == "custom":
            if self.weights is None:
                fail('setting "custom" needs an explicit weights map, e.g. {1: 0.5, 3: 0.5}')
            weights = validate_weights(self.weights, self.n_layers)
        elif self.setting in SETTINGS:
            if self.weights is not None:
                fail(f'setting {self.setting!r} derives its weights from alpha; pass setting="custom" '
                     "to give weights yourself")
            weights = setting_weights(self.setting, self.alpha, self.n_layers)
        else:
            fail(f"unknown setting {self.setting!r}: use one of {sorted(SETTINGS)} or 'custom'")
        object.__setattr__(self, "weights", weights)
        if self.alpha is not None:  # with "custom" weights alpha is only a label, but still a number in [0, 1]
            if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) \
                    or not math.isfinite(self.alpha) or not 0 <= self.alpha <= 1:
                fail(f"alpha must be a number in [0, 1] (or None with custom weights), got {self.alpha!r}")
            object.__setattr__(self, "alpha", float(self.alpha))

    # --- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (weight keys become strings, tuples become lists)."""
        d = dataclasses.asdict(self)
        d["weights"] = {str(k): v for k, v in self.weights.items()}
        d["sweep_thresholds"] = list(self.sweep_thresholds)
        d["exits"] = list(self.exits)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        """A config from field values (a record's config, a grid entry, notebook parameters).

        Unknown fields are an error. Weights stored with setting A or B (records keep them for
        readers) are accepted when they are the derived ones; other weights need setting "custom".
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"RunConfig: unknown field(s) {unknown}; known fields are {sorted(known)}")
        d = dict(d)
        for name in ("sweep_thresholds", "exits"):
            if isinstance(d.get(name), list):
                d[name] = tuple(d[name])
        if d.get("setting", "A") != "custom" and d.get("weights") is not None:
            derived = cls(**{**d, "weights": None})
            if _same_weights(d["weights"], derived.weights):
                return derived
        try:
            return cls(**d)
        except TypeError as exc:  # a value of the wrong kind, e.g. sweep_thresholds that is not a list
            raise ValueError(f"RunConfig: {exc}") from None

    def replace(self, **changes: Any) -> "RunConfig":
        if "setting" in changes or "alpha" in changes:
            changes.setdefault("weights", None if changes.get("setting", self.setting) != "custom" else self.weights)
        elif self.setting != "custom":
            changes.setdefault("weights", None)
        return dataclasses.replace(self, **changes)

    @property
    def run_id(self) -> str:
        """Readable prefix plus a hash of the whole config."""
        hashed = {k: v for k, v in self.to_dict().items() if LATER_FIELDS.get(k, object()) != v}
        digest = hashlib.sha1(json.dumps(hashed, sort_keys=True).encode()).hexdigest()[:10]
        alpha = "" if self.alpha is None else f"-a{self.alpha:g}"
        return f"{self.setting}{alpha}-L{self.n_layers}-s{self.seed}-{digest}"


def _check_threshold(value: Any, what: str) -> None:
    # Thresholds above 1 are allowed: they mean "never exit early" (max probability is at most 1).
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"RunConfig: {what} must be a finite number >= 0 (above 1 means no early exit), "
                         f"got {value!r}")


def _same_weights(given: Any, derived: dict[int, float]) -> bool:
    try:
        return {int(k): float(v) for k, v in given.items()} == derived
    except (AttributeError, TypeError, ValueError):
        return False
