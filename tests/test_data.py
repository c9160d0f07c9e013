"""Data sets: the real loaders read tiny files written here in the exact on-disk formats."""

import pickle
import struct

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
