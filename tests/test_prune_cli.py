"""`prunetune prune`: one model pruned to a direct or effective target, report printed, bad input refused."""

import re

import pytest
import torch

from pruning import masks, models
from pruning.sparsity import sparsity_report
from sweeps.cli import main


def _value(text: str, name: str) -> float:
    return float(re.search(rf"{name}\s+sparsity ([0-9.]+)", text).group(1))


def test_effective_target_is_met_and_saved_masks_reproduce_it(tmp_path, capsys):
    out = tmp_path / "pruned.pt"
    code = main(["prune", "--pruner", "random/uniform", "--sparsity", "0.9", "--target", "effective",
                 "--save", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    direct, effective = _value(text, "direct"), _value(text, "effective")
    assert effective <= 0.9 and direct < effective  # random pruning disconnects extra weights
    model = models.build("lenet300100", input_shape=(1, 8, 8), num_classes=10)
    masks.load_state_dict(model, torch.load(out, weights_only=True))
    report = sparsity_report(model)
    assert report.effective_sparsity == pytest.approx(effective, abs=1e-6)
    assert report.direct_sparsity == pytest.approx(direct, abs=1e-6)


def test_direct_target_after_training(capsys):
    assert main(["prune", "--pruner", "magnitude/global", "--sparsity", "0.5", "--epochs", "1"]) == 0
    assert _value(capsys.readouterr().out, "direct") == pytest.approx(0.5, abs=1e-4)


@pytest.mark.parametrize("argv,message", [
    (["--pruner", "nope", "--sparsity", "0.5"], "error: pruner: unknown 'nope'; choose from dense"),
    (["--pruner", "snip", "--sparsity", "1.0"], "error: sparsity: 1.0 outside [0, 1)"),
    (["--pruner", "snip", "--sparsity", "0.5", "--model", "vgg16"], "needs inputs of at least 32×32"),
    (["--pruner", "snip", "--sparsity", "0.5", "--dataset", "imagenet"],
     "error: dataset: unknown 'imagenet'; choose from"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(["prune", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
