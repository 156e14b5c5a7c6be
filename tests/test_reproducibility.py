"""Re-run the committed reference record from its stored config and compare the numbers.

A change to data loading, the model, training or evaluation that silently alters results makes
this fail. The reference is small (seconds to train). Only when a change of numbers is
intended, regenerate it with `python tests/test_reproducibility.py` and say why in the commit.
"""
import math
import os
from pathlib import Path

import pytest

from ease import RunConfig, run
from ease.results import load_records

REFERENCE = Path(__file__).resolve().parent.parent / "results" / "reference"
# Setting B at the document's alpha, small enough to train in seconds.
REFERENCE_CONFIG = RunConfig(setting="B", alpha=0.7, train_chars=30_000, val_chars=6_000, max_epochs=3)


@pytest.mark.ci_required  # in CI a skip fails the run
@pytest.mark.skipif(not os.environ.get("EASE_DATA_DIR"), reason="needs WikiText-2 via EASE_DATA_DIR")
def test_reference_record_reproduces(tmp_path):
    records = load_records(REFERENCE)
    assert records, f"no reference record under {REFERENCE}"
    for stored in records:
        config = RunConfig.from_dict(stored["config"])
        assert config.run_id == stored["run_id"], "run_id derivation changed"
        fresh = run(config, tmp_path, progress=False)
        for key in ("ppl", "shallow_frac", "compute_frac", "ppl_shallow", "ppl_deep"):
            assert math.isclose(fresh["metrics"][key], stored["metrics"][key], rel_tol=1e-6), key
        assert fresh["metrics"]["best_epoch"] == stored["metrics"]["best_epoch"]
        assert [h["epoch"] for h in fresh["history"]] == [h["epoch"] for h in stored["history"]]
        for new, old in zip(fresh["history"], stored["history"]):
            assert math.isclose(new["train_loss"], old["train_loss"], rel_tol=1e-6)
        for new, old in zip(fresh["sweep"], stored["sweep"]):
            assert new["threshold"] == old["threshold"]
            assert math.isclose(new["ppl"], old["ppl"], rel_tol=1e-6)
            assert new["shallow_frac"] == pytest.approx(old["shallow_frac"], abs=1e-12)


if __name__ == "__main__":
    import shutil

    shutil.rmtree(REFERENCE, ignore_errors=True)
    record = run(REFERENCE_CONFIG, REFERENCE)
    (REFERENCE / "runs" / f"{record['run_id']}.pt").unlink()  # the record is the reference; weights stay out of git
    print("wrote", REFERENCE / "runs" / f"{record['run_id']}.json")
