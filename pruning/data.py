"""Data set registry: splits held as tensors and batched on the training device.

Why tensors and not a per-sample DataLoader: every data set here fits in memory, and a Python
`__getitem__` per sample costs more than the small models' forward passes. A `Split` holds the raw
images once; `batches()` moves them to the device once, normalizes there, and does the augmentation
as batched tensor ops from a seeded generator, so a run is reproducible and the device does the
work. Each split names its augmentation: random crop with 4-pixel zero padding and horizontal flip
for natural images (`crop_flip`), a random rotation of at most ±4° for Fashion-MNIST (`rotate`: the
effective-sparsity authors' augmentation for MNIST and Fashion-MNIST). Whether a split is augmented
by default is `augmentable`; `TrainConfig.augment` overrides it either way.

Real data sets are read from the on-disk formats torchvision writes (MNIST raw idx files, CIFAR python
pickles, Fashion-MNIST idx.gz files) or the tiny-imagenet-200 folder layout; Fashion-MNIST is also
read from Debian's `dataset-fashion-mnist` package. Nothing is downloaded here: a missing file gives
one line naming the expected path and how to fetch it.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pruning.options import defaults, option, validate

DEFAULT_ROOT = "./data"
_CACHE_LIMIT_BYTES = 2 << 30  # normalized float copies above this stay uint8 and normalize per batch
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian: dataset-fashion-mnist
AUGMENTATIONS = ("crop_flip", "rotate")


class DataNotFound(FileNotFoundError):
    """Raised with a one-line message: what is missing, where, and how to get it."""


@dataclass
class Split:
    """One split of a data set: raw inputs `x` (N, C, H, W), labels `y` (N,), and how to normalize."""

    name: str
    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float = 1.0  # raw value that maps to 1.0 before normalization (255 for uint8 images)
    augmentable: bool = False  # augmented by default (crop+flip: natural images; not 8×8 digits)
    augmentation: str = "crop_flip"  # what `augment` does: crop_flip | rotate
    max_rotation: float = 4.0  # degrees, for augmentation "rotate"
    _device_cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(f"augmentation {self.augmentation!r}: choose from {', '.join(AUGMENTATIONS)}")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def _stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.x.shape[1]
        mean = torch.tensor(self.mean, dtype=torch.float32, device=device).expand(c).view(1, c, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=device).expand(c).view(1, c, 1, 1)
        return mean, std

    def normalize(self, xb: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(xb.device)
        return (xb.float() / self.scale - mean) / std

    def on(self, device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """(x, y, normalized) on `device`, moved once and cached: normalized floats when small."""
        device = torch.device(device)
        key = str(device)
        if key not in self._device_cache:
            small = self.x.numel() * 4 <= _CACHE_LIMIT_BYTES
            x = self.x.to(device)
            x = self.normalize(x) if small else x
            self._device_cache[key] = (x, self.y.to(device), small)
        return self._device_cache[key]

    def tensors(self, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """All of the split, normalized, in fixed order (for evaluation and Hessians)."""
        x, y, normalized = self.on(device)
        return (x if normalized else self.normalize(x)), y

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        device: str | torch.device = "cpu",
        augment: bool = False,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalized (x, y) batches on `device`; fixed order unless `shuffle`.

        `generator` (a CPU generator) lets a training loop draw a new order every epoch from one
        seeded stream; otherwise a fresh generator seeded with `seed` is used.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size {batch_size}: must be ≥ 1")
        x, y, normalized = self.on(device)
        n = len(self)
        g = generator if generator is not None else torch.Generator().manual_seed(seed)
        order = torch.randperm(n, generator=g).to(x.device) if shuffle else None
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        for start in range(0, stop, batch_size):
            if order is None:
                xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            else:
                idx = order[start : start + batch_size]
                xb, yb = x[idx], y[idx]
            if not normalized:
                xb = self.normalize(xb)
            if augment:
                xb = self.augment(xb, g)
            yield xb, yb

    def augment(self, xb: torch.Tensor, g: torch.Generator, pad: int = 4) -> torch.Tensor:
        """The split's augmentation of a normalized batch: `crop_flip` (with `pad`) or `rotate`."""
        if self.augmentation == "rotate":
            return self.rotate(xb, g, self.max_rotation)
        return self.crop_flip(xb, g, pad)

    def crop_flip(self, xb: torch.Tensor, g: torch.Generator, pad: int = 4) -> torch.Tensor:
        """Random crop with `pad`-pixel zero padding (raw zero, i.e. black) and horizontal flip."""
        b, c, h, w = xb.shape
        mean, std = self._stats(xb.device)
        fill = (-mean / std).view(1, c, 1, 1)  # raw 0 after normalization
        padded = fill.expand(b, c, h + 2 * pad, w + 2 * pad).clone()
        padded[:, :, pad : pad + h, pad : pad + w] = xb
        oy = torch.randint(0, 2 * pad + 1, (b,), generator=g).to(xb.device)
        ox = torch.randint(0, 2 * pad + 1, (b,), generator=g).to(xb.device)
        flip = (torch.rand(b, generator=g) < 0.5).to(xb.device)
        rows = oy[:, None] + torch.arange(h, device=xb.device)  # (b, h)
        cols = ox[:, None] + torch.arange(w, device=xb.device)  # (b, w)
        cols = torch.where(flip[:, None], cols.flip(1), cols)
        bi = torch.arange(b, device=xb.device)[:, None, None]
        out = padded[bi, :, rows[:, :, None], cols[:, None, :]]  # (b, h, w, c)
        return out.permute(0, 3, 1, 2).contiguous()

    @staticmethod
    def rotate(xb: torch.Tensor, g: torch.Generator, degrees: float = 4.0) -> torch.Tensor:
        """Rotate each image about its centre by an angle uniform in [−degrees, degrees].

        As Keras' `ImageDataGenerator(rotation_range=4)`, which the authors use on (Fashion-)MNIST:
        bilinear interpolation, and points that come from outside the image take the nearest edge
        value (`border`). Interpolation weights sum to one, so rotating the normalized batch equals
        normalizing the rotated raw batch.
        """
        b, _, h, w = xb.shape
        theta = (torch.rand(b, generator=g, dtype=torch.float64) * 2 - 1) * math.radians(degrees)
        cos, sin = torch.cos(theta), torch.sin(theta)
        zero = torch.zeros_like(theta)
        # the rotation in pixels, written in affine_grid's [-1, 1] coordinates (x spans w, y spans h)
        affine = torch.stack([torch.stack([cos, -sin * h / w, zero], 1),
                              torch.stack([sin * w / h, cos, zero], 1)], 1)
        affine = affine.to(xb.device, xb.dtype)
        grid = torch.nn.functional.affine_grid(affine, list(xb.shape), align_corners=False)
        return torch.nn.functional.grid_sample(xb, grid, mode="bilinear", padding_mode="border",
                                               align_corners=False)


LOCATIONS = ("root", "system_dir")  # loader arguments that say where files are, never what they hold


# A loader's options (`pruning.options` fields: type, range, help); the loader's keyword defaults
# read them, so each default is stated once. Where files live (`LOCATIONS`) is never an option.

_SEED_HELP = "seed of the train/test split (a fixed published split ignores it)"


@dataclass(frozen=True)
class SeedOptions:
    """The options of a loader whose split is published (mnist, cifar10, cifar100, tinyimagenet)."""

    seed: int = option(0, _SEED_HELP, ge=0)

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class DigitsOptions:
    """digits: a stratified split of the 1,797 images (at least 10 images on each side)."""

    seed: int = option(0, _SEED_HELP, ge=0)
    test_size: int = option(360, "test images of the 1,797", ge=10, le=1787)

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class SyntheticOptions:
    """synthetic: Gaussian classes around random means."""

    seed: int = option(0, _SEED_HELP, ge=0)
    input_shape: tuple[int, int, int] = option((1, 8, 8), "(channels, height, width)", ge=1)
    num_classes: int = option(10, "classes", ge=2)
    n_train: int = option(512, "training samples", ge=1)
    n_test: int = option(256, "test samples", ge=1)
    noise: float = option(1.0, "standard deviation around each class mean", ge=0)

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class FashionOptions:
    """fashion_mnist: the published split, optionally with the authors' rotation."""

    seed: int = option(0, _SEED_HELP, ge=0)
    augment: bool = option(False, "the effective-sparsity authors' random rotation of ±4°")

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class DataInfo:
    """What a data set is, known without reading it (spec validation needs shapes up front)."""

    input_shape: tuple[int, int, int]
    num_classes: int
    loader: Callable[..., tuple[Split, Split]]
    doc: str
    embedded: bool = False  # ships with an installed package; needs no root
    train_size: int | None = None  # training samples (known without reading: step counts at validation)
    options: type = SeedOptions  # the loader's options dataclass (`seed` fixes the split)
    smallest_class: int | None = None  # training samples of its rarest class; None: count them (embedded sets)

    @property
    def option_defaults(self) -> dict:
        """The loader's options with their defaults; where files live (`LOCATIONS`) is no option."""
        return defaults(self.options)


def _root(root: str | os.PathLike | None) -> Path:
    return Path(root if root is not None else os.environ.get("PRUNETUNE_DATA", DEFAULT_ROOT))


def _missing(name: str, path: Path, what: str) -> DataNotFound:
    return DataNotFound(
        f"{name}: {what} not found under {path}; on a machine with internet run "
        f"`prunetune data download {name} --data-root {path}` (or set PRUNETUNE_DATA)"
    )


# --- embedded and synthetic -------------------------------------------------------------------

def load_digits(root=None, seed: int = DigitsOptions.seed, test_size: int = DigitsOptions.test_size) -> tuple[Split, Split]:
    """scikit-learn's 1,797 8×8 digits, stratified train/test split fixed by `seed`."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    d = sk_digits()
    x = torch.tensor(d.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    idx_train, idx_test = train_test_split(
        list(range(len(y))), test_size=test_size, stratify=d.target, random_state=seed
    )
    xtr, xte = x[idx_train], x[idx_test]
    mean, std = float(xtr.mean()), float(xtr.std())
    mk = lambda xs, ys: Split("digits", xs, ys, 10, (mean,), (std,))  # noqa: E731
    return mk(xtr, y[idx_train]), mk(xte, y[idx_test])


def load_synthetic(
    root=None,
    seed: int = SyntheticOptions.seed,
    input_shape: tuple[int, int, int] = SyntheticOptions.input_shape,
    num_classes: int = SyntheticOptions.num_classes,
    n_train: int = SyntheticOptions.n_train,
    n_test: int = SyntheticOptions.n_test,
    noise: float = SyntheticOptions.noise,
) -> tuple[Split, Split]:
    """Gaussian classes around random means: tiny, learnable, any shape — for tests."""
    g = torch.Generator().manual_seed(10_007 + seed)
    shape = tuple(int(s) for s in input_shape)
    means = torch.randn(num_classes, *shape, generator=g)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % num_classes
        y = y[torch.randperm(n, generator=g)]
        return means[y] + noise * torch.randn(n, *shape, generator=g), y

    (xtr, ytr), (xte, yte) = draw(n_train), draw(n_test)
    mk = lambda xs, ys: Split("synthetic", xs, ys, num_classes, (0.0,), (1.0,))  # noqa: E731
    return mk(xtr, ytr), mk(xte, yte)


# --- real data sets in torchvision's on-disk formats -----------------------------------------

def load_mnist(root=None, seed: int = 0) -> tuple[Split, Split]:
    """MNIST from torchvision's raw idx files: <root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte."""
    from torchvision.datasets import MNIST

    base = _root(root)
    raw = base / "MNIST" / "raw"
    for f in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        if not (raw / f).exists():
            raise _missing("mnist", base, f"MNIST/raw/{f}")

    def split(train: bool) -> Split:
        ds = MNIST(str(base), train=train, download=False)
        return Split("mnist", ds.data.unsqueeze(1), ds.targets.long(), 10, (0.1307,), (0.3081,),
                     scale=255.0, augmentable=False)

    return split(True), split(False)


FASHION_MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                       "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
_IDX_UBYTE = 0x08  # the idx type code of unsigned bytes (the third byte of the magic number)


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An idx file of unsigned bytes (gzip-compressed when it ends in .gz) as a uint8 array.

    The format (LeCun's MNIST page): a big-endian magic number 0x0000 08 <ndim>, then ndim
    big-endian uint32 sizes, then the bytes in C order. Anything else — a wrong magic number, a
    size that does not match the payload, a broken gzip stream — is a one-line ValueError naming
    the file, instead of a reshape error later.
    """
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise ValueError(f"{path}: not a readable gzip file ({e})") from None
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path}: corrupt idx header (only {len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    want = (_IDX_UBYTE << 8) | ndim
    if magic != want:
        raise ValueError(f"{path}: corrupt idx header (magic 0x{magic:08x}, expected 0x{want:08x})")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(raw) - offset != math.prod(dims):
        raise ValueError(f"{path}: corrupt idx file (header says {dims}, "
                         f"{math.prod(dims)} bytes, but {len(raw) - offset} follow)")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims).copy()


def _fashion_mnist_dir(root, system_dir) -> Path:
    """The folder holding all four files: the data root's torchvision layout, else Debian's."""
    base = _root(root)
    places = [base / "FashionMNIST" / "raw",
              Path(system_dir if system_dir is not None else FASHION_MNIST_SYSTEM_DIR)]
    for place in places:
        if all((place / f).is_file() for f in FASHION_MNIST_FILES):
            return place
    missing = next(f for f in FASHION_MNIST_FILES if not (places[0] / f).is_file())
    raise DataNotFound(
        f"fashion_mnist: {missing} not found under {places[0]} nor {places[1]}; install it with "
        f"`apt-get install dataset-fashion-mnist`, or on a machine with internet run "
        f"`prunetune data download fashion_mnist --data-root {base}` (or set PRUNETUNE_DATA)"
    )


def load_fashion_mnist(root=None, seed: int = 0, *, augment: bool = FashionOptions.augment,
                       system_dir: str | os.PathLike | None = None) -> tuple[Split, Split]:
    """Fashion-MNIST (Xiao et al. 2017): 60,000 / 10,000 28×28 grey images of 10 garment classes.

    Read from <root>/FashionMNIST/raw/*-idx?-ubyte.gz (what `torchvision.datasets.FashionMNIST`
    downloads), else from `system_dir` (default `FASHION_MNIST_SYSTEM_DIR`, where Debian's
    `dataset-fashion-mnist` installs the same original files). Normalized with the training set's
    mean 0.2860 and std 0.3530. Not augmented by default; `augment=True` makes the training split's
    default the authors' random ±4° rotation (their `rotation_range=4`).
    """
    place = _fashion_mnist_dir(root, system_dir)

    def split(prefix: str, augmentable: bool) -> Split:
        x = read_idx(place / f"{prefix}-images-idx3-ubyte.gz", 3)
        y = read_idx(place / f"{prefix}-labels-idx1-ubyte.gz", 1)
        if x.shape[0] != y.shape[0] or x.shape[1:] != (28, 28) or (y.size and int(y.max()) > 9):
            raise ValueError(f"fashion_mnist: {place}/{prefix}-*: {x.shape} images, {y.shape} labels "
                             f"(max {int(y.max()) if y.size else None}); expected N×28×28 and N labels < 10")
        return Split("fashion_mnist", torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y).long(), 10,
                     (0.2860,), (0.3530,), scale=255.0, augmentable=augmentable,
                     augmentation="rotate", max_rotation=4.0)

    return split("train", bool(augment)), split("t10k", False)


def _cifar(name: str, cls_name: str, folder: str, num_classes: int, mean, std, root) -> tuple[Split, Split]:
    """CIFAR from the python pickles; torchvision's md5 checks are skipped (files are checked to exist).

    Why skip the checksums: a partial or re-packed copy (and the tests' tiny files) would otherwise be
    refused with torchvision's generic message instead of being read.
    """
    import torchvision.datasets as tvd

    base = _root(root)
    parent = getattr(tvd, cls_name)

    class Unchecked(parent):  # type: ignore[misc, valid-type]
        def _check_integrity(self) -> bool:
            d = Path(self.root) / self.base_folder
            return all((d / f).exists() for f, _ in self.train_list + self.test_list)

        def _load_meta(self) -> None:
            self.classes, self.class_to_idx = [], {}

    files = [f for f, _ in parent.train_list + parent.test_list]
    for f in files:
        if not (base / folder / f).exists():
            raise _missing(name, base, f"{folder}/{f}")

    def split(train: bool) -> Split:
        ds = Unchecked(str(base), train=train, download=False)
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        y = torch.tensor(ds.targets, dtype=torch.int64)
        return Split(name, x, y, num_classes, mean, std, scale=255.0, augmentable=True)

    return split(True), split(False)


def load_cifar10(root=None, seed: int = 0) -> tuple[Split, Split]:
    return _cifar("cifar10", "CIFAR10", "cifar-10-batches-py", 10,
                  (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), root)


def load_cifar100(root=None, seed: int = 0) -> tuple[Split, Split]:
    return _cifar("cifar100", "CIFAR100", "cifar-100-python", 100,
                  (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), root)


def load_tinyimagenet(root=None, seed: int = 0) -> tuple[Split, Split]:
    """tiny-imagenet-200: train/<wnid>/images/*.JPEG, val/images + val/val_annotations.txt (val = test).

    Decoded once into a uint8 tensor cache beside the folder (`.prunetune-<split>.pt`), because
    decoding 110,000 JPEGs takes minutes.
    """
    import numpy as np
    from PIL import Image

    base = _root(root)
    top = base / "tiny-imagenet-200"
    wnids_file = top / "wnids.txt"
    ann_file = top / "val" / "val_annotations.txt"
    for f in (wnids_file, ann_file):
        if not f.exists():
            raise _missing("tinyimagenet", base, str(f.relative_to(base)))
    wnids = [w.strip() for w in wnids_file.read_text().split() if w.strip()]
    label = {w: i for i, w in enumerate(wnids)}

    def decode(paths: list[Path]) -> torch.Tensor:
        def one(p: Path) -> torch.Tensor:
            with Image.open(p) as img:  # some tiny-imagenet images are grayscale
                return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)

        return torch.stack([one(p) for p in paths])

    def split(kind: str) -> Split:
        cache = top / f".prunetune-{kind}.pt"
        if cache.exists():
            x, y = torch.load(cache, weights_only=True)
        else:
            if kind == "train":
                items = [(p, label[w]) for w in wnids
                         for p in sorted((top / "train" / w / "images").glob("*.JPEG"))]
            else:
                items = []
                for line in ann_file.read_text().splitlines():
                    parts = line.split("\t")
                    if len(parts) >= 2 and parts[1] in label:
                        items.append((top / "val" / "images" / parts[0], label[parts[1]]))
            if not items:
                raise _missing("tinyimagenet", base, f"tiny-imagenet-200/{kind} images")
            x = decode([p for p, _ in items])
            y = torch.tensor([c for _, c in items], dtype=torch.int64)
            tmp = cache.with_name(cache.name + f".{os.getpid()}.tmp")
            try:
                torch.save((x, y), tmp)
                os.replace(tmp, cache)
            except OSError:  # a read-only data root still works, just without the cache
                tmp.unlink(missing_ok=True)
        return Split("tinyimagenet", x, y, len(wnids), (0.4802, 0.4481, 0.3975),
                     (0.2770, 0.2691, 0.2821), scale=255.0, augmentable=True)

    return split("train"), split("val")


DATASETS: dict[str, DataInfo] = {
    "digits": DataInfo((1, 8, 8), 10, load_digits, "scikit-learn's 8×8 handwritten digits (embedded)", True,
                       train_size=1797 - 360, options=DigitsOptions),
    "synthetic": DataInfo((1, 8, 8), 10, load_synthetic, "Gaussian classes, any shape (tests)", True,
                          train_size=512, options=SyntheticOptions),
    "mnist": DataInfo((1, 28, 28), 10, load_mnist, "MNIST, torchvision raw idx files", train_size=60_000,
                      smallest_class=5_421),
    "fashion_mnist": DataInfo((1, 28, 28), 10, load_fashion_mnist,
                              "Fashion-MNIST, idx.gz files (torchvision layout or Debian's package)",
                              train_size=60_000, options=FashionOptions, smallest_class=6_000),
    "cifar10": DataInfo((3, 32, 32), 10, load_cifar10, "CIFAR-10, python pickles", train_size=50_000,
                        smallest_class=5_000),
    "cifar100": DataInfo((3, 32, 32), 100, load_cifar100, "CIFAR-100, python pickles", train_size=50_000,
                         smallest_class=500),
    "tinyimagenet": DataInfo((3, 64, 64), 200, load_tinyimagenet, "tiny-imagenet-200 folder",
                             train_size=100_000, smallest_class=500),
}


def get(name: str) -> DataInfo:
    if name not in DATASETS:
        raise ValueError(f"dataset {name!r}: choose from {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def info(name: str, **options) -> tuple[tuple[int, int, int], int]:
    """(input_shape, num_classes) of a data set without reading it (`synthetic` takes its options)."""
    d = get(name)
    if name == "synthetic":
        o = {**d.option_defaults, **options}  # defaults from the one declaration (SyntheticOptions)
        return tuple(o["input_shape"]), int(o["num_classes"])  # type: ignore[return-value]
    return d.input_shape, d.num_classes


def train_size(name: str, **options) -> int | None:
    """Training samples of a data set without reading it (`synthetic`: its `n_train` option)."""
    d = get(name)
    if name == "synthetic":
        return int({**d.option_defaults, **options}["n_train"])
    return d.train_size


def smallest_class(name: str, **options) -> int:
    """Training samples of the rarest class: published for the real sets, counted for the embedded
    ones (whose split depends on their options; loading them takes milliseconds)."""
    d = get(name)
    if d.smallest_class is not None:
        return d.smallest_class
    train_split, _ = load(name, **options)
    return int(torch.bincount(train_split.y, minlength=train_split.num_classes).min())


def load(name: str, *, root: str | os.PathLike | None = None, seed: int = 0, **options) -> tuple[Split, Split]:
    """(train, test) splits of data set `name`; `root` defaults to $PRUNETUNE_DATA or ./data."""
    return get(name).loader(root=root, seed=seed, **options)


def _download_torchvision(cls_name: str) -> Callable[[str], None]:
    def fetch(root: str) -> None:
        import torchvision.datasets as tvd

        for train in (True, False):
            getattr(tvd, cls_name)(root, train=train, download=True)

    return fetch


def _download_tinyimagenet(root: str) -> None:
    from torchvision.datasets.utils import download_and_extract_archive

    download_and_extract_archive("http://cs231n.stanford.edu/tiny-imagenet-200.zip", root)


_DOWNLOADS: dict[str, Callable[[str], None]] = {
    "mnist": _download_torchvision("MNIST"),
    "fashion_mnist": _download_torchvision("FashionMNIST"),
    "cifar10": _download_torchvision("CIFAR10"),
    "cifar100": _download_torchvision("CIFAR100"),
    "tinyimagenet": _download_tinyimagenet,
}


DOWNLOADABLE = tuple(_DOWNLOADS)


def download(name: str, root: str | os.PathLike) -> None:
    """Fetch a real data set into `root` through torchvision (needs internet)."""
    if name not in _DOWNLOADS:
        embedded = [n for n, d in DATASETS.items() if d.embedded]
        raise ValueError(f"dataset {name!r}: downloadable are {sorted(_DOWNLOADS)} "
                         f"({', '.join(embedded)} need no download)")
    Path(root).mkdir(parents=True, exist_ok=True)
    _DOWNLOADS[name](str(root))
