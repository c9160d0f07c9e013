"""The rules a spec's values must obey together, one function each: `rule(spec) -> [problem lines]`.

Why one function per rule and one list of them: `validate` and `run` ask the same list (through
`sweeps.spec.build_spec`), a new rule is one function appended to `RULES`, and each can be tested
alone. A section's own fields are already checked by the section (`sweeps.sections`); what is left
here is what needs the registries, several fields, or the filesystem. Rules run on a spec whose
unreadable fields kept their defaults, so each skips names another rule already refused.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch

from pruning import data as data_lib
from pruning import models as models_lib
from pruning import quotas as quotas_lib
from pruning.lomp import default_l1
from pruning.options import parse as parse_options
from pruning.pruners import PRUNERS, TARGETS
from pruning.pruners.imp import rewind_iteration_for
from sweeps.paths import credentials_problem, is_uri, local_path
from sweeps.sections import Spec

Rule = Callable[[Spec], list[str]]


def _models(spec: Spec) -> list[str]:
    return sorted({m for m, _ in spec.pairs if m in models_lib.MODELS})


def _datasets(spec: Spec) -> list[str]:
    return sorted({d for _, d in spec.pairs if d in data_lib.DATASETS})


def _pruners(spec: Spec) -> list[str]:
    return [p for p in spec.pruner if p in PRUNERS]


# ----------------------------------------------------------------------------- storage


def storage_problem(storage: str) -> str | None:
    """Why results cannot be written under `storage` (one line), or None."""
    if (why := credentials_problem(storage)) is not None:
        return why
    if is_uri(storage):
        try:
            pafs.FileSystem.from_uri(storage)
        except Exception as e:  # pyarrow raises several types for bad URIs
            return f"storage: {storage!r} is not a usable pyarrow.fs URI: {str(e).splitlines()[0]}"
        return None
    path = Path(local_path(storage))
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        return f"storage: {str(probe)!r} is a file, not a directory; give a writable directory"
    try:  # a real write: permission bits lie for root and for read-only mounts
        fd, name = tempfile.mkstemp(prefix=".prunetune-probe-", dir=probe)
        os.close(fd)
        os.unlink(name)
        if path.exists():
            os.listdir(path)
    except OSError as e:
        return (f"storage: {str(path)!r} is not readable/writable ({e.strerror}); "
                "give a writable directory or a pyarrow.fs URI")
    return None


def storage_writable(spec: Spec) -> list[str]:
    """Results can be written under the storage root (a writable directory or a usable URI)."""
    return [why] if (why := storage_problem(spec.storage)) is not None else []


# ----------------------------------------------------------------------------- registries


def known_names(spec: Spec) -> list[str]:
    """Every model, data set, pruner, target and model variant is a registry name."""
    out = []
    for what, given, known in (("model", [m for m, _ in spec.pairs], models_lib.MODELS),
                               ("dataset", [d for _, d in spec.pairs], data_lib.DATASETS),
                               ("pruner", spec.pruner, PRUNERS)):
        for name in dict.fromkeys(given):
            if name not in known:
                out.append(f"{what}: unknown {name!r}; choose from {', '.join(sorted(known))}")
    out += [f"target: {t!r}; choose from {', '.join(TARGETS)}" for t in spec.target if t not in TARGETS]
    if spec.model_variant not in models_lib.VARIANTS:
        out.append(f"model_variant: {spec.model_variant!r}; choose from {', '.join(models_lib.VARIANTS)}")
    return out


def seeds_non_negative(spec: Spec) -> list[str]:
    return [f"seed: {s} is negative; seeds are integers ≥ 0" for s in spec.seed if s < 0]


def check_pair(model: str, dataset: str, options: Mapping[str, Any], variant: str = "default") -> str | None:
    """Why `model` (in `variant`) cannot run on `dataset` (one line), or None when it can."""
    try:
        shape, _ = data_lib.info(dataset, **options)
        models_lib.check(model, shape, variant)
    except (ValueError, TypeError) as e:
        return f"model/dataset: {model!r} on {dataset!r}: {e}"
    return None


def pairs_fit(spec: Spec) -> list[str]:
    """Each model can take its data set's inputs (downsampling, channels)."""
    if spec.model_variant not in models_lib.VARIANTS or data_options(spec):
        return []
    return [why for m, d in spec.pairs if m in models_lib.MODELS and d in data_lib.DATASETS
            and (why := check_pair(m, d, spec.data.options, spec.model_variant)) is not None]


def data_options(spec: Spec) -> list[str]:
    """`data.options` are options of every data set of the sweep, each of its declared type and range."""
    out: list[str] = []
    for d in _datasets(spec):
        _, problems = parse_options(data_lib.DATASETS[d].options, spec.data.options, "data.options")
        out += [f"{p} (dataset {d!r})" for p in problems]
    return out


# ----------------------------------------------------------------------------- pruners


def pruner_options(spec: Spec) -> list[str]:
    """Every option reaches a pruner of the sweep that takes it, with a value of its declared type
    and range (`PrunerInfo.options`); each problem names the option, the value, the pruner(s) and
    what is allowed. The same value refused by several pruners for the same reason is one line."""
    pruners = _pruners(spec)
    prune = spec.prune
    out: list[str] = []
    wanted = [k for k in prune.options if k not in PRUNERS] + (["rounds"] if prune.rounds is not None else [])
    for option in wanted:
        if pruners and not any(PRUNERS[p].accepts(option) for p in pruners):
            takers = sorted({o for info in PRUNERS.values() for o in info.option_defaults})
            where = "prune.rounds" if option == "rounds" and option not in prune.options else f"prune.options.{option}"
            out.append(f"{where}: taken by none of the pruners {pruners}; options of the registered pruners: "
                       f"{', '.join(takers)}")
    for name in (k for k in prune.options if k in PRUNERS):
        scoped = prune.options[name]
        if not isinstance(scoped, Mapping):
            out.append(f"prune.options.{name}: expected a mapping of {name}'s options, got {scoped!r}")
            continue
        allowed = ", ".join(PRUNERS[name].option_defaults) or "none"
        out += [f"prune.options.{name}: unknown option {o!r}; allowed: {allowed}"
                for o in scoped if not PRUNERS[name].accepts(o)]
    if out:
        return out
    refused: dict[str, list[str]] = {}  # problem line → pruners refusing it
    for p in pruners:
        given = prune.given_options(p)
        _, problems = parse_options(PRUNERS[p].options, {k: v for k, (v, _) in given.items()})
        for line in problems:
            option, _, text = line.partition(": ")
            where = given[option][1] if option in given else f"prune.options.{p}.{option}"
            refused.setdefault(f"{where}: {text}", []).append(p)
    for line, who in refused.items():
        where, _, text = line.partition(": ")
        names = ", ".join(repr(p) for p in who)
        out.append(f"{where}: {text} (pruner{'s' if len(who) > 1 else ''} {names})")
    return out


def balanced_batches_fit(spec: Spec) -> list[str]:
    """Class-balanced GraSP draws batches × samples_per_class distinct training samples of every
    class: the rarest class of each data set must hold that many."""
    if "grasp" not in spec.pruner or data_options(spec) or pruner_options(spec):
        return []
    typed = PRUNERS["grasp"].make_options({k: v for k, (v, _) in spec.prune.given_options("grasp").items()})
    if not typed.balanced:
        return []
    need = typed.batches * typed.samples_per_class
    out = []
    for d in _datasets(spec):
        have = data_lib.smallest_class(d, **spec.data.options)
        if have < need:
            out.append(f"prune.options: grasp's balanced batches need batches × samples_per_class = "
                       f"{typed.batches} × {typed.samples_per_class} = {need} training samples of every class, "
                       f"and dataset {d!r} has {have} of its rarest; lower batches or samples_per_class, or set "
                       "balanced: false")
    return out


def layer_shapes(model: str, pairs: Sequence[tuple[str, str]], options: Mapping[str, Any]) -> list[tuple[int, ...]]:
    """The prunable weights' shapes of `model` on its first data set in `pairs`, built on the meta
    device: shapes only, nothing is allocated, even for VGG."""
    dataset = next(d for m, d in pairs if m == model)
    shape, classes = data_lib.info(dataset, **options)
    with torch.device("meta"):
        return quotas_lib.layer_shapes(models_lib.build(model, input_shape=shape, num_classes=classes))


def quotas_applicable(spec: Spec) -> list[str]:
    """A quota pruner is defined on each model (uniform_plus needs a conv layer)."""
    checked = [p for p in _pruners(spec) if p.endswith("/uniform_plus")]
    if not checked or pairs_fit(spec) or known_names(spec):
        return []
    out = []
    for m in _models(spec):
        shapes = layer_shapes(m, spec.pairs, spec.data.options)  # once per model, not per pruner
        for p in checked:
            try:
                quotas_lib.check_applicable(p.partition("/")[2], shapes)
            except ValueError as e:
                out.append(f"pruner: {p!r} on model {m!r}: {e}")
    return out


def imp_rewind(spec: Spec) -> list[str]:
    """IMP rewinds to the dense run's step k: k lies within that run (known when its length is);
    `prune.rewind_iteration` is IMP's alone."""
    prune, train = spec.prune, spec.train
    if "imp" not in spec.pruner:
        if prune.rewind_iteration is not None:
            return [f"prune.rewind_iteration: {prune.rewind_iteration} is used by imp only, and the sweep's "
                    f"pruners are {list(spec.pruner)}"]
        return []
    if data_options(spec):
        return []
    out = []
    for model, dataset in spec.pairs:
        if model not in models_lib.MODELS or dataset not in data_lib.DATASETS:
            continue
        k = prune.rewind_iteration if prune.rewind_iteration is not None else rewind_iteration_for(model)
        n = data_lib.train_size(dataset, **spec.data.options)
        if n is None:
            continue
        steps = train.iterations if train.iterations is not None else train.epochs * math.ceil(n / train.batch_size)
        if k > steps:
            what = "prune.rewind_iteration" if prune.rewind_iteration is not None else "the default rewind_iteration"
            out.append(f"prune.rewind_iteration: {what} {k} lies beyond the {steps} optimizer steps of the dense "
                       f"run of {model!r} on {dataset!r}; set prune.rewind_iteration ≤ {steps} "
                       "(0 rewinds to the initialization)")
    return out


def lomp_lambda_known(spec: Spec) -> list[str]:
    """An L1-trained model (limit cells, lomp) without `prune.lomp_l1` has the authors' λ."""
    l1_pruners = [p for p in _pruners(spec) if PRUNERS[p].needs_l1_training]
    if spec.prune.lomp_l1 is not None or not (spec.kind == "limit" or l1_pruners):
        return []
    out = []
    for m in _models(spec):
        try:
            default_l1(m)
        except ValueError as e:
            out.append(str(e))
    return out


# ----------------------------------------------------------------------------- kinds


def sparsity_given(spec: Spec) -> list[str]:
    """A point sweep that prunes has sparsities."""
    if spec.kind == "point" and any(p != "dense" for p in spec.pruner) and not spec.sparsity:
        return ["sparsity: required for pruners other than 'dense' (or give compression:)"]
    return []


def limit_kind(spec: Spec) -> list[str]:
    """A limit sweep: LOMP only, direct fractions of its own grid, a Hessian spectrum to predict from;
    `iterations: auto` (grown until the predicted limit is resolved) belongs to limit sweeps alone."""
    if spec.kind != "limit":
        if spec.hessian.iterations == "auto":
            return ["hessian.iterations: auto grows the Lanczos run until the predicted limit is resolved; "
                    "it needs kind 'limit' (give a number of iterations)"]
        return []
    out = []
    if spec.sparsity:
        out.append("sparsity: not used by kind 'limit' (its grid is prune.limit_grid); remove it")
    if not spec.hessian.enabled:
        out.append("hessian.enabled: kind 'limit' predicts from the Hessian spectrum; set it to true")
    if "effective" in spec.target:
        out.append("target: kind 'limit' prunes to direct (global magnitude) fractions; use target: direct")
    if tuple(spec.pruner) != ("lomp",):
        out.append(f"pruner: kind 'limit' runs 'lomp' only, got {list(spec.pruner)}")
    return out


RULES: tuple[Rule, ...] = (
    storage_writable, known_names, seeds_non_negative, data_options, pairs_fit, pruner_options,
    balanced_batches_fit, quotas_applicable, imp_rewind, lomp_lambda_known, sparsity_given, limit_kind,
)


def check(spec: Spec) -> list[str]:
    """Every problem every rule finds, in the order of `RULES`."""
    return [line for rule in RULES for line in rule(spec)]
