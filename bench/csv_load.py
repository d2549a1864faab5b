"""The ``csv`` suite: reading a data file for ``gradcore train --data FILE``, beside np.loadtxt.

A 200,000 x 31 CSV (a header, 30 decimal features, an integer class label: about 59 MB) is
written to a temporary folder and read by ``gradcore.datafiles.read_dataset`` (NumPy's C reader
in one pass, the column names, the target and its task) and by a bare ``np.loadtxt`` of the
same file into one float64 matrix, alternating, the fastest of 3 each. Targets: at most 2x
``np.loadtxt``'s time, and a peak of at most 3x the file's size (tracemalloc, to which NumPy
reports its buffers, in a separate untimed read). ``python -m bench.csv_load [--rows N]``.
"""

# ruff: noqa: N806 - X is a data matrix

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import mark_target, peak_cpu_bytes
from gradcore import datafiles

ROWS, FEATURES = 200_000, 30
TIME_TARGET, MEMORY_TARGET = 2.0, 3.0  # x np.loadtxt's time, x the file's size


def write_csv(path: Path, rows: int) -> Path:
    """Features like measurements (six decimals) and a 0/1 label, seeded."""
    rng = np.random.default_rng(0)
    X = rng.normal(scale=10.0, size=(rows, FEATURES))
    y = (X[:, 0] > 0).astype(int)
    with path.open("w") as file:
        file.write(",".join([f"f{i}" for i in range(FEATURES)] + ["label"]) + "\n")
        np.savetxt(file, np.column_stack([X, y]), delimiter=",", fmt=["%.6f"] * FEATURES + ["%d"])
    return path


def readers(path: Path) -> dict[str, Callable[[], Any]]:
    return {
        "np.loadtxt": lambda: np.loadtxt(path, delimiter=",", skiprows=1),
        "gradcore read_dataset": lambda: datafiles.read_dataset(path),
    }


def run(device: str = "cpu", quick: bool = False, rows: int | None = None) -> dict[str, Any]:
    """Time and peak memory of both readers on one file (a tenth of the rows under ``quick``).
    The file is read on the host whatever ``device``: it is not a device benchmark."""
    rows = rows or (ROWS // 10 if quick else ROWS)
    repeat = 1 if quick else 3
    with tempfile.TemporaryDirectory() as folder:
        path = write_csv(Path(folder) / "data.csv", rows)
        size = path.stat().st_size
        read = readers(path)
        data, reference = read["gradcore read_dataset"](), read["np.loadtxt"]()
        np.testing.assert_array_equal(data.X, reference[:, :-1])  # both read the same numbers
        np.testing.assert_array_equal(data.y, reference[:, -1])
        del data, reference
        seconds = {name: math.inf for name in read}
        for _ in range(repeat):
            for name, reader in read.items():
                started = time.perf_counter()
                reader()
                seconds[name] = min(seconds[name], time.perf_counter() - started)
        peaks = {name: peak_cpu_bytes(reader) for name, reader in read.items()}
    case = f"{rows} x {FEATURES + 1} CSV, {size / 1e6:.0f} MB"
    table = []
    for name in read:
        ratio = seconds[name] / seconds["np.loadtxt"]
        row = {
            "case": case,
            "impl": name,
            "median_s": seconds[name],
            "min_s": seconds[name],
            "ratio": ratio,
            "peak_bytes": peaks[name],
            "file_bytes": size,
        }
        if name != "np.loadtxt":
            memory = peaks[name] / size
            mark_target(
                row,
                f"<= {TIME_TARGET:g}x time, <= {MEMORY_TARGET:g}x file size peak",
                ratio <= TIME_TARGET and memory <= MEMORY_TARGET,
                f"{ratio:.2f}x time, {memory:.2f}x file size peak",
            )
        table.append(row)
    notes = [
        f"the fastest of {repeat} alternating reads each; peak memory by tracemalloc in a "
        f"separate read: np.loadtxt {peaks['np.loadtxt'] / 1e6:.0f} MB, read_dataset "
        f"{peaks['gradcore read_dataset'] / 1e6:.0f} MB for a {size / 1e6:.0f} MB file"
    ]
    return {"suite": "csv", "reference": "np.loadtxt", "rows": table, "notes": notes}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.csv_load", description=__doc__)
    parser.add_argument("--rows", type=int, default=ROWS)
    args = parser.parse_args()
    result = run(rows=args.rows)
    for row in result["rows"]:
        print(
            f"{row['impl']:>22}: {row['min_s']:.2f} s ({row['ratio']:.2f}x), peak "
            f"{row['peak_bytes'] / 1e6:.0f} MB ({row['peak_bytes'] / row['file_bytes']:.2f}x the "
            f"{row['file_bytes'] / 1e6:.0f} MB file)"
        )


if __name__ == "__main__":
    main()
