"""RunConfig validation, serialisation and run ids; loss weights and the weighted loss."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from ease.config import DOC_THRESHOLDS, FINE_THRESHOLDS, RunConfig
from ease.losses import setting_weights, trained_layers, validate_weights, weighted_loss
from ease.model import EarlyExitLM, ModelConfig
from ease.results import record_files


# --- setting weights ----------------------------------------------------------------------

def test_setting_a_three_layers():
    w = RunConfig(setting="A", alpha=0.7).weights
    assert list(w) == [1, 2, 3]
    assert w[1] == pytest.approx(0.7) and w[2] == 0.0 and w[3] == pytest.approx(0.3)


def test_setting_b_three_layers():
    w = RunConfig(setting="B", alpha=0.7).weights
    assert list(w) == [1, 2, 3]
    assert w[1] == pytest.approx(0.7) and w[2] == 1.0 and w[3] == pytest.approx(0.3)


def test_setting_a_and_b_five_layers():
    a = RunConfig(setting="A", alpha=0.3, n_layers=5).weights
    b = RunConfig(setting="B", alpha=0.3, n_layers=5).weights
    assert a == pytest.approx({1: 0.3, 2: 0.0, 3: 0.0, 4: 0.0, 5: 0.7})
    assert b == pytest.approx({1: 0.3, 2: 1.0, 3: 1.0, 4: 1.0, 5: 0.7})


def test_one_minus_alpha_is_stored_rounded():
    # 1 - 0.7 is 0.30000000000000004 in floating point; the config keeps the readable 0.3
    assert RunConfig(alpha=0.7).weights[3] == 0.3


@pytest.mark.parametrize("alpha, first, last", [(0.0, 0.0, 1.0), (1.0, 1.0, 0.0), (0.5, 0.5, 0.5)])
def test_alpha_edges_are_valid(alpha, first, last):
    w = RunConfig(setting="A", alpha=alpha).weights
    assert (w[1], w[3]) == (first, last)


def test_setting_weights_directly_matches_config():
    assert setting_weights("B", 0.5, 4) == pytest.approx({1: 0.5, 2: 1.0, 3: 1.0, 4: 0.5})
    assert RunConfig(setting="B", alpha=0.5, n_layers=4).weights == setting_weights("B", 0.5, 4)


def test_custom_weights_are_cleaned_and_sorted():
    cfg = RunConfig(setting="custom", weights={"3": 2, 1: 1})
    assert cfg.weights == {1: 1.0, 3: 2.0}
    assert list(cfg.weights) == [1, 3]
    assert all(isinstance(k, int) and isinstance(v, float) for k, v in cfg.weights.items())


def test_custom_weights_allow_zero_layers_and_any_scale():
    cfg = RunConfig(setting="custom", weights={1: 0.0, 2: 3.5, 3: 0.0})
    assert cfg.weights == {1: 0.0, 2: 3.5, 3: 0.0}
    assert trained_layers(cfg.weights) == [2]


def test_trained_layers_of_the_named_settings():
    assert trained_layers(RunConfig(setting="A").weights) == [1, 3]
    assert trained_layers(RunConfig(setting="B").weights) == [1, 2, 3]
    assert trained_layers(RunConfig(setting="A", alpha=1.0).weights) == [1]


# --- bad input: every case names what is wrong -------------------------------------------

@pytest.mark.parametrize("setting", ["A", "B"])
@pytest.mark.parametrize("alpha", [-0.1, 1.1, float("nan"), float("inf"), None, "0.5", True])
def test_bad_alpha(setting, alpha):
    with pytest.raises(ValueError, match="alpha must be a number in \\[0, 1\\]"):
        RunConfig(setting=setting, alpha=alpha)


@pytest.mark.parametrize("weights, message", [
    ({1: -0.5, 3: 1.0}, "weight of layer 1 is negative"),
    ({1: float("nan"), 3: 1.0}, "weight of layer 1 must be a finite number"),
    ({1: float("inf")}, "weight of layer 1 must be a finite number"),
    ({1: "0.5"}, "weight of layer 1 must be a finite number"),
    ({0: 1.0}, "layer 0 is out of range: layers are numbered 1..3"),
    ({4: 1.0}, "layer 4 is out of range: layers are numbered 1..3"),
    ({1: 0.0, 2: 0.0, 3: 0.0}, "all loss weights are zero"),
    ({}, "weights must be a non-empty map"),
    ({"x": 1.0}, "'x' is not a layer number"),
    ({1.5: 1.0}, "1.5 is not a whole layer number"),
    ({1: 0.5, "1": 0.5}, "layer 1 appears twice"),
])
def test_bad_custom_weights(weights, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(setting="custom", weights=weights)


def test_bad_weight_map_type():
    with pytest.raises(ValueError, match="non-empty map"):
        validate_weights([0.5, 0.5], 3)


def test_unknown_setting():
    with pytest.raises(ValueError, match="unknown setting 'C'"):
        RunConfig(setting="C")


@pytest.mark.parametrize("setting", ["A", "B"])
def test_weights_with_named_setting_are_refused(setting):
    with pytest.raises(ValueError, match='pass setting="custom"'):
        RunConfig(setting=setting, weights={1: 0.5, 3: 0.5})


def test_custom_without_weights():
    with pytest.raises(ValueError, match='setting "custom" needs an explicit weights map'):
        RunConfig(setting="custom")


def test_named_setting_needs_two_layers():
    with pytest.raises(ValueError, match="at least 2 layers"):
        RunConfig(n_layers=1)


@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf"), "0.9", None, True])
def test_bad_threshold(value):
    with pytest.raises(ValueError, match="threshold must be a finite number >= 0"):
        RunConfig(threshold=value)


@pytest.mark.parametrize("value", [(0.5, -0.1), (float("nan"),), (0.5, float("inf"))])
def test_bad_sweep_thresholds(value):
    with pytest.raises(ValueError, match="sweep_thresholds entry must be a finite number >= 0"):
        RunConfig(sweep_thresholds=value)


@pytest.mark.parametrize("value", [None, "0.5", ("0.5",), (True, 0.5)])
def test_bad_sweep_threshold_types(value):
    # the same rule as for `threshold`: strings and booleans are not thresholds
    with pytest.raises(ValueError, match="sweep_thresholds"):
        RunConfig(sweep_thresholds=value)


@pytest.mark.parametrize("alpha", ["abc", float("nan")])
def test_bad_alpha_with_custom_weights(alpha):
    # alpha is not used by "custom", but it is stored in the record and hashed into the run id
    with pytest.raises(ValueError, match="alpha"):
        RunConfig(setting="custom", weights={1: 1.0}, alpha=alpha)


def test_corpus_must_be_a_string():
    with pytest.raises(ValueError, match="corpus"):
        RunConfig(corpus=None)


def test_empty_sweep_thresholds():
    with pytest.raises(ValueError, match="sweep_thresholds must not be empty"):
        RunConfig(sweep_thresholds=())


def test_thresholds_above_one_and_zero_are_allowed():
    cfg = RunConfig(threshold=1.5, sweep_thresholds=(0, 1.2))
    assert cfg.threshold == 1.5 and cfg.sweep_thresholds == (0.0, 1.2)


def test_sweep_thresholds_are_sorted_and_deduplicated():
    assert RunConfig(sweep_thresholds=[0.9, 0.5, 0.9, 0.7]).sweep_thresholds == (0.5, 0.7, 0.9)


@pytest.mark.parametrize("exit_layer", [0, 4, -1])
def test_exit_layer_out_of_range(exit_layer):
    with pytest.raises(ValueError, match=f"exit_layer must be between 1 and n_layers=3, got {exit_layer}"):
        RunConfig(exit_layer=exit_layer)


def test_exit_layer_may_be_any_layer_of_a_deeper_model():
    assert RunConfig(n_layers=4, exit_layer=2).exit_layer == 2


@pytest.mark.parametrize("dim, heads", [(16, 3), (64, 5), (12, 4)])  # (12, 4): head size 3 is odd
def test_dim_must_split_into_even_heads(dim, heads):
    with pytest.raises(ValueError, match=f"dim \\({dim}\\) must split into n_heads \\({heads}\\)"):
        RunConfig(dim=dim, n_heads=heads)


@pytest.mark.parametrize("exits", [(3,), (0, 1), (2, 1), (1, 1), (1.0,), "12", 2])
def test_bad_exits(exits):
    with pytest.raises(ValueError, match="exits must be"):
        RunConfig(n_layers=3, exits=exits)


def test_exits_round_trip_and_keep_old_ids():
    config = RunConfig(setting="custom", alpha=None, weights={2: 0.5, 4: 0.5, 6: 1.0}, n_layers=6, exits=[2, 4])
    assert config.exits == (2, 4)
    assert RunConfig.from_dict(config.to_dict()) == config
    assert RunConfig().run_id == RunConfig(exits=()).run_id  # no exits: the id of every earlier record


def test_bad_norm():
    with pytest.raises(ValueError, match="norm must be one of \\('post', 'pre'\\), got 'mid'"):
        RunConfig(norm="mid")


def test_bad_vocab_source():
    with pytest.raises(ValueError, match="vocab_from must be one of"):
        RunConfig(vocab_from="valid")


@pytest.mark.parametrize("field_name, value, message", [
    ("seed", "1", "seed must be an integer, got '1'"),
    ("seed", 1.0, "seed must be an integer, got 1.0"),
    ("max_epochs", True, "max_epochs must be an integer, got True"),
    ("batch_size", 0, "batch_size must be at least 1, got 0"),
    ("seq_len", -4, "seq_len must be at least 1, got -4"),
    ("train_chars", 0, "train_chars must be at least 1"),
    ("seed", -1, "seed and patience must be non-negative"),
    ("patience", -1, "seed and patience must be non-negative"),
    ("lr", 0, "lr must be a positive number, got 0"),
    ("lr", float("nan"), "lr must be a positive number, got nan"),
    ("lr", "1e-3", "lr must be a positive number, got '1e-3'"),
    ("grad_clip", -1.0, "grad_clip must be a positive number"),
    ("shuffle", "yes", "shuffle must be true or false, got 'yes'"),
    ("compile", 1, "compile must be true or false, got 1"),
    ("test_chars", -2, "test_chars must be a number of characters, 0 \\(no test text\\) or -1"),
    ("test_chars", 1.5, "test_chars must be an integer"),
    ("select_on", "loss", "select_on must be one of \\('deep', 'objective'\\), got 'loss'"),
    ("calibration_risk", "loss", "calibration_risk must be one of"),
    ("calibration_epsilon", 0, "calibration_epsilon must be a number between 0 and 1"),
    ("calibration_delta", 1.5, "calibration_delta must be a number between 0 and 1"),
    ("calibration_chars", 0, "calibration_chars must be at least 1"),
])
def test_bad_types_and_ranges(field_name, value, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**{field_name: value})


def test_errors_say_they_come_from_the_config():
    with pytest.raises(ValueError, match="^RunConfig: "):
        RunConfig(batch_size=0)


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        RunConfig().seed = 3


# --- serialisation and run ids -----------------------------------------------------------

ROUND_TRIP_CONFIGS = [
    RunConfig(),
    RunConfig(setting="B", alpha=0.3, seed=2, n_layers=5, exit_layer=2),
    RunConfig(setting="custom", alpha=None, weights={1: 0.25, 2: 0.0, 3: 1.0}, norm="pre"),
    RunConfig(corpus="/some/folder", vocab_from="train", shuffle=True, patience=3,
              threshold=0.8, sweep_thresholds=DOC_THRESHOLDS),
]


@pytest.mark.parametrize("cfg", ROUND_TRIP_CONFIGS, ids=["A", "B-5layers", "custom-pre", "folder"])
def test_round_trip_through_dict_and_json(cfg):
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    back = RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    assert back.run_id == cfg.run_id


def test_to_dict_is_json_ready():
    d = RunConfig().to_dict()
    assert d["weights"] == {"1": 0.7, "2": 0.0, "3": 0.3}
    assert isinstance(d["sweep_thresholds"], list)
    assert json.loads(json.dumps(d)) == d


def test_from_dict_rejects_unknown_keys():
    d = RunConfig().to_dict()
    d["learning_rate"] = 0.1
    with pytest.raises(ValueError, match="unknown field\\(s\\) \\['learning_rate'\\]"):
        RunConfig.from_dict(d)


def test_from_dict_fills_defaults():
    assert RunConfig.from_dict({"setting": "B", "alpha": 0.5}) == RunConfig(setting="B", alpha=0.5)


def test_run_id_is_stable_and_readable():
    a, b = RunConfig(alpha=0.7, seed=3), RunConfig(alpha=0.7, seed=3)
    assert a.run_id == b.run_id
    assert a.run_id.startswith("A-a0.7-L3-s3-")
    assert len(a.run_id.rsplit("-", 1)[1]) == 10


def test_run_id_ignores_order_of_custom_weights_and_sweep():
    a = RunConfig(setting="custom", weights={3: 0.5, 1: 0.5}, sweep_thresholds=(0.9, 0.5))
    b = RunConfig(setting="custom", weights={1: 0.5, 3: 0.5}, sweep_thresholds=(0.5, 0.9))
    assert a == b and a.run_id == b.run_id


@pytest.mark.parametrize("field_name, int_value", [("threshold", 1), ("lr", 1), ("grad_clip", 2)])
def test_equal_configs_have_equal_run_ids_when_a_float_is_written_as_int(field_name, int_value):
    as_int = RunConfig(**{field_name: int_value})
    as_float = RunConfig(**{field_name: float(int_value)})
    assert as_int == as_float
    assert as_int.run_id == as_float.run_id


# one changed value per field; the test below checks that every field is covered
FIELD_CHANGES = {
    "setting": "B", "alpha": 0.5, "seed": 1, "n_layers": 4, "dim": 32, "n_heads": 2, "norm": "pre",
    "corpus": "/tmp/other-corpus", "train_chars": 1000, "val_chars": 500, "vocab_from": "train",
    "seq_len": 32, "batch_size": 8, "shuffle": True, "lr": 2e-3, "grad_clip": 0.5, "max_epochs": 5,
    "patience": 2, "exit_layer": 2, "threshold": 0.9, "sweep_thresholds": (0.5, 0.9),
    "lr_schedule": "cosine", "sweep_weights": "last", "compile": True, "test_chars": 1000, "select_on": "objective",
    "calibrate": True, "calibration_risk": "ppl_increase", "calibration_epsilon": 0.1, "calibration_delta": 0.2,
    "calibration_chars": 1000, "layer_dropout": 0.2, "distill": 0.5, "exit_warmup": 3, "train_propagation": True,
    "exits": (1, 2),
}


def test_run_id_differs_when_any_field_differs():
    base = RunConfig()
    ids = {"base": base.run_id}
    for name, value in FIELD_CHANGES.items():
        ids[name] = dataclasses.replace(base, weights=None, **{name: value}).run_id
    # weights only vary freely in the custom setting
    custom = RunConfig(setting="custom", weights={1: 0.7, 3: 0.3})
    ids["custom"] = custom.run_id
    ids["weights"] = RunConfig(setting="custom", weights={1: 0.7, 2: 0.1, 3: 0.3}).run_id
    assert len(set(ids.values())) == len(ids), ids
    covered = set(FIELD_CHANGES) | {"weights"}
    assert covered == {f.name for f in dataclasses.fields(RunConfig)}


def test_replace_rederives_weights():
    cfg = RunConfig(setting="A", alpha=0.7)
    assert cfg.replace(alpha=0.3).weights == pytest.approx({1: 0.3, 2: 0.0, 3: 0.7})
    assert cfg.replace(setting="B").weights == pytest.approx({1: 0.7, 2: 1.0, 3: 0.3})
    assert cfg.replace(seed=5).weights == cfg.weights
    custom = RunConfig(setting="custom", weights={2: 1.0})
    assert custom.replace(seed=5).weights == {2: 1.0}


def test_doc_thresholds_are_in_the_default_sweep():
    assert RunConfig().sweep_thresholds == FINE_THRESHOLDS
    assert len(FINE_THRESHOLDS) == 41 and FINE_THRESHOLDS[0] == 0.0 and FINE_THRESHOLDS[-1] == 1.0
    assert all(t in FINE_THRESHOLDS for t in DOC_THRESHOLDS)


# --- the weighted loss -------------------------------------------------------------------

def _target_logit_batch(vocab: int, target_logit: float, targets: torch.Tensor) -> torch.Tensor:
    """Logits [1, T, vocab]: `target_logit` at each target, 0 elsewhere."""
    logits = torch.zeros(1, targets.numel(), vocab)
    logits[0, torch.arange(targets.numel()), targets.reshape(-1)] = target_logit
    return logits


def test_weighted_loss_matches_hand_computation():
    vocab = 4
    targets = torch.tensor([[0, 3, 1, 2]])
    # layer 1: uniform over 4 classes -> CE = ln 4 at every token
    uniform = torch.zeros(1, 4, vocab)
    # layer 3: target logit ln 5, others 0 -> p(target) = 5 / (5 + 3) -> CE = ln(8/5)
    peaked = _target_logit_batch(vocab, math.log(5.0), targets)
    # layer 2 has weight 0: its logits (even NaN) must not enter the loss
    garbage = torch.full((1, 4, vocab), float("nan"))
    logits = {1: uniform, 2: garbage, 3: peaked}
    loss = weighted_loss(logits, targets, {1: 0.7, 2: 0.0, 3: 0.3})
    assert loss.item() == pytest.approx(0.7 * math.log(4) + 0.3 * math.log(8 / 5), rel=1e-6)


def test_weighted_loss_missing_zero_weight_layer_is_fine():
    targets = torch.tensor([[1, 0]])
    loss = weighted_loss({3: torch.zeros(1, 2, 2)}, targets, {1: 0.0, 3: 2.0})
    assert loss.item() == pytest.approx(2 * math.log(2), rel=1e-6)


def test_weighted_loss_is_the_weighted_mean_token_ce():
    gen = torch.Generator().manual_seed(0)
    vocab, T = 5, 6
    logits = {layer: torch.randn(2, T, vocab, generator=gen) for layer in (1, 2, 3)}
    targets = torch.randint(vocab, (2, T), generator=gen)
    weights = {1: 0.2, 2: 1.0, 3: 0.8}

    def mean_ce(out):  # plain python log-sum-exp per token
        total = 0.0
        for b in range(2):
            for t in range(T):
                row = out[b, t].tolist()
                total += math.log(sum(math.exp(v) for v in row)) - row[targets[b, t].item()]
        return total / (2 * T)

    expected = sum(w * mean_ce(logits[layer]) for layer, w in weights.items())
    assert weighted_loss(logits, targets, weights).item() == pytest.approx(expected, rel=1e-5)


def _tiny_model(n_layers=3, norm="post"):
    torch.manual_seed(0)
    return EarlyExitLM(ModelConfig(vocab_size=11, n_layers=n_layers, dim=16, n_heads=2, max_seq_len=16, norm=norm))


def test_zero_weight_layers_above_get_no_gradient_and_are_not_run():
    model = _tiny_model()
    weights = RunConfig(setting="custom", weights={1: 1.0, 3: 0.0}).weights
    calls = {i: 0 for i in range(3)}
    for i, block in enumerate(model.blocks):
        block.register_forward_hook(lambda mod, inp, out, i=i: calls.__setitem__(i, calls[i] + 1))
    x = torch.randint(11, (4, 16), generator=torch.Generator().manual_seed(1))
    y = torch.randint(11, (4, 16), generator=torch.Generator().manual_seed(2))
    loss = weighted_loss(model(x, layers=trained_layers(weights)), y, weights)
    loss.backward()
    assert calls == {0: 1, 1: 0, 2: 0}
    for block in model.blocks[1:]:
        for p in block.parameters():
            assert p.grad is None or torch.all(p.grad == 0)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.blocks[0].parameters())


@pytest.mark.parametrize("setting, head_calls", [("A", 2), ("B", 3)])
def test_head_only_applied_to_weighted_layers(setting, head_calls):
    model = _tiny_model()
    weights = RunConfig(setting=setting).weights
    calls = []
    model.head.register_forward_hook(lambda mod, inp, out: calls.append(out.shape))
    x = torch.randint(11, (4, 16), generator=torch.Generator().manual_seed(1))
    logits = model(x, layers=trained_layers(weights))
    assert len(calls) == head_calls
    assert sorted(logits) == trained_layers(weights)
    weighted_loss(logits, x, weights).backward()  # all needed logits are there


# --- fields added after the first records: they must not change existing run ids ------------------
def test_fields_added_later_keep_old_run_ids():
    # The reference record (results/reference) was made before lr_schedule and sweep_weights
    # existed; its config, as written then, must still give the id it was filed under.
    path, = record_files(Path(__file__).resolve().parents[1] / "results" / "reference")
    old = json.loads(path.read_text())["config"]
    assert "lr_schedule" not in old and "sweep_weights" not in old
    config = RunConfig.from_dict(old)
    assert config.run_id == path.stem
    assert (config.lr_schedule, config.sweep_weights) == ("constant", "best")
    # and a config written today, with the new fields at their defaults, has that same id
    assert RunConfig.from_dict({**old, "lr_schedule": "constant", "sweep_weights": "best"}).run_id == path.stem
    assert config.replace(lr_schedule="cosine").run_id != path.stem


@pytest.mark.parametrize("field_name, bad", [("lr_schedule", "linear"), ("sweep_weights", "first"),
                                             ("lr_schedule", None)])
def test_new_fields_are_validated(field_name, bad):
    with pytest.raises(ValueError, match=field_name):
        RunConfig(**{field_name: bad})
