"""Data sets: the real loaders read tiny files written here in the exact on-disk formats."""

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from pruning import data


def _write_idx(path, array: np.ndarray) -> None:
    """MNIST idx format: big-endian magic (0x08 = ubyte, ndim), dims, then raw bytes."""
    magic = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    dims = struct.pack(">" + "I" * array.ndim, *array.shape)
    path.write_bytes(magic + dims + array.astype(np.uint8).tobytes())


def test_mnist_reads_raw_idx_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    labels = np.arange(12) % 10
    for prefix, n in (("train", 12), ("t10k", 5)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", imgs[:n])
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels[:n])
    train, test = data.load("mnist", root=tmp_path)
    assert (len(train), len(test)) == (12, 5)
    assert train.input_shape == (1, 28, 28) and train.num_classes == 10
    assert torch.equal(train.x[3, 0], torch.from_numpy(imgs[3]))
    assert train.y.tolist() == labels.tolist()
    xb, _ = next(train.batches(12))
    expected = (torch.from_numpy(imgs[0]).float() / 255 - 0.1307) / 0.3081
    assert torch.allclose(xb[0, 0], expected, atol=1e-6)


def _write_cifar(tmp_path, folder, files, label_key, n, classes):
    d = tmp_path / folder
    d.mkdir()
    rng = np.random.default_rng(1)
    written = {}
    for f in files:
        arr = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, classes, n)]
        with open(d / f, "wb") as fh:
            pickle.dump({"data": arr, label_key: labels}, fh)
        written[f] = (arr, labels)
    return written


def test_cifar10_reads_python_pickles(tmp_path):
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    written = _write_cifar(tmp_path, "cifar-10-batches-py", files, "labels", 4, 10)
    train, test = data.load("cifar10", root=tmp_path)
    assert (len(train), len(test)) == (20, 4)
    assert train.input_shape == (3, 32, 32) and train.num_classes == 10
    arr, labels = written["data_batch_1"]
    assert torch.equal(train.x[0], torch.from_numpy(arr[0]).view(3, 32, 32))  # CHW planes, as stored
    assert train.y[:4].tolist() == labels
    assert test.y.tolist() == written["test_batch"][1]


def test_cifar100_reads_fine_labels(tmp_path):
    written = _write_cifar(tmp_path, "cifar-100-python", ["train", "test"], "fine_labels", 6, 100)
    train, test = data.load("cifar100", root=tmp_path)
    assert train.num_classes == 100 and len(test) == 6
    assert train.y.tolist() == written["train"][1]


def test_tinyimagenet_folder_layout(tmp_path):
    from PIL import Image

    top = tmp_path / "tiny-imagenet-200"
    wnids = ["n01443537", "n01629819"]
    (top / "val" / "images").mkdir(parents=True)
    (top / "wnids.txt").write_text("\n".join(wnids) + "\n")
    colors = {wnids[0]: (255, 0, 0), wnids[1]: (0, 0, 255)}
    for w in wnids:
        imgs = top / "train" / w / "images"
        imgs.mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (64, 64), colors[w]).save(imgs / f"{w}_{i}.JPEG")
    lines = []
    for i, w in enumerate([wnids[1], wnids[0]]):
        Image.new("L", (64, 64), 128).save(top / "val" / "images" / f"val_{i}.JPEG")  # grayscale too
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    (top / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    train, test = data.load("tinyimagenet", root=tmp_path)
    assert (len(train), len(test)) == (6, 2)
    assert train.input_shape == (3, 64, 64) and train.num_classes == 2
    assert train.y.tolist() == [0, 0, 0, 1, 1, 1] and test.y.tolist() == [1, 0]
    assert train.x[0, 0].float().mean() > 240 and train.x[0, 2].float().mean() < 15  # red
    assert test.x.shape == (2, 3, 64, 64)
    again, _ = data.load("tinyimagenet", root=tmp_path)  # from the decoded cache
    assert torch.equal(again.x, train.x)


@pytest.mark.parametrize("name,expected", [
    ("mnist", "MNIST/raw/train-images-idx3-ubyte"),
    ("cifar10", "cifar-10-batches-py/data_batch_1"),
    ("cifar100", "cifar-100-python/train"),
    ("tinyimagenet", "tiny-imagenet-200/wnids.txt"),
])
def test_missing_files_name_the_path_and_the_fix(tmp_path, name, expected):
    with pytest.raises(data.DataNotFound) as err:
        data.load(name, root=tmp_path / "nowhere")
    msg = str(err.value)
    assert "\n" not in msg and expected in msg and str(tmp_path / "nowhere") in msg
    assert f"prunetune data download {name}" in msg


def test_data_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNETUNE_DATA", str(tmp_path / "envroot"))
    with pytest.raises(data.DataNotFound, match="envroot"):
        data.load("mnist")


def test_unknown_dataset_lists_choices():
    with pytest.raises(ValueError, match=r"dataset 'imagenet': choose from cifar10, cifar100, digits"):
        data.load("imagenet")


def test_digits_split_is_stratified_and_fixed_by_seed():
    tr, te = data.load("digits", seed=0)
    tr2, te2 = data.load("digits", seed=0)
    tr3, _ = data.load("digits", seed=1)
    assert (len(tr), len(te)) == (1437, 360)
    assert torch.equal(tr.x, tr2.x) and torch.equal(te.y, te2.y)
    assert not torch.equal(tr.x, tr3.x)
    counts = torch.bincount(te.y, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # 360 / 10, stratified
    x, _ = tr.tensors()
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std()) - 1) < 1e-3


def test_batches_fixed_order_shuffle_and_augmentation_are_seeded():
    split = data.Split("toy", torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8).repeat(5, 1, 1, 1),
                       torch.arange(10), 10, (0.0,), (1.0,), augmentable=True)
    fixed = torch.cat([y for _, y in split.batches(4)])
    assert fixed.tolist() == list(range(10))
    a = [x for x, _ in split.batches(4, shuffle=True, seed=7, augment=True)]
    b = [x for x, _ in split.batches(4, shuffle=True, seed=7, augment=True)]
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    ys = torch.cat([y for _, y in split.batches(4, shuffle=True, seed=7)])
    assert sorted(ys.tolist()) == list(range(10)) and ys.tolist() != list(range(10))


def test_augmentation_is_crop_with_zero_padding_and_flip():
    x = torch.rand(64, 1, 8, 8)
    split = data.Split("toy", x, torch.zeros(64, dtype=torch.long), 2, (0.0,), (1.0,), augmentable=True)
    out = split.augment(x, torch.Generator().manual_seed(0), pad=4)
    for i in range(64):  # each output is a window of the padded (or flipped padded) image
        padded = torch.nn.functional.pad(x[i], (4, 4, 4, 4))
        windows = [padded[:, r:r + 8, c:c + 8] for r in range(9) for c in range(9)]
        windows += [w.flip(-1) for w in windows]
        assert any(torch.equal(out[i], w) for w in windows)
    assert not torch.equal(out, x)


def test_synthetic_options():
    tr, te = data.load("synthetic", input_shape=(3, 16, 16), num_classes=4, n_train=40, n_test=8)
    assert tr.input_shape == (3, 16, 16) and tr.num_classes == 4 and (len(tr), len(te)) == (40, 8)
    assert data.info("synthetic", input_shape=(3, 16, 16), num_classes=4) == ((3, 16, 16), 4)


# --- Fashion-MNIST: idx.gz files, in the data root (torchvision) or Debian's folder ----------------

def _write_fashion(folder, n_train=12, n_test=5, seed=0):
    """The four original files, gzip-compressed idx, exactly as Zalando ships them."""
    import gzip

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) * 7 + seed) % 10
        for kind, arr in (("images-idx3", imgs), ("labels-idx1", labels)):
            path = folder / f"{prefix}-{kind}-ubyte.gz"
            _write_idx(path, arr)
            path.write_bytes(gzip.compress(path.read_bytes()))
        out[prefix] = (imgs, labels)
    return out


def test_fashion_mnist_reads_the_torchvision_layout(tmp_path):
    written = _write_fashion(tmp_path / "root" / "FashionMNIST" / "raw")
    train, test = data.load("fashion_mnist", root=tmp_path / "root", system_dir=tmp_path / "none")
    assert (len(train), len(test)) == (12, 5)
    assert train.input_shape == (1, 28, 28) and train.num_classes == 10 and train.name == "fashion_mnist"
    imgs, labels = written["train"]
    assert torch.equal(train.x[:, 0], torch.from_numpy(imgs)) and train.y.tolist() == labels.tolist()
    assert test.y.tolist() == written["t10k"][1].tolist() and train.y.dtype == torch.int64
    xb, _ = next(train.batches(12))
    assert torch.allclose(xb[5, 0], (torch.from_numpy(imgs[5]).float() / 255 - 0.2860) / 0.3530, atol=1e-6)
    assert not train.augmentable and not test.augmentable  # no augmentation unless asked for


def test_fashion_mnist_falls_back_to_debians_folder_and_prefers_the_root(tmp_path):
    system = _write_fashion(tmp_path / "debian", seed=1)
    train, test = data.load("fashion_mnist", root=tmp_path / "empty", system_dir=tmp_path / "debian")
    assert train.y.tolist() == system["train"][1].tolist() and len(test) == 5
    rooted = _write_fashion(tmp_path / "root" / "FashionMNIST" / "raw", n_train=7, seed=2)
    train, _ = data.load("fashion_mnist", root=tmp_path / "root", system_dir=tmp_path / "debian")
    assert train.y.tolist() == rooted["train"][1].tolist()
    assert data.FASHION_MNIST_SYSTEM_DIR == Path("/usr/share/datasets/fashion-mnist")


def test_fashion_mnist_missing_names_both_places_and_both_fixes(tmp_path):
    partial = tmp_path / "root" / "FashionMNIST" / "raw"
    _write_fashion(partial)
    (partial / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(data.DataNotFound) as err:
        data.load("fashion_mnist", root=tmp_path / "root", system_dir=tmp_path / "debian")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("fashion_mnist: t10k-labels-idx1-ubyte.gz not found")
    assert str(partial) in msg and str(tmp_path / "debian") in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert f"prunetune data download fashion_mnist --data-root {tmp_path / 'root'}" in msg


def test_fashion_mnist_corrupt_files_name_the_file(tmp_path):
    import gzip

    raw = tmp_path / "FashionMNIST" / "raw"
    _write_fashion(raw)
    bad = raw / "train-images-idx3-ubyte.gz"
    body = bytearray(gzip.decompress(bad.read_bytes()))
    body[2] = 0x0D  # float type code instead of unsigned bytes
    bad.write_bytes(gzip.compress(bytes(body)))
    with pytest.raises(ValueError) as err:
        data.load("fashion_mnist", root=tmp_path, system_dir=tmp_path / "none")
    assert str(err.value) == f"{bad}: corrupt idx header (magic 0x00000d03, expected 0x00000803)"
    body[2] = 0x08
    bad.write_bytes(gzip.compress(bytes(body[:-10])))  # truncated payload
    with pytest.raises(ValueError, match=rf"^{bad}: corrupt idx file \(header says \(12, 28, 28\)"):
        data.load("fashion_mnist", root=tmp_path, system_dir=tmp_path / "none")
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match=rf"^{bad}: not a readable gzip file"):
        data.load("fashion_mnist", root=tmp_path, system_dir=tmp_path / "none")


def test_fashion_mnist_rotation_option(tmp_path):
    _write_fashion(tmp_path / "FashionMNIST" / "raw")
    train, test = data.load("fashion_mnist", root=tmp_path, system_dir=tmp_path / "none", augment=True)
    assert train.augmentable and not test.augmentable
    assert train.augmentation == "rotate" and train.max_rotation == 4.0
    a = [x for x, _ in train.batches(6, shuffle=True, seed=3, augment=True)]
    b = [x for x, _ in train.batches(6, shuffle=True, seed=3, augment=True)]
    plain = [x for x, _ in train.batches(6, shuffle=True, seed=3)]
    assert all(torch.equal(p, q) for p, q in zip(a, b)) and not torch.equal(a[0], plain[0])
    # the data sets that existed keep their augmentation: crop+flip
    assert data.Split("t", torch.zeros(1, 1, 4, 4), torch.zeros(1), 2, (0.0,), (1.0,)).augmentation == "crop_flip"


def test_rotation_turns_an_image_by_at_most_the_range():
    """A bright spot 8 pixels right of the centre moves along the circle of radius 8 by an angle in
    [−4°, 4°]; the angles are seeded and spread over the range. Flat images stay flat (border fill)."""
    import math

    x = torch.zeros(256, 1, 29, 29)
    x[:, 0, 14, 22] = 1.0
    out = data.Split.rotate(x, torch.Generator().manual_seed(0), 4.0)
    ys, xs = torch.meshgrid(torch.arange(29.0), torch.arange(29.0), indexing="ij")
    mass = out[:, 0].sum((1, 2))
    cy, cx = (out[:, 0] * ys).sum((1, 2)) / mass - 14, (out[:, 0] * xs).sum((1, 2)) / mass - 14
    angles = torch.rad2deg(torch.atan2(cy, cx))
    assert float(angles.abs().max()) <= 4.0 + 0.2 and float(angles.abs().max()) > 3.5
    assert float(angles.min()) < -2 and float(angles.max()) > 2
    assert torch.allclose(torch.hypot(cy, cx), torch.full_like(cy, 8.0), atol=0.3)
    assert math.isclose(float(mass.mean()), 1.0, abs_tol=0.05)  # bilinear keeps the spot's mass
    flat = torch.full((4, 1, 28, 28), -0.81)
    assert torch.allclose(data.Split.rotate(flat, torch.Generator().manual_seed(1), 4.0), flat)


def test_fashion_mnist_download_goes_through_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    calls = []
    monkeypatch.setattr(tvd, "FashionMNIST", lambda root, train, download: calls.append((root, train, download)))
    data.download("fashion_mnist", tmp_path / "dl")
    assert calls == [(str(tmp_path / "dl"), True, True), (str(tmp_path / "dl"), False, True)]


_FASHION = data.FASHION_MNIST_SYSTEM_DIR


@pytest.mark.skipif(not (_FASHION / "train-images-idx3-ubyte.gz").exists(),
                    reason=f"Debian's dataset-fashion-mnist is not installed ({_FASHION})")
def test_real_fashion_mnist_from_the_debian_package(tmp_path):
    from pruning import masks, models
    from pruning import train as T

    train, test = data.load("fashion_mnist", root=tmp_path)  # an empty root: Debian's copy is read
    assert (len(train), len(test)) == (60_000, 10_000) and train.num_classes == 10
    assert torch.bincount(train.y, minlength=10).tolist() == [6000] * 10
    assert torch.bincount(test.y, minlength=10).tolist() == [1000] * 10
    x = train.x.float() / 255
    assert float(x.mean()) == pytest.approx(0.2860, abs=5e-5) and float(x.std()) == pytest.approx(0.3530, abs=5e-5)
    T.seed_everything(0)
    model = models.build("lenet300100", input_shape=train.input_shape, num_classes=train.num_classes)
    assert masks.count_prunable(model) == 266_200
    # one epoch of plain SGD: ~2 s on one thread (two OpenMP threads on the shared 2-core machine took
    # 16 s under load); 83–84% over seeds 0–2
    cfg = T.TrainConfig(epochs=1, batch_size=100, lr=0.1, momentum=0.0, eval_every=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = T.train(model, train, test, cfg, seed=0)
    finally:
        torch.set_num_threads(threads)
    assert result.status == "ok" and result.test_acc >= 0.80
