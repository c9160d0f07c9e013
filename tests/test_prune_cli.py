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
    (["--pruner", "nope", "--sparsity", "0.5"], "error: argument --pruner: invalid choice: 'nope' (choose from 'dense'"),
    (["--pruner", "snip", "--sparsity", "1.0"], "error: sparsity: 1.0 outside [0, 1)"),
    (["--pruner", "snip", "--sparsity", "0.5", "--model", "vgg16"], "needs inputs of at least 32×32"),
    (["--pruner", "snip", "--sparsity", "0.5", "--dataset", "imagenet"],
     "error: argument --dataset: invalid choice: 'imagenet' (choose from 'digits'"),
    (["--pruner", "snip", "--sparsity", "0.5", "--option", "batches=-3"],
     "error: prune.options.snip.batches: -3; expected an integer ≥ 1 (pruner 'snip')"),
    (["--pruner", "grasp", "--sparsity", "0.5", "--option", "balanced=maybe"],
     "error: prune.options.grasp.balanced: 'maybe'; expected true or false (pruner 'grasp')"),
    (["--pruner", "snip", "--sparsity", "0.5", "--option", "rounds=3"],
     "error: prune.options.snip: unknown option 'rounds'; allowed: batches, batch_size"),
    (["--pruner", "snip", "--sparsity", "0.5", "--option", "batches"], "error: --option 'batches': expected NAME=VALUE"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(["prune", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_lomp_lambda_is_one_fact_for_spec_cli_and_library(capsys):
    """λ of every model with a published value is the same from a spec, from `prunetune prune` and
    from `pruning.lomp`; a model without one gets the same one-line error everywhere."""
    from pruning.lomp import LOMP_L1, default_l1
    from sweeps.cells import expand
    from sweeps.spec import SpecError, build_spec

    for model in LOMP_L1:
        [cell] = expand(build_spec({"name": "l", "model": model, "dataset": "cifar10", "pruner": "lomp",
                                    "sparsity": 0.5, "storage": "/tmp"}))
        assert cell.prune.lomp_l1 == cell.train.l1 == default_l1(model), model
    assert main(["prune", "--model", "fc5", "--pruner", "lomp", "--sparsity", "0.5", "--epochs", "0"]) == 0
    assert "lomp_l1 = 5e-05 over all parameters" in capsys.readouterr().out

    with pytest.raises(ValueError) as library:
        default_l1("lenet300100")
    with pytest.raises(SpecError) as spec:
        build_spec({"name": "l", "model": "lenet300100", "pruner": "lomp", "sparsity": 0.5, "storage": "/tmp"})
    assert main(["prune", "--pruner", "lomp", "--sparsity", "0.5"]) == 2
    cli = capsys.readouterr().err.strip()
    assert spec.value.problems == [str(library.value)] and cli == f"error: {library.value}"
    assert str(library.value).startswith("lomp_l1: no published value for model 'lenet300100'")
