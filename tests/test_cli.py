"""The ``gradcore`` command, run as a user runs it: in a subprocess, with few epochs."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import run_gradcore

import gradcore as gc


def test_default_train_is_the_lecture_network_on_breast_cancer():
    result = run_gradcore("train", "--epochs", "5", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "breast-cancer: 455 training and 114 test examples" in result.stdout
    accuracy = float(re.search(r"test accuracy: ([0-9.]+)", result.stdout).group(1))
    assert accuracy >= 0.9
    assert result.stderr == ""


def test_digits_with_plot_checkpoint_and_resume(tmp_path):
    flags = ["--data", "digits", "--no-progress", "--checkpoint", "run.npz", "--nesterov"]
    first = run_gradcore("train", *flags, "--epochs", "2", "--plot", "curves.png", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "10 classes" in first.stdout and "trained 2 epochs" in first.stdout
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    resumed = run_gradcore("train", *flags, "--epochs", "3", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert re.search(r"trained 1 more epoch \(epochs 3-3\) in \d", resumed.stdout)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


def test_unknown_dataset_is_one_line_and_exit_2():
    result = run_gradcore("train", "--data", "mnist")
    assert result.returncode == 2
    assert "invalid choice: 'mnist'" in one_line_error(result)


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--epochs", "-1", "argument --epochs: must be a non-negative integer, got -1"),
        ("--seed", "-1", "argument --seed: must be a non-negative integer, got -1"),
        ("--lr", "0", "argument --lr: must be a positive number, got 0"),
        ("--batch-size", "0", "argument --batch-size: must be a positive integer, got 0"),
    ],
)
def test_bad_numbers_are_one_line_and_never_replaced_by_a_default(flag, value, message):
    assert message in one_line_error(run_gradcore("train", flag, value, "--no-progress"))


def test_version():
    result = run_gradcore("--version")
    assert result.returncode == 0 and result.stdout == f"gradcore {gc.__version__}\n"


def test_a_diverging_run_exits_non_zero_with_one_line():
    result = run_gradcore("train", "--lr", "1e6", "--no-progress")
    assert result.returncode == 1
    assert re.match(
        r"gradcore: error: fit: diverged at epoch 1/50, step \d+/15: the loss is .* more than "
        r"divergence_factor=1000 times the starting loss",
        one_line_error(result),
    )


def test_checkpoint_paths_are_checked_before_training(tmp_path):
    flags = ["train", "--epochs", "1", "--no-progress", "--checkpoint", "run.npz"]
    fresh = run_gradcore(*flags, "--resume", cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr
    assert "no checkpoint at run.npz yet: starting afresh" in fresh.stdout
    assert (
        "gradcore: error: --checkpoint run.npz exists: add --resume to continue from it, or "
        "give another --checkpoint path" in one_line_error(run_gradcore(*flags, cwd=tmp_path))
    )
    changed = run_gradcore(*flags, "--resume", "--epochs", "2", "--lr", "0.2", cwd=tmp_path)
    assert (
        "written with learning_rate=0.1 but this run has learning_rate=0.2; pass "
        "allow_changes=True (--allow-changes)" in one_line_error(changed)
    )
    allowed = run_gradcore(*flags, "--resume", "--epochs", "2", "--lr", "0.2", "--allow-changes",
                       cwd=tmp_path)  # fmt: skip
    assert "trained 1 more epoch (epochs 2-2)" in allowed.stdout
    (tmp_path / "run.npz").write_bytes(b"PK\x03\x04 cut short")
    corrupt = one_line_error(run_gradcore(*flags, "--resume", cwd=tmp_path))
    assert (
        "gradcore: error: checkpoint run.npz cannot be read: it is truncated or corrupt" in corrupt
    )
    plot = one_line_error(run_gradcore(*flags[:-2], "--plot", "no/such/dir/curves.png"))
    assert "gradcore: error: --plot no/such/dir/curves.png cannot be written" in plot
    assert "test accuracy" not in plot


def test_output_into_a_closed_pipe_ends_quietly():
    child = subprocess.Popen(
        [sys.executable, "-m", "gradcore", "train", "--epochs", "1", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    child.stdout.close()  # like `gradcore train | head -0`: nobody reads the output
    assert child.wait(timeout=120) == 1
    assert child.stderr.read() == ""


@pytest.mark.skipif("cuda" in gc.available_devices(), reason="a GPU answers here")
def test_cuda_unavailable_is_one_line():
    result = run_gradcore("train", "--device", "cuda")
    assert result.returncode == 1
    assert "gradcore: error: device 'cuda' is unavailable" in one_line_error(result)


def test_info_names_devices_versions_and_blas():
    result = run_gradcore("info")
    assert result.returncode == 0, result.stderr
    assert "device cpu: available" in result.stdout
    assert re.search(r"^numpy \d", result.stdout, re.MULTILINE)
    assert "BLAS" in result.stdout


@pytest.mark.parametrize(
    "flags", [["--patience", "0"], ["--test-split", "0"], ["--no-standardize"]]
)
def test_a_file_only_flag_is_refused_with_bundled_data_even_when_zero(flags, capsys):
    from gradcore.cli import main

    assert main(["train", *flags, "--no-progress"]) == 1
    flag = flags[0].replace("no-", "")
    assert (
        f"gradcore: error: {flag} works with a data file (--data FILE)" in capsys.readouterr().err
    )
