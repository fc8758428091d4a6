"""Train and export qpass's bundled default model: a small CNN for 8x8 digits.

Data: scikit-learn's ``load_digits`` -- 1,797 real 8x8 grey-scale handwritten
digits (labels 0-9), the test portion of the UCI "Optical Recognition of
Handwritten Digits" (optdigits) data set.  Pixels (integers 0..16) are scaled
to [0, 1] by dividing by 16.  A fixed, stratified 75% / 25% train / test split
(``random_state=0``) is used; the 25% test split is never seen in training.

Model (input ``[1, 1, 8, 8]`` float32, output ``[1, 10]`` logits)::

    stem   Conv(1->16, 3x3, pad 1)                 + BN + ReLU    16x8x8
    down   Conv(16->32, 3x3, pad 1, stride 2)      + BN + ReLU6   32x4x4  (= r)
    dw     Conv(32->32, 3x3, pad 1, groups 32)     + BN + ReLU    32x4x4
    pw     Conv(32->32, 1x1)                       + BN + ReLU    32x4x4
    add    r + pw                                                  32x4x4
    GlobalAveragePool -> Flatten -> Linear(32->10)

Convolutions have no bias (as usual before a BatchNorm).  The model is exported
with the TorchScript ONNX exporter at opset 13, in eval mode, with constant
folding off so that the BatchNormalization nodes stay in the graph (qpass has
its own pass that folds them).  The batch dimension is fixed to 1.

Outputs (overwritten on each run)::

    qpass/data/digits_cnn.onnx   the float model
    qpass/data/digits_test.npz   images float32 [N,1,8,8], labels int64 [N]

Run from the repository root (needs torch, scikit-learn, onnx, onnxruntime)::

    python scripts/train_digits.py

Training is deterministic (fixed seed, single thread, deterministic kernels)
and takes a few seconds on a CPU.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

import numpy as np

SEED = 0
TEST_SIZE = 0.25
EPOCHS = 60
BATCH_SIZE = 32
LR = 3e-3
WEIGHT_DECAY = 1e-4
OPSET = 13

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "qpass" / "data"


def load_data():
    """Return (x_train, y_train, x_test, y_test); x float32 [N,1,8,8] in [0,1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=TEST_SIZE, stratify=y, random_state=SEED
    )
    return (
        np.ascontiguousarray(x_tr, dtype=np.float32),
        np.ascontiguousarray(y_tr, dtype=np.int64),
        np.ascontiguousarray(x_te, dtype=np.float32),
        np.ascontiguousarray(y_te, dtype=np.int64),
    )


def build_model():
    import torch
    from torch import nn

    class DigitsCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(
                nn.Conv2d(1, 16, 3, padding=1, bias=False),
                nn.BatchNorm2d(16),
                nn.ReLU(),
            )
            self.down = nn.Sequential(
                nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(32),
                nn.ReLU6(),
            )
            self.dw = nn.Sequential(
                nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False),
                nn.BatchNorm2d(32),
                nn.ReLU(),
            )
            self.pw = nn.Sequential(
                nn.Conv2d(32, 32, 1, bias=False),
                nn.BatchNorm2d(32),
                nn.ReLU(),
            )
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(32, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stem(x)
            r = self.down(x)
            x = self.pw(self.dw(r))
            x = x + r
            x = self.pool(x)
            x = torch.flatten(x, 1)
            return self.fc(x)

    return DigitsCNN()


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def train(model, x_tr, y_tr, *, epochs: int = EPOCHS, verbose: bool = True):
    import torch
    from torch import nn

    xt = torch.from_numpy(x_tr)
    yt = torch.from_numpy(y_tr)
    gen = torch.Generator().manual_seed(SEED)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    steps_per_epoch = (len(xt) + BATCH_SIZE - 1) // BATCH_SIZE
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=LR, total_steps=epochs * steps_per_epoch
    )
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        total, correct, loss_sum = 0, 0, 0.0
        for i in range(0, len(xt), BATCH_SIZE):
            idx = perm[i : i + BATCH_SIZE]
            xb, yb = xt[idx], yt[idx]
            # light augmentation: random shift by up to 1 pixel
            dy, dx = torch.randint(-1, 2, (2,), generator=gen).tolist()
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            opt.zero_grad()
            out = model(xb)
            loss = loss_fn(out, yb)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += (out.argmax(1) == yb).sum().item()
            total += len(idx)
        if verbose and (epoch + 1) % 10 == 0:
            print(
                f"epoch {epoch + 1:3d}  loss {loss_sum / total:.4f}  "
                f"train acc {correct / total:.4f}"
            )
    model.eval()
    return model


def torch_accuracy(model, x, y) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((pred == y).mean())


def export_onnx(model, path: Path) -> None:
    import torch

    model.eval()
    dummy = torch.zeros(1, 1, 8, 8, dtype=torch.float32)
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        opset_version=OPSET,
        dynamo=False,
        # Constant folding would also run the eval "peephole" that fuses
        # Conv+BatchNorm; keep BN nodes so qpass's own fold pass has work.
        do_constant_folding=False,
        training=torch.onnx.TrainingMode.EVAL,
        export_params=True,
    )


def onnx_accuracy(path: Path, x, y) -> float:
    """Accuracy of the exported file under onnxruntime, one image at a time."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    correct = 0
    for i in range(len(x)):
        (logits,) = sess.run(["logits"], {"input": x[i : i + 1]})
        correct += int(logits.argmax() == y[i])
    return correct / len(x)


def describe_onnx(path: Path) -> dict[str, int]:
    import onnx

    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    counts: dict[str, int] = {}
    for node in m.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out-dir", type=Path, default=DATA_DIR,
        help="where to write digits_cnn.onnx and digits_test.npz "
        "(default: qpass/data)",
    )
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    args = parser.parse_args(argv)

    seed_everything(SEED)
    x_tr, y_tr, x_te, y_te = load_data()
    print(f"digits: {len(x_tr)} train / {len(x_te)} test images")

    model = build_model()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model parameters: {n_params}")

    t0 = time.perf_counter()
    train(model, x_tr, y_tr, epochs=args.epochs)
    train_s = time.perf_counter() - t0
    print(f"training time: {train_s:.1f} s")

    acc_torch = torch_accuracy(model, x_te, y_te)

    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "digits_cnn.onnx"
    npz_path = out_dir / "digits_test.npz"
    export_onnx(model, onnx_path)
    np.savez_compressed(npz_path, images=x_te, labels=y_te)

    ops = describe_onnx(onnx_path)
    if "BatchNormalization" not in ops:
        raise SystemExit("export folded BatchNormalization away; expected BN nodes")
    acc_ort = onnx_accuracy(onnx_path, x_te, y_te)

    print("ONNX ops: " + ", ".join(f"{k} x{v}" for k, v in sorted(ops.items())))
    print(f"wrote {onnx_path} ({os.path.getsize(onnx_path)} bytes)")
    print(f"wrote {npz_path} ({os.path.getsize(npz_path)} bytes)")
    print(f"test accuracy (torch):       {acc_torch:.4f}")
    print(f"test accuracy (onnxruntime): {acc_ort:.4f}  ({len(x_te)} images)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
