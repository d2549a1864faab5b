"""The ``gradcore`` command, run as a user runs it: in a subprocess, with few epochs."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

import gradcore as gc


def gradcore(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gradcore", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def test_default_train_is_the_lecture_network_on_breast_cancer():
    result = gradcore("train", "--epochs", "5", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "breast-cancer: 455 training and 114 test examples" in result.stdout
    accuracy = float(re.search(r"test accuracy: ([0-9.]+)", result.stdout).group(1))
    assert accuracy >= 0.9
    assert result.stderr == ""


def test_digits_with_plot_checkpoint_and_resume(tmp_path):
    flags = ["--data", "digits", "--no-progress", "--checkpoint", "run.npz", "--nesterov"]
    first = gradcore("train", *flags, "--epochs", "2", "--plot", "curves.png", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "10 classes" in first.stdout and "trained 2 epochs" in first.stdout
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    resumed = gradcore("train", *flags, "--epochs", "3", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "trained 3 epochs" in resumed.stdout


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


def test_unknown_dataset_is_one_line_and_exit_2():
    result = gradcore("train", "--data", "mnist")
    assert result.returncode == 2
    assert "invalid choice: 'mnist'" in one_line_error(result)


def test_bad_numbers_are_one_line():
    assert "epochs must be a non-negative integer" in one_line_error(
        gradcore("train", "--epochs", "-1", "--no-progress")
    )


@pytest.mark.skipif("cuda" in gc.available_devices(), reason="a GPU answers here")
def test_cuda_unavailable_is_one_line():
    result = gradcore("train", "--device", "cuda")
    assert result.returncode == 1
    assert "gradcore: error: device 'cuda' is unavailable" in one_line_error(result)


def test_info_names_devices_versions_and_blas():
    result = gradcore("info")
    assert result.returncode == 0, result.stderr
    assert "device cpu: available" in result.stdout
    assert re.search(r"^numpy \d", result.stdout, re.MULTILINE)
    assert "BLAS" in result.stdout
