"""prunetune's pruning library: pure PyTorch (no Ray).

Modules: `models` (registry), `data` (data sets as tensors), `train` (SGD loop), `masks`
(torch.nn.utils.prune), `sparsity` (direct and effective), `quotas`, `pruners`, `hvp` (Hessian-vector
products), `slq` (the Hessian spectrum by SLQ), `limit` (pruning-limit theory), `lomp` (the LOMP workflow).
"""

__version__ = "0.1.0"
