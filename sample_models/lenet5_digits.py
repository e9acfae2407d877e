"""Train LeNet-5 on scikit-learn's bundled 8x8 digits and export it to ONNX.

The network is the classic LeNet-5 of Table 10 in "Towards Generalized
Entropic Sparsification for CNNs":

    input 1x32x32
    conv 6@5x5  -> ReLU -> MaxPool 2
    conv 16@5x5 -> ReLU -> MaxPool 2
    Flatten (16*5*5 = 400)
    fc 120 -> ReLU -> fc 84 -> ReLU -> fc 10

Data: ``sklearn.datasets.load_digits`` (1797 images, 8x8, values 0..16; the
data ships inside the scikit-learn package, nothing is downloaded), scaled to
[0, 1] and upscaled to 32x32 with bilinear interpolation
(``align_corners=False``).  After a seeded shuffle the first 1200 images are
used for training, the next 300 are the "calibration" part and the remaining
297 the "test" part.  Calibration + test (597 images) are written to
``digits_calib.npz`` so that a user can calibrate on part of it (``--holdout``)
and measure accuracy on the rest.

Everything is seeded and deterministic (single thread, deterministic
algorithms), so re-running the script reproduces the committed files up to
the usual cross-version floating-point differences.

Usage::

    python sample_models/lenet5_digits.py [--out-dir sample_models] [--epochs 40]

Requires ``torch`` and ``scikit-learn`` (both optional for onnxprune users);
they are imported inside ``main`` only.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np

SEED = 0
N_TRAIN = 1200
N_CALIB = 300  # the rest (297) is the test part


def load_digits_32(seed: int = SEED):
    """Return (images float32 [1797,1,32,32] in [0,1], labels int64, order).

    ``order`` is the seeded permutation applied to the sklearn sample order.
    Requires torch (bilinear upscaling) and scikit-learn.
    """
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]  # [N,1,8,8] in [0,1]
    y = d.target.astype(np.int64)
    with torch.no_grad():
        x32 = F.interpolate(torch.from_numpy(x), size=(32, 32), mode="bilinear",
                            align_corners=False).numpy()
    x32 = np.clip(x32, 0.0, 1.0).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(y))
    return x32[order], y[order], order


def build_lenet5():
    import torch.nn as nn

    class LeNet5(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 6, 5)
            self.conv2 = nn.Conv2d(6, 16, 5)
            self.pool = nn.MaxPool2d(2)
            self.relu = nn.ReLU()
            self.flatten = nn.Flatten()
            self.fc1 = nn.Linear(16 * 5 * 5, 120)
            self.fc2 = nn.Linear(120, 84)
            self.fc3 = nn.Linear(84, 10)

        def forward(self, x):
            x = self.pool(self.relu(self.conv1(x)))   # 6x14x14
            x = self.pool(self.relu(self.conv2(x)))   # 16x5x5
            x = self.flatten(x)                       # 400
            x = self.relu(self.fc1(x))
            x = self.relu(self.fc2(x))
            return self.fc3(x)

    return LeNet5()


def main(argv=None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", default=here, help="where to write the .onnx and .npz")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args(argv)

    import torch
    import torch.nn as nn

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    t0 = time.time()
    x, y, _ = load_digits_32(args.seed)
    x_tr, y_tr = x[:N_TRAIN], y[:N_TRAIN]
    x_ca, y_ca = x[N_TRAIN:N_TRAIN + N_CALIB], y[N_TRAIN:N_TRAIN + N_CALIB]
    x_te, y_te = x[N_TRAIN + N_CALIB:], y[N_TRAIN + N_CALIB:]

    model = build_lenet5()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    loss_fn = nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    gen = torch.Generator().manual_seed(args.seed)
    bs = 32

    def accuracy(xs, ys):
        model.eval()
        with torch.no_grad():
            pred = model(torch.from_numpy(xs)).argmax(1).numpy()
        return float((pred == ys).mean())

    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(yt), generator=gen)
        total = 0.0
        for i in range(0, len(yt), bs):
            idx = perm[i:i + bs]
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        if (epoch + 1) % 10 == 0 or epoch == args.epochs - 1:
            print(f"epoch {epoch + 1:3d}  loss {total / len(yt):.4f}  "
                  f"calib acc {accuracy(x_ca, y_ca):.4f}")

    model.eval()
    acc_tr, acc_ca, acc_te = accuracy(x_tr, y_tr), accuracy(x_ca, y_ca), accuracy(x_te, y_te)
    print(f"train accuracy {acc_tr:.4f} ({len(y_tr)} images)")
    print(f"calib accuracy {acc_ca:.4f} ({len(y_ca)} images)")
    print(f"test  accuracy {acc_te:.4f} ({len(y_te)} images)")

    os.makedirs(args.out_dir, exist_ok=True)
    onnx_path = os.path.join(args.out_dir, "lenet5_digits.onnx")
    npz_path = os.path.join(args.out_dir, "digits_calib.npz")
    with warnings.catch_warnings():  # the legacy exporter warns that it is legacy
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, (torch.from_numpy(x_te[:1]),), onnx_path,
            dynamo=False, opset_version=13, do_constant_folding=True,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        )
    x_cal = np.ascontiguousarray(np.concatenate([x_ca, x_te]), dtype=np.float32)
    y_cal = np.concatenate([y_ca, y_te]).astype(np.int64)
    np.savez_compressed(npz_path, input=x_cal, label=y_cal)

    # Sanity check of the exported file with onnxruntime (if available).
    try:
        import onnx
        import onnxruntime as ort

        onnx.checker.check_model(onnx.load(onnx_path), full_check=True)
        sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        logits = sess.run(["logits"], {"input": x_cal})[0]
        with torch.no_grad():
            ref = model(torch.from_numpy(x_cal)).numpy()
        acc = float((logits.argmax(1) == y_cal).mean())
        print(f"onnxruntime accuracy on digits_calib.npz {acc:.4f} ({len(y_cal)} images), "
              f"max |ort - torch| {np.abs(logits - ref).max():.2e}")
    except ImportError:  # pragma: no cover
        pass

    for p in (onnx_path, npz_path):
        print(f"wrote {p} ({os.path.getsize(p) / 1024:.1f} KiB)")
    print(f"done in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
