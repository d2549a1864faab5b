"""The ``checkpoint`` case: what a checkpoint after every epoch costs a long run.

``gradcore train``'s network and data (breast cancer, 30-16-1, batches of 32, validation and
accuracy after every epoch) trained for 4,000 epochs with ``fit``, once without a checkpoint
and once with one, side by side in this process. A checkpoint costs O(parameters) per epoch
(the history goes to an append-only sidecar), so the ratio stays near 1 however long the run;
the target is at most 1.3x. ``python -m bench.checkpoint_cost [--epochs N] [--device D]``.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import gradcore as gc
from bench.harness import mark_target
from gradcore.cli import _load

TARGET_RATIO = 1.3
EPOCHS = 4000


def _train_seconds(epochs: int, device: str, checkpoint: Path | None) -> float:
    """Wall seconds of one ``fit`` call, checkpoint writes included."""
    X_train, X_test, y_train, y_test = _load("breast-cancer")  # noqa: N806 - data matrices
    params = gc.nn.init_mlp([X_train.shape[1], 16, 1], seed=0, device=device)

    def loss(params: Any, xb: Any, yb: Any) -> Any:
        return gc.nn.binary_cross_entropy_with_logits(gc.nn.mlp(params, xb), yb)

    def accuracy(params: Any, X: Any, y: Any) -> float:  # noqa: N803
        return gc.nn.accuracy(gc.nn.mlp(params, X), y)

    started = time.perf_counter()
    gc.train.fit(
        loss, params, X_train, y_train, optimizer=gc.optim.SGD(0.1, momentum=0.9),
        epochs=epochs, device=device, validation_data=(X_test, y_test),
        metrics={"accuracy": accuracy}, progress=False, checkpoint=checkpoint,
    )  # fmt: skip
    return time.perf_counter() - started


def run(
    device: str = "cpu", quick: bool = False, epochs: int | None = None, repeat: int = 2
) -> dict[str, Any]:
    """Both runs, alternating, ``repeat`` times (once, a tenth of the epochs, under ``quick``);
    the ratio of the fastest with a checkpoint to the fastest without."""
    epochs = epochs or (EPOCHS // 10 if quick else EPOCHS)
    without, with_checkpoint = math.inf, math.inf
    for _ in range(1 if quick else repeat):
        without = min(without, _train_seconds(epochs, device, None))
        with tempfile.TemporaryDirectory() as folder:
            seconds = _train_seconds(epochs, device, Path(folder) / "run.npz")
            with_checkpoint = min(with_checkpoint, seconds)
    ratio = with_checkpoint / without
    rows = [
        {"case": f"{epochs} epochs", "impl": impl, "median_s": s, "min_s": s, "ratio": r}
        for impl, s, r in (("no checkpoint", without, 1.0), ("checkpoint", with_checkpoint, ratio))
    ]
    mark_target(rows[1], f"<= {TARGET_RATIO}x", ratio <= TARGET_RATIO, f"{ratio:.2f}x")
    notes = [
        f"fit on breast cancer (gradcore train's network), device {device}, the fastest of "
        f"{1 if quick else repeat} alternating runs each"
    ]
    return {"suite": "checkpoint", "reference": "no checkpoint", "rows": rows, "notes": notes}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.checkpoint_cost", description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--repeat", type=int, default=2, help="alternating runs of each")
    args = parser.parse_args()
    result = run(args.device, epochs=args.epochs, repeat=args.repeat)
    without, with_checkpoint = (row["median_s"] for row in result["rows"])
    print(
        f"{args.epochs} epochs on {args.device}: {without:.2f} s without a checkpoint, "
        f"{with_checkpoint:.2f} s with one: ratio {with_checkpoint / without:.2f} "
        f"(target <= {TARGET_RATIO})"
    )


if __name__ == "__main__":
    main()
