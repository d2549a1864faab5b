"""Benchmark output: a run as JSON, a Markdown table and a PNG chart; the README's block.

A run is named by device and machine (``cpu-amd-epyc-7b13-2-cores.json``), so a new run on the
same machine replaces the old one and runs on other machines sit beside it. The README's
performance section is generated from the committed runs, never typed by hand::

    python -m bench.report --readme README.md       # rewrite the block between the markers
    python -m bench.report --out section.md         # or write the block to a file
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).parent / "results"
REPO_ROOT = Path(__file__).parent.parent
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def run_name(run: dict[str, Any]) -> str:
    """``{device}-{machine}``, the machine being the GPU on "cuda" and the CPU otherwise."""
    machine = run["machine"]
    if run["device"] == "cuda" and machine.get("gpu"):
        described = machine["gpu"]
    else:
        described = f"{machine['cpu']} {machine['cores']} cores"
    slug = re.sub(r"[^a-z0-9]+", "-", described.lower()).strip("-")
    return f"{run['device']}-{slug}" + ("-quick" if run.get("quick") else "")


def describe_load(run: dict[str, Any]) -> str:
    """The 1-minute load average over the run: what else competed for the cores."""
    loads = [x for suite in run["suites"] for x in suite.get("load_average", []) if x is not None]
    if not loads:
        return ""
    return (
        f"1-minute load average {loads[0]:.2f} at the start, at most {max(loads):.2f} "
        f"(the suite itself keeps up to {run['machine']['cores']} cores busy)."
    )


def describe_machine(run: dict[str, Any]) -> str:
    m = run["machine"]
    text = f"{m['cpu']}, {m['cores']} cores, BLAS {m['blas']}"
    if run["device"] == "cuda":
        text += f", GPU {m.get('gpu') or 'unknown'}"
    versions = ", ".join(f"{k} {v}" for k, v in run.get("versions", {}).items())
    return f"{text}; Python {m['python']}, NumPy {m['numpy']}" + (
        f", {versions}" if versions else ""
    )


# ---------------------------------------------------------------------------------------------
# formatting


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    if value < 1e-3:
        return f"{value * 1e6:.1f} µs"
    if value < 1.0:
        return f"{value * 1e3:.2f} ms"
    return f"{value:.2f} s"


def _cell(key: str, value: Any) -> str:
    if value is None:
        return ""
    if key.endswith("_s"):
        return _seconds(value)
    if key.endswith("_bytes"):
        return f"{value / 2**20:.2f} MiB"
    if key == "ratio":
        return f"{value:.2f}x"
    if key == "met":
        return "met" if value else "**missed**"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


BASE_COLUMNS = ["case", "impl", "median_s", "min_s", "ratio"]
HIDDEN_COLUMNS = {"batch"}  # already part of the case's name


def suite_table(suite: dict[str, Any]) -> str:
    """Every row of a suite, with whatever extra metrics its rows carry."""
    rows = suite["rows"]
    extra = [k for row in rows for k in row if k not in BASE_COLUMNS and k not in HIDDEN_COLUMNS]
    columns = BASE_COLUMNS + list(dict.fromkeys(extra))
    body = [[_cell(k, row.get(k)) for k in columns] for row in rows]
    return _table(columns, body)


def pivot_table(suite: dict[str, Any]) -> str:
    """Cases down, implementations across; each cell the ratio and the absolute figure."""
    # Rows with neither a ratio nor a figure (a suite's verdict rows) belong in the targets.
    rows = [r for r in suite["rows"] if r.get("ratio") is not None or r.get("median_s") is not None]
    impls = list(dict.fromkeys(row["impl"] for row in rows))
    cases = list(dict.fromkeys(row["case"] for row in rows))
    cells = {}
    for row in rows:
        absolute = (
            _cell("peak_bytes", row["peak_bytes"])
            if row.get("median_s") is None and "peak_bytes" in row
            else _seconds(row.get("median_s"))
        )
        ratio = row.get("ratio")
        if ratio is not None:
            cells[row["case"], row["impl"]] = f"{_cell('ratio', ratio)} ({absolute})"
        else:
            cells[row["case"], row["impl"]] = row.get("measured") or absolute
    body = [[case] + [cells.get((case, impl), "") for impl in impls] for case in cases]
    return _table(["case"] + impls, body)


def targets(run: dict[str, Any]) -> list[str]:
    """One line per row that carries a target: measured, target, met or missed."""
    lines = []
    for suite in run["suites"]:
        for row in suite["rows"]:
            if "target" in row:
                verdict = {True: "met", False: "**missed**", None: "not measured"}[row.get("met")]
                measured = row.get("measured") or _cell("ratio", row["ratio"])
                lines.append(
                    f"- {suite['suite']} · {row['case']} · {row['impl']}: {measured}, "
                    f"target {row['target']}: {verdict}"
                )
    return lines


def _suite_notes(suite: dict[str, Any]) -> str:
    return "\n".join(f"- {note}" for note in suite.get("notes", []))


def suite_markdown(suite: dict[str, Any]) -> str:
    """One suite: its full table, notes and targets (what a suite's own ``main`` prints too)."""
    reference = suite.get("reference")
    parts = [f"## {suite['suite']}" + (f" (ratios to {reference})" if reference else "")]
    if suite["rows"]:
        parts.append(suite_table(suite))
    if suite.get("notes"):
        parts.append(_suite_notes(suite))
    return "\n\n".join(parts)


def markdown(run: dict[str, Any]) -> str:
    """The whole run: machine, command, every suite's full table and notes, the targets."""
    parts = [
        f"# Benchmarks: {run['device']}, {run['machine']['date']}",
        f"{describe_machine(run)}\n\nCommand: `{run['command']}`. {describe_load(run)}",
    ]
    parts += [suite_markdown(suite) for suite in run["suites"]]
    if target_lines := targets(run):
        parts += ["## Targets", "\n".join(target_lines)]
    return "\n\n".join(parts) + "\n"


def plot(run: dict[str, Any], path: Path) -> bool:
    """A bar chart of every suite's ratios, one panel per suite; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        return False
    suites = [s for s in run["suites"] if any(r.get("ratio") is not None for r in s["rows"])]
    if not suites:
        return False
    fig, axes = plt.subplots(len(suites), 1, figsize=(10, 3.6 * len(suites)), squeeze=False)
    for ax, suite in zip(axes[:, 0], suites):
        rows = [r for r in suite["rows"] if r.get("ratio") is not None]
        impls = list(dict.fromkeys(r["impl"] for r in rows))
        cases = list(dict.fromkeys(r["case"] for r in rows))
        width = 0.8 / len(impls)
        for i, impl in enumerate(impls):
            ratios = {r["case"]: r["ratio"] for r in rows if r["impl"] == impl}
            positions = [c + i * width for c, case in enumerate(cases) if case in ratios]
            bars = ax.bar(positions, [ratios[c] for c in cases if c in ratios], width, label=impl)
            ax.bar_label(bars, fmt="%.2f", fontsize=6)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        labels = [case.replace(" ", "\n") for case in cases]
        ax.set_xticks([c + 0.4 - width / 2 for c in range(len(cases))], labels, fontsize=7)
        ax.set_ylabel(f"ratio to {suite.get('reference')}", fontsize=8)
        ax.set_title(f"{suite['suite']} ({run['device']})", fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle(f"{describe_machine(run).split(';')[0]}, {run['machine']['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_run(run: dict[str, Any], out_dir: Path) -> list[Path]:
    """``<name>.json``, ``<name>.md`` and ``<name>.png`` under ``out_dir``; the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / run_name(run)
    written = [base.with_suffix(".json"), base.with_suffix(".md")]
    written[0].write_text(json.dumps(run, indent=1) + "\n")
    written[1].write_text(markdown(run))
    if plot(run, base.with_suffix(".png")):
        written.append(base.with_suffix(".png"))
    return written


# ---------------------------------------------------------------------------------------------
# the README block


def committed_runs(results_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every full (not ``--quick``) run saved in ``results_dir``, CPU runs first."""
    runs = [(p, json.loads(p.read_text())) for p in sorted(results_dir.glob("*.json"))]
    # Other JSON files may sit beside the runs (a single suite's own output): skip them.
    runs = [(p, run) for p, run in runs if "suites" in run and not run.get("quick")]
    return sorted(runs, key=lambda item: (item[1]["device"] != "cpu", item[0].name))


def readme_section(results_dir: Path = RESULTS_DIR, link_from: Path = REPO_ROOT) -> str:
    """The performance section, from committed results; links are relative to ``link_from``."""
    parts = [
        START,
        "<!-- generated by `python -m bench.report --readme README.md` from bench/results/; "
        "edit there, not here -->",
    ]
    runs = committed_runs(results_dir)
    if not runs:
        parts.append("No benchmark results are committed yet: run `python -m bench`.")
    for path, run in runs:
        parts.append(f"### {run['device'].upper()}: {describe_machine(run)}")
        parts.append(
            f"Measured {run['machine']['date']} with `{run['command']}`. Each cell is the ratio "
            "to the suite's reference (of times: the median over rounds of each round's ratio), "
            "with the absolute median (or peak) in brackets. "
            "In the mlp suite each peer runs in a process of its own, timed in turn with the "
            "others idle, and is checked against the same step timed alone; the other suites "
            f"time their implementations side by side in one process. {describe_load(run)}"
        )
        for suite in run["suites"]:
            reference = suite.get("reference")
            parts.append(
                f"**{suite['suite']}**" + (f" (ratio to {reference})" if reference else "")
            )
            if suite["rows"]:
                parts.append(pivot_table(suite))
            if suite.get("notes"):
                parts.append(_suite_notes(suite))
        if target_lines := targets(run):
            parts += ["**Targets**", "\n".join(target_lines)]
        png = path.with_suffix(".png")
        if png.exists():
            link = Path(os.path.relpath(png.resolve(), link_from.resolve())).as_posix()
            parts.append(f"![{run['device']} benchmark ratios]({link})")
    if not any(run["device"] == "cuda" for _, run in runs):
        parts.append(
            "### GPU: not yet measured\n\nNo GPU run is committed: GPU figures have not been "
            "measured yet. `bash bench/gpu_run.sh` on a GPU machine writes them (the `gpu` suite: "
            "the fused sigmoid as a share of memory bandwidth, gradcore's jitted step against "
            "PyTorch CUDA eager at batch 32 to 4096), and this section then shows them with the "
            "device's name."
        )
    parts.append(END)
    return "\n\n".join(parts) + "\n"


def update_readme(readme: Path, section: str) -> None:
    """Replace the block between the markers in ``readme``; both markers must be there."""
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(
            f"{readme}: add the lines {START} and {END} where the performance section goes"
        )
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    readme.write_text(head + section.rstrip("\n") + tail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.report", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder of run JSONs")
    parser.add_argument("--readme", type=Path, help="README whose marked block to rewrite")
    parser.add_argument("--out", type=Path, help="write the block to this file instead")
    args = parser.parse_args(argv)
    if args.readme:
        update_readme(args.readme, readme_section(args.results, args.readme.parent))
        print(f"updated {args.readme}")
    if args.out:
        args.out.write_text(readme_section(args.results))
        print(f"wrote {args.out}")
    if not (args.readme or args.out):
        print(readme_section(args.results), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
