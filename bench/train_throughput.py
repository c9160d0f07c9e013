"""Training throughput of `pruning.train` against a bare minimal PyTorch loop, in the same run.

    python bench/train_throughput.py [--device cpu|cuda] [--repeats 5] [--threads N] [--case DATASET]

Both loops train the same model on the same tensors with the same batch size and optimizer; the
bare loop is the floor (indexing pre-shuffled tensors, forward, loss, backward, step). Rounds
alternate between the two so that machine noise hits both alike; the ratio of best-of-N times is printed
(≥ 0.95 is the goal). Evaluation is switched off in `pruning.train` (eval_every=0 still evaluates
once at the end, which is timed separately and excluded) so that the same work is compared.

The real case is LeNet-300-100 on `fashion_mnist` (60,000 images, batch 100, one epoch per round):
the data set is read from the data root or Debian's `dataset-fashion-mnist`, and the case is
skipped with a note when neither has it.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from pruning import data, models
from pruning import train as T

CASES = [  # (model, dataset, options, batch size, epochs)
    ("lenet300100", "digits", {}, 64, 3),
    ("resnet20", "synthetic", {"input_shape": (3, 32, 32), "n_train": 512, "n_test": 64}, 128, 1),
    ("lenet300100", "fashion_mnist", {}, 100, 1),
]


def bare_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int, epochs: int,
              device: torch.device) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    model.train()
    g = torch.Generator().manual_seed(0)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=g).to(device)
        for i in range(0, len(y), batch):
            idx = order[i:i + batch]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    sync(device)
    return time.perf_counter() - t0


def ours(model: nn.Module, tr: data.Split, batch: int, epochs: int, device: torch.device) -> float:
    cfg = T.TrainConfig(epochs=epochs, batch_size=batch, lr=0.01, schedule="constant", eval_every=0,
                        augment=False)
    sync(device)
    result = T.train(model, tr, None, cfg, device=device)
    sync(device)
    return result.seconds


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--case", default=None, help="run only the cases on this data set")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()}")
    print(f"{'model':<12} {'data':<10} {'bare samples/s':>15} {'ours samples/s':>15} {'ratio':>7}")
    for name, ds, opts, batch, epochs in CASES:
        if args.case and ds != args.case:
            continue
        try:
            tr, _ = data.load(ds, **opts)
        except data.DataNotFound as e:
            print(f"{name:<12} {ds:<10} skipped: {e}")
            continue
        x, y = tr.tensors(device)
        n = len(tr) * epochs
        bare_t, our_t = [], []
        for r in range(args.repeats + 1):  # round 0 warms up both
            torch.manual_seed(r)
            m1 = models.build(name, input_shape=tr.input_shape, num_classes=tr.num_classes).to(device)
            m2 = models.build(name, input_shape=tr.input_shape, num_classes=tr.num_classes).to(device)
            b = bare_loop(m1, x, y, batch, epochs, device)
            o = ours(m2, tr, batch, epochs, device)
            if r:
                bare_t.append(b)
                our_t.append(o)
        bare_sps, our_sps = n / min(bare_t), n / min(our_t)  # best-of: least disturbed by other load
        print(f"{name:<12} {ds:<10} {bare_sps:>15.0f} {our_sps:>15.0f} {our_sps / bare_sps:>7.3f}")


if __name__ == "__main__":
    main()
