"""Train and export a small CNN for Fashion-MNIST: a real, labelled 28x28 model for PTQ accuracy tests.

Data: Zalando's Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017; MIT licence) as shipped by the
Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist/*.gz``, IDX
files): 60,000 training and 10,000 test 28x28 grey-scale images of clothing, labels 0-9.
Pixels (integers 0..255) are scaled to [0, 1] by dividing by 255.

Splits (all deterministic):

- the 60,000 training images are permuted with ``numpy.random.default_rng(0)``; the first
  1,000 of that permutation are the *calibration slice* (never trained on), the other
  59,000 train the model;
- the 10,000 test images are never seen in training or calibration; the shipped test set is
  the first 1,000 of them, in file order.

Model (input ``[1, 1, 28, 28]`` float32, output ``[1, 10]`` logits)::

    stem   Conv(1->16, 3x3, pad 1)                 + BN + ReLU    16x28x28
    down   Conv(16->32, 3x3, pad 1, stride 2)      + BN + ReLU6   32x14x14  (= r)
    dw     Conv(32->32, 3x3, pad 1, groups 32)     + BN + ReLU    32x14x14
    pw     Conv(32->32, 1x1)                       + BN + ReLU    32x14x14
    add    r + pw                                                  32x14x14
    down2  Conv(32->64, 3x3, pad 1, stride 2)      + BN + ReLU    64x7x7
    GlobalAveragePool -> Flatten -> Linear(64->10)

The export follows ``scripts/train_digits.py``: TorchScript exporter, opset 13, eval mode,
constant folding off so the BatchNormalization nodes stay, batch fixed to 1.

Outputs (overwritten on each run)::

    qpass/data/fashion_cnn.onnx   the float model
    qpass/data/fashion_test.npz   images uint8 [1000,1,28,28] + labels int64 (test split),
                                  calib_images uint8 [256,1,28,28] + calib_labels int64
                                  (the first 256 of the calibration slice, from the training split)

Run from the repository root (needs torch, onnx, onnxruntime and the Debian package)::

    python scripts/train_fashion.py

Training is deterministic (fixed seed, single thread, deterministic kernels).
"""

from __future__ import annotations

import argparse
import gzip
import os
import time
from pathlib import Path

import sys

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_digits import describe_onnx, onnx_accuracy, seed_everything  # noqa: E402  (the same steps as digits)

SEED = 0
CALIBRATION_SLICE = 1000
SHIPPED_TEST = 1000
SHIPPED_CALIBRATION = 256
EPOCHS = 8
BATCH_SIZE = 128
LR = 4e-3
WEIGHT_DECAY = 1e-4
OPSET = 13

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "qpass" / "data"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip'd, as the Debian package ships it) as a numpy array of its dimensions."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic = int.from_bytes(raw[:4], "big")
    if magic >> 8 != 0x08:                          # 0x08: unsigned bytes
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {magic:#x})")
    ndim = magic & 0xFF
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_split(kind: str, directory: Path = DEBIAN_DIR) -> tuple[np.ndarray, np.ndarray]:
    """`kind` "train" or "t10k": (images uint8 [N,1,28,28], labels int64 [N])."""
    images = read_idx(directory / f"{kind}-images-idx3-ubyte.gz")[:, None]
    labels = read_idx(directory / f"{kind}-labels-idx1-ubyte.gz").astype(np.int64)
    return np.ascontiguousarray(images), labels


def split_training(images: np.ndarray, labels: np.ndarray):
    """(train images, train labels, calibration images, calibration labels): a seeded permutation,
    the first CALIBRATION_SLICE of it kept out of training for calibration."""
    order = np.random.default_rng(SEED).permutation(len(images))
    calib, train = order[:CALIBRATION_SLICE], order[CALIBRATION_SLICE:]
    return images[train], labels[train], images[calib], labels[calib]


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [0, 1], the model's input."""
    return (images.astype(np.float32) / 255.0)


def build_model():
    import torch
    from torch import nn

    def block(cin, cout, act, **kw):
        return nn.Sequential(nn.Conv2d(cin, cout, kw.pop("k", 3), bias=False, **kw), nn.BatchNorm2d(cout), act())

    class FashionCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = block(1, 16, nn.ReLU, padding=1)
            self.down = block(16, 32, nn.ReLU6, stride=2, padding=1)
            self.dw = block(32, 32, nn.ReLU, padding=1, groups=32)
            self.pw = block(32, 32, nn.ReLU, k=1)
            self.down2 = block(32, 64, nn.ReLU, stride=2, padding=1)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            r = self.down(self.stem(x))
            x = self.pw(self.dw(r)) + r
            x = self.pool(self.down2(x))
            return self.fc(torch.flatten(x, 1))

    return FashionCNN()


def train(model, x_tr, y_tr, *, epochs: int = EPOCHS, verbose: bool = True):
    import torch
    from torch import nn

    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    gen = torch.Generator().manual_seed(SEED)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    steps_per_epoch = (len(xt) + BATCH_SIZE - 1) // BATCH_SIZE
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        total, correct, loss_sum = 0, 0, 0.0
        for i in range(0, len(xt), BATCH_SIZE):
            idx = perm[i: i + BATCH_SIZE]
            xb, yb = xt[idx], yt[idx]
            # light augmentation: a shift by up to 2 pixels and a horizontal flip, per batch
            dy, dx, flip = torch.randint(-2, 3, (2,), generator=gen).tolist() + [
                int(torch.randint(0, 2, (1,), generator=gen))]
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            if flip:
                xb = torch.flip(xb, dims=(3,))
            opt.zero_grad()
            out = model(xb)
            loss = loss_fn(out, yb)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += (out.argmax(1) == yb).sum().item()
            total += len(idx)
        if verbose:
            print(f"epoch {epoch + 1:3d}  loss {loss_sum / total:.4f}  train acc {correct / total:.4f}", flush=True)
    model.eval()
    return model


def torch_accuracy(model, x, y) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(torch.from_numpy(x[i: i + 1000])).argmax(1) for i in range(0, len(x), 1000)])
    return float((pred.numpy() == y).mean())


def export_onnx(model, path: Path) -> None:
    import torch

    model.eval()
    torch.onnx.export(
        model, (torch.zeros(1, 1, 28, 28, dtype=torch.float32),), str(path),
        input_names=["input"], output_names=["logits"], opset_version=OPSET, dynamo=False,
        # Constant folding would also fuse Conv+BatchNorm; qpass has its own pass for that.
        do_constant_folding=False, training=torch.onnx.TrainingMode.EVAL, export_params=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=DATA_DIR,
                        help="where to write fashion_cnn.onnx and fashion_test.npz (default: qpass/data)")
    parser.add_argument("--data", type=Path, default=DEBIAN_DIR, help="folder of the four IDX .gz files")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    args = parser.parse_args(argv)

    seed_everything(SEED)
    train_images, train_labels = load_split("train", args.data)
    test_images, test_labels = load_split("t10k", args.data)
    x_tr, y_tr, calib_images, calib_labels = split_training(train_images, train_labels)
    print(f"fashion-mnist: {len(x_tr)} train / {len(calib_images)} calibration (from train) / "
          f"{len(test_images)} test images")

    model = build_model()
    print(f"model parameters: {sum(p.numel() for p in model.parameters())}")
    t0 = time.perf_counter()
    train(model, to_float(x_tr), y_tr, epochs=args.epochs)
    print(f"training time: {time.perf_counter() - t0:.1f} s")

    acc_torch = torch_accuracy(model, to_float(test_images), test_labels)
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path, npz_path = out_dir / "fashion_cnn.onnx", out_dir / "fashion_test.npz"
    export_onnx(model, onnx_path)
    np.savez_compressed(npz_path, images=test_images[:SHIPPED_TEST], labels=test_labels[:SHIPPED_TEST],
                        calib_images=calib_images[:SHIPPED_CALIBRATION],
                        calib_labels=calib_labels[:SHIPPED_CALIBRATION])
    ops = describe_onnx(onnx_path)
    if "BatchNormalization" not in ops:
        raise SystemExit("export folded BatchNormalization away; expected BN nodes")
    shipped = to_float(test_images[:SHIPPED_TEST])
    acc_ort = onnx_accuracy(onnx_path, shipped, test_labels[:SHIPPED_TEST])

    print("ONNX ops: " + ", ".join(f"{k} x{v}" for k, v in sorted(ops.items())))
    print(f"wrote {onnx_path} ({os.path.getsize(onnx_path)} bytes)")
    print(f"wrote {npz_path} ({os.path.getsize(npz_path)} bytes)")
    print(f"test accuracy (torch, all {len(test_images)} test images): {acc_torch:.4f}")
    print(f"test accuracy (onnxruntime, shipped {SHIPPED_TEST}):        {acc_ort:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
