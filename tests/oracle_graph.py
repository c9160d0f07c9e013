"""Brute-force oracle for effective sparsity (tests only): an explicit unit graph plus BFS.

Why a separate construction: `pruning.sparsity` derives connectivity from autograd on a linearized
copy of the module; this oracle never runs a network. A test describes the same architecture a second
time, op by op, and the oracle lays out one node per unit (per neuron; per channel × pixel for convs
and pools) and one edge per weight use:

* a conv edge joins input (i, y, x) to output (o, p, q) for every kept weight (o, i, ky, kx) and every
  output position whose tap falls inside the image — taps on zero padding make no edge, strides and
  pooling windows are enumerated exactly;
* pools (max or average: the same unit graph) join each in-image window element to its output;
* a residual addition joins both summands to a fresh sum unit; an option-A shortcut keeps the
  subsampled units and adds constant-zero channels (nodes with no in-edges).

Then: BFS forward from all input units and backward from all output units (scipy's csgraph); an edge
is effective iff its source is forward-reachable and its target backward-reachable, and a weight is
effective iff one of its edges is.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import breadth_first_order


def _out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _taps(out: int, size: int, k: int, stride: int, padding: int) -> tuple[np.ndarray, np.ndarray]:
    """Output positions p whose input position p·stride − padding + k lies inside [0, size)."""
    p = np.arange(out)
    src = p * stride - padding + k
    ok = (src >= 0) & (src < size)
    return p[ok], src[ok]


class UnitGraph:
    """A network spelled out unit by unit. Ops take and return integer arrays of node ids."""

    def __init__(self) -> None:
        self.n = 0
        self._src: list[np.ndarray] = []
        self._dst: list[np.ndarray] = []
        self._tag: list[np.ndarray] = []      # global weight index, or -1 for a weight-free edge
        self.layers: dict[str, tuple[int, tuple[int, ...]]] = {}   # name -> (offset, mask shape)
        self._n_weights = 0
        self.inputs: np.ndarray | None = None

    # --- construction ---
    def _nodes(self, shape: tuple[int, ...]) -> np.ndarray:
        ids = np.arange(self.n, self.n + int(np.prod(shape))).reshape(shape)
        self.n += ids.size
        return ids

    def _edges(self, src: np.ndarray, dst: np.ndarray, tag: np.ndarray | int = -1) -> None:
        src, dst = np.broadcast_arrays(src, dst)
        self._src.append(src.ravel())
        self._dst.append(dst.ravel())
        self._tag.append(np.broadcast_to(tag, src.shape).ravel().astype(np.int64))

    def _register(self, name: str, mask: np.ndarray) -> int:
        offset = self._n_weights
        self.layers[name] = (offset, mask.shape)
        self._n_weights += mask.size
        return offset

    def input(self, shape: tuple[int, ...]) -> np.ndarray:
        self.inputs = self._nodes(shape)
        return self.inputs

    def linear(self, x: np.ndarray, mask: np.ndarray, name: str) -> np.ndarray:
        x = x.reshape(-1)
        mask = np.asarray(mask, dtype=bool)
        offset = self._register(name, mask)
        out = self._nodes((mask.shape[0],))
        o, i = np.nonzero(mask)
        self._edges(x[i], out[o], offset + np.ravel_multi_index((o, i), mask.shape))
        return out

    def conv2d(self, x: np.ndarray, mask: np.ndarray, name: str, stride: int = 1,
               padding: int = 0) -> np.ndarray:
        mask = np.asarray(mask, dtype=bool)
        offset = self._register(name, mask)
        n_out, n_in, kh, kw = mask.shape
        _, h, w = x.shape
        out = self._nodes((n_out, _out_size(h, kh, stride, padding), _out_size(w, kw, stride, padding)))
        for ky in range(kh):
            p, rows = _taps(out.shape[1], h, ky, stride, padding)
            for kx in range(kw):
                q, cols = _taps(out.shape[2], w, kx, stride, padding)
                o, i = np.nonzero(mask[:, :, ky, kx])
                if len(p) == 0 or len(q) == 0 or len(o) == 0:
                    continue
                tag = offset + np.ravel_multi_index((o, i, np.full_like(o, ky), np.full_like(o, kx)),
                                                    mask.shape)
                src = x[i[:, None, None], rows[None, :, None], cols[None, None, :]]
                dst = out[o[:, None, None], p[None, :, None], q[None, None, :]]
                self._edges(src, dst, tag[:, None, None])
        return out

    def pool2d(self, x: np.ndarray, kernel: int, stride: int | None = None,
               padding: int = 0) -> np.ndarray:
        stride = kernel if stride is None else stride
        c, h, w = x.shape
        out = self._nodes((c, _out_size(h, kernel, stride, padding),
                           _out_size(w, kernel, stride, padding)))
        ch = np.arange(c)
        for ky in range(kernel):
            p, rows = _taps(out.shape[1], h, ky, stride, padding)
            for kx in range(kernel):
                q, cols = _taps(out.shape[2], w, kx, stride, padding)
                src = x[ch[:, None, None], rows[None, :, None], cols[None, None, :]]
                dst = out[ch[:, None, None], p[None, :, None], q[None, None, :]]
                self._edges(src, dst)
        return out

    def global_pool(self, x: np.ndarray) -> np.ndarray:
        out = self._nodes((x.shape[0],))
        self._edges(x.reshape(x.shape[0], -1), out[:, None])
        return out

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        assert a.shape == b.shape, (a.shape, b.shape)
        out = self._nodes(a.shape)
        self._edges(a, out)
        self._edges(b, out)
        return out

    def shortcut_a(self, x: np.ndarray, planes: int, stride: int = 2) -> np.ndarray:
        """Option A: x[:, ::s, ::s], then constant-zero channels split front/back."""
        sub = x[:, ::stride, ::stride]
        pad = planes - sub.shape[0]
        front = self._nodes((pad // 2, *sub.shape[1:]))
        back = self._nodes((pad - pad // 2, *sub.shape[1:]))
        return np.concatenate([front, sub, back], axis=0)

    # --- evaluation ---
    def _reach(self, adj: sp.csr_matrix, starts: np.ndarray) -> np.ndarray:
        """Nodes reachable from any of `starts` (BFS from a super-source joined to them)."""
        n = adj.shape[0]
        extra = sp.csr_matrix((np.ones(starts.size), (np.full(starts.size, n), starts.ravel())),
                              shape=(n + 1, n + 1))
        big = sp.bmat([[adj, None], [None, sp.csr_matrix((1, 1))]], format="csr") + extra
        order = breadth_first_order(big, n, directed=True, return_predecessors=False)
        seen = np.zeros(n + 1, dtype=bool)
        seen[order] = True
        return seen[:n]

    def effective(self, outputs: np.ndarray) -> dict[str, np.ndarray]:
        """Boolean effective mask per registered layer, in registration order."""
        src = np.concatenate(self._src) if self._src else np.zeros(0, np.int64)
        dst = np.concatenate(self._dst) if self._dst else np.zeros(0, np.int64)
        tag = np.concatenate(self._tag) if self._tag else np.zeros(0, np.int64)
        adj = sp.csr_matrix((np.ones(src.size), (src, dst)), shape=(self.n, self.n))
        forward = self._reach(adj, self.inputs)
        backward = self._reach(adj.T.tocsr(), outputs)
        alive = forward[src] & backward[dst] & (tag >= 0)
        flat = np.zeros(self._n_weights, dtype=bool)
        flat[tag[alive]] = True
        return {name: flat[off: off + int(np.prod(shape))].reshape(shape)
                for name, (off, shape) in self.layers.items()}


def mlp_effective(masks: list[np.ndarray]) -> list[np.ndarray]:
    """The MLP special case by boolean matrix products (a second, even simpler oracle).

    masks[l] has shape (out, in). A unit is forward-alive if some kept weight joins it to a
    forward-alive unit of the previous layer (all inputs alive); backward-alive symmetrically from
    the outputs; a kept weight is effective iff its input end is forward- and its output end
    backward-alive.
    """
    fwd = [np.ones(masks[0].shape[1], dtype=bool)]
    for m in masks:
        fwd.append((m.astype(np.int64) @ fwd[-1].astype(np.int64)) > 0)
    bwd = [np.ones(masks[-1].shape[0], dtype=bool)]
    for m in reversed(masks):
        bwd.insert(0, (m.T.astype(np.int64) @ bwd[0].astype(np.int64)) > 0)
    return [m & np.outer(bwd[layer + 1], fwd[layer]) for layer, m in enumerate(masks)]
