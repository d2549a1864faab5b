"""The ``gradcore`` command, run as a user runs it: in a subprocess, with few epochs."""

# ruff: noqa: N806 - X is a data matrix

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import warnings

import numpy as np
import pytest
from conftest import run_gradcore
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

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


def test_a_resumed_run_with_dropout_ends_with_the_params_of_an_uninterrupted_one(tmp_path):
    flags = ["--no-progress", "--dropout", "0.3", "--optimizer", "adam", "--epochs"]
    whole = run_gradcore("train", *flags, "3", "--checkpoint", "whole.npz", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    first = run_gradcore("train", *flags, "2", "--checkpoint", "run.npz", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    resumed = run_gradcore(
        "train", *flags, "3", "--checkpoint", "run.npz", "--resume", cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "trained 1 more epoch" in resumed.stdout
    (want, _), (got, meta) = (
        gc.checkpoints.load_checkpoint(tmp_path / f) for f in ("whole.npz", "run.npz")
    )
    assert meta["generator"]["started"]
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


def test_unknown_dataset_is_no_such_file_in_one_line():
    result = run_gradcore("train", "--data", "mnist")
    assert result.returncode == 1
    assert one_line_error(result) == (
        "gradcore train: error: --data mnist: no such file (nor a bundled data set: "
        "breast-cancer, digits)\n"
    )


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
        r"gradcore train: error: fit: diverged at epoch 1/50, step \d+/15: the loss is .* more "
        r"than divergence_factor=1000 times the starting loss",
        one_line_error(result),
    )


def test_checkpoint_paths_are_checked_before_training(tmp_path):
    flags = ["train", "--epochs", "1", "--no-progress", "--checkpoint", "run.npz"]
    fresh = run_gradcore(*flags, "--resume", cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr
    assert "no checkpoint at run.npz yet: starting afresh" in fresh.stdout
    assert (
        "gradcore train: error: --checkpoint run.npz exists: add --resume to continue from it, or "
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
        "gradcore train: error: checkpoint run.npz cannot be read: it is truncated or corrupt"
        in corrupt
    )
    plot = one_line_error(run_gradcore(*flags[:-2], "--plot", "no/such/dir/curves.png"))
    assert (
        "gradcore train: error: --plot no/such/dir/curves.png: the directory no/such/dir does "
        "not exist" in plot
    )
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
    assert "gradcore train: error: device 'cuda' is unavailable" in one_line_error(result)


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
        f"gradcore train: error: {flag} works with a data file (--data FILE)"
        in capsys.readouterr().err
    )


# ---------------------------------------------------------------------------------------------
# issue 21: every output path checked before any work, no file lost, clear help and messages.
# In this process (main returns the status), so that each case costs a second, not an import.


@pytest.fixture
def here(tmp_path, monkeypatch):
    """A folder with a small CSV (data.csv, two separable classes), as the current directory."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 3))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    rows = "".join(f"{a:.4f},{b:.4f},{c:.4f},{label}\n" for (a, b, c), label in zip(X, y))
    (tmp_path / "data.csv").write_text("a,b,c,label\n" + rows)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def gradcore(capsys, *args: str) -> tuple[int, str, str]:
    """``gradcore ARGS`` in this process: the exit status, stdout and stderr."""
    from gradcore.cli import main

    try:
        status = main(list(args))
    except SystemExit as stop:  # argparse's usage errors
        status = stop.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return status, out, err


FAST = ("--epochs", "2", "--no-progress")


def refused(capsys, *args: str) -> str:
    """The one error line of a command that must stop before it reads data or trains."""
    status, out, err = gradcore(capsys, *args)
    assert status == 1 and "trained" not in out and "examples" not in out, (out, err)
    assert len(err.splitlines()) == 1, err
    return err.rstrip("\n")


def snapshot(folder) -> dict:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


@pytest.mark.parametrize("flag", ["--history", "--save", "--plot"])
@pytest.mark.parametrize("link", ["data.csv", "symlink.csv", "hardlink.csv"])
def test_an_output_that_is_the_data_file_is_refused_and_the_data_kept(here, capsys, flag, link):
    os.symlink("data.csv", here / "symlink.csv")
    os.link(here / "data.csv", here / "hardlink.csv")
    before = snapshot(here)
    message = refused(capsys, "train", "--data", "data.csv", flag, link, "--overwrite", *FAST)
    assert message == (
        f"gradcore train: error: {flag} {link} is the same file as --data data.csv; give "
        f"another path for {flag}"
    )
    assert snapshot(here) == before


def test_two_outputs_on_one_path_are_refused(here, capsys):
    message = refused(capsys, "train", "--data", "data.csv", "--history", "out", "--save",
                      "./out", *FAST)  # fmt: skip
    assert message == (
        "gradcore train: error: --save ./out is the same file as --history out; give another "
        "path for --save"
    )
    message = refused(capsys, "train", "--plot", "run.npz", "--checkpoint", "run.npz", *FAST)
    assert "--plot run.npz is the same file as --checkpoint run.npz" in message
    assert not (here / "out").exists() and not (here / "run.npz").exists()


def test_predict_never_writes_over_the_model_or_the_rows(here, capsys):
    status, _, err = gradcore(capsys, "train", "--data", "data.csv", "--save", "m.npz", *FAST)
    assert status == 0, err
    before = snapshot(here)
    for output, what in (("m.npz", "the model m.npz"), ("data.csv", "the data file data.csv")):
        message = refused(capsys, "predict", "m.npz", "data.csv", "--output", output,
                          "--overwrite")  # fmt: skip
        assert message == (
            f"gradcore predict: error: --output {output} is the same file as {what}; give "
            "another path for --output"
        )
    assert snapshot(here) == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "data.csv", "--save", "nodir/m.npz"],
         "--save nodir/m.npz: the directory nodir does not exist"),
        (["--data", "data.csv", "--history", "data.csv/h.csv"],
         "--history data.csv/h.csv: the directory data.csv is not a directory"),
        (["--history", "nodir/h.csv"], "--history nodir/h.csv: the directory nodir does not exist"),
        (["--data", "data.csv", "--plot", "."], "--plot . is a directory; give a file path"),
    ],
)  # fmt: skip
def test_output_paths_are_checked_before_training_and_named_as_typed(here, capsys, args, message):
    assert refused(capsys, "train", *args, *FAST) == f"gradcore train: error: {message}"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any directory")
def test_a_directory_that_cannot_be_written(here, capsys):
    (here / "ro").mkdir(mode=0o500)
    message = refused(capsys, "train", "--data", "data.csv", "--save", "ro/m.npz", *FAST)
    assert message.endswith("--save ro/m.npz: the directory ro is not writable")


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--data", "data.csv", "--save", "old"],
        ["train", "--data", "data.csv", "--history", "old"],
        ["train", "--data", "data.csv", "--plot", "old"],
        ["train", "--history", "old"],
        ["train", "--plot", "old"],
    ],
)
def test_an_existing_output_is_kept_unless_overwrite(here, capsys, args):
    (here / "old").write_text("keep me")
    message = refused(capsys, *args, *FAST)
    assert message == (
        f"gradcore train: error: {args[-2]} old exists: add --overwrite to replace it, or give "
        "another path"
    )
    assert (here / "old").read_text() == "keep me"
    status, out, err = gradcore(capsys, *args, *FAST, "--overwrite")
    assert status == 0, err
    assert (here / "old").read_bytes() != b"keep me"
    assert not [path.name for path in here.iterdir() if ".tmp-" in path.name]


def test_predict_keeps_an_existing_output_unless_overwrite(here, capsys):
    assert gradcore(capsys, "train", "--data", "data.csv", "--save", "m.npz", *FAST)[0] == 0
    (here / "out.csv").write_text("keep me")
    message = refused(capsys, "predict", "m.npz", "data.csv", "--output", "out.csv")
    assert message.endswith("--output out.csv exists: add --overwrite to replace it, or give "
                            "another path")  # fmt: skip
    assert (here / "out.csv").read_text() == "keep me"
    status, out, _ = gradcore(capsys, "predict", "m.npz", "data.csv", "--output", "out.csv",
                              "--overwrite")  # fmt: skip
    assert status == 0 and out == "80 predictions written to out.csv\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--data", "missing.csv"],
         "gradcore train: error: --data missing.csv: no such file (nor a bundled data set: "
         "breast-cancer, digits)"),
        (["train", "--data", "."], "gradcore train: error: .: a directory, not a data file"),
        (["predict", "nope.npz", "data.csv"], "gradcore predict: error: nope.npz: no such file"),
        (["predict", "data.csv", "nope.csv"], "gradcore predict: error: nope.csv: no such file"),
        (["train", "--data", "data.csv", "--test-split", "1"],
         "gradcore train: error: argument --test-split: must be in [0, 1), got 1 (see gradcore "
         "train --help)"),
    ],
)  # fmt: skip
def test_missing_files_and_usage_errors_have_one_prefix(here, capsys, args, message):
    status, out, err = gradcore(capsys, *args)
    assert status != 0 and err == message + "\n" and out == ""


def test_help_is_plain_text_with_every_default():
    from gradcore.cli import _parser

    parser = _parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("train", "predict"):
        command = commands.choices[name]
        text = command.format_help()
        assert "``" not in text and "`" not in text
        formatter = command._get_formatter()
        for action in command._actions:
            if action.option_strings and action.dest != "help":
                assert "default" in formatter._get_help_string(action), action.option_strings
    assert "``" not in parser.format_help()


def test_history_with_bundled_data_and_plot_with_a_file(here, capsys):
    status, out, err = gradcore(capsys, "train", "--history", "h.csv", *FAST)
    assert status == 0, err
    rows = [line.split(",") for line in (here / "h.csv").read_text().splitlines()]
    assert rows[0][:3] == ["epoch", "loss", "val_loss"] and len(rows) == 3
    status, out, err = gradcore(capsys, "train", "--data", "data.csv", "--plot", "curves", *FAST)
    assert status == 0, err
    assert (here / "curves").read_bytes()[:4] == b"\x89PNG" and "curves written to curves" in out


def test_numbers_are_written_at_the_model_precision(here, capsys):
    """Each number is the shortest text of its value in the model's dtype: a float32 model
    writes 0.1, not 0.10000000149011612."""
    assert gradcore(capsys, "train", "--data", "data.csv", "--save", "m.npz", "--history",
                    "h.csv", "--patience", "5", *FAST)[0] == 0  # fmt: skip
    from gradcore.estimators import load

    number = load(here / "m.npz").coefs_[0].dtype.type
    history = [line.split(",") for line in (here / "h.csv").read_text().splitlines()]
    assert history[0] == ["epoch", "loss", "val_loss", "val_accuracy"]
    status, out, _ = gradcore(capsys, "predict", "m.npz", "data.csv", "--proba")
    assert status == 0
    texts = [text for row in history[1:] for text in row[1:]]
    texts += [text for line in out.splitlines()[1:] for text in line.split(",")]
    assert [str(number(text)) for text in texts] == texts


def test_patience_watches_the_validation_loss_not_the_accuracy(here, capsys):
    """Separable classes: the validation accuracy is 1.0 from the first epochs on, but the
    model keeps improving; stopping on the accuracy would freeze it underfit."""
    rng = np.random.default_rng(1)
    X = np.concatenate([rng.normal(-3, 1, (100, 2)), rng.normal(3, 1, (100, 2))])
    rows = "".join(f"{a:.3f},{b:.3f},{i // 100}\n" for i, (a, b) in enumerate(X))
    (here / "easy.csv").write_text("a,b,label\n" + rows)
    flags = ["--epochs", "20", "--patience", "2", "--history", "h.csv", "--no-progress"]
    status, out, err = gradcore(capsys, "train", "--data", "easy.csv", *flags)
    assert status == 0, err
    history = np.loadtxt(here / "h.csv", delimiter=",", skiprows=1)
    assert (history[2:, 3] == 1.0).all()  # validation accuracy
    assert "trained 20 epochs" in out and "kept epoch 20" in out


def test_delimiters_and_a_file_without_header_on_the_command_line(here, capsys):
    text = (here / "data.csv").read_text()
    (here / "semi.csv").write_text(text.replace(",", ";"))
    assert gradcore(capsys, "train", "--data", "semi.csv", *FAST)[0] == 0
    (here / "pipe.csv").write_text(text.replace(",", "|"))
    message = refused(capsys, "train", "--data", "pipe.csv", *FAST)
    assert message.endswith("every row parses into one column (tried comma, semicolon and tab); "
                            "give the delimiter with --delimiter")  # fmt: skip
    assert gradcore(capsys, "train", "--data", "pipe.csv", "--delimiter", "|", *FAST)[0] == 0
    (here / "bare.csv").write_text(text.split("\n", 1)[1])
    status, out, err = gradcore(capsys, "train", "--data", "bare.csv", "--save", "m.npz", *FAST)
    assert status == 0 and "80 " not in out and "64 training and 16 test" in out
    assert err == (
        "gradcore train: note: bare.csv: the first row is all numbers, so it is read as data "
        "(no header); the columns are named 1 to 4\n"
    )
    status, out, err = gradcore(capsys, "predict", "m.npz", "bare.csv")
    assert status == 0 and len(out.splitlines()) == 81 and "gradcore predict: note:" in err


# ---------------------------------------------------------------------------------------------
# malformed files, generated: every run trains, or stops with one line that names the file


BAD_CELLS = ["", "NA", "?", "x", "1,5", '"', "nan", "inf", "1e999", " ", "\x00", "é", "1_0"]


@st.composite
def malformed_csv(draw: st.DrawFn) -> bytes:
    """A small good table (a, b, label) with a few defects drawn into it: bad cells, ragged
    rows, a missing header, another delimiter or encoding; or an empty or binary file."""
    kind = draw(st.sampled_from(["table"] * 4 + ["empty", "binary"]))
    if kind == "empty":
        return draw(st.sampled_from([b"", b"\n\n", b"a,b,label\n", b"\xef\xbb\xbf"]))
    if kind == "binary":
        return draw(st.binary(max_size=200))
    number = st.floats(-1e3, 1e3, allow_nan=False, width=32).map(repr)
    rows = [["a", "b", "label"]] + [
        [draw(number), draw(number), str(i % 2)]
        for i in range(draw(st.sampled_from([0, 1, 2, 3, 12, 12, 12, 20])))
    ]
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2, 3]))):
        i = draw(st.integers(0, len(rows) - 1))
        defect = draw(st.sampled_from(["cell", "cell", "short", "long", "text"]))
        j = draw(st.integers(0, len(rows[i])))  # len: the end of the row
        if defect == "short":
            rows[i] = rows[i][:-1]
        elif defect == "long" or j == len(rows[i]):
            rows[i] = [*rows[i], draw(number)]
        else:
            bad = st.sampled_from(BAD_CELLS) if defect == "cell" else st.text(max_size=4)
            rows[i][j] = draw(bad)
    if draw(st.integers(0, 3)) == 0:
        rows = rows[1:]  # no header
    delimiter = draw(st.sampled_from([",", ",", ",", ";", "\t", "|"]))
    text = "\n".join(delimiter.join(row) for row in rows) + "\n"
    encoding = draw(st.sampled_from(["utf-8"] * 4 + ["utf-8-sig", "utf-16", "latin-1"]))
    return text.encode(encoding, errors="replace")


@pytest.fixture(scope="module")
def model_ab(tmp_path_factory) -> str:
    """A saved classifier of columns a and b, to predict the generated files with."""
    from gradcore.estimators import MLPClassifier

    X = np.random.default_rng(0).normal(size=(20, 2))
    model = MLPClassifier((4,), max_iter=1).fit(X, X[:, 0] > 0)
    path = tmp_path_factory.mktemp("model") / "model.npz"
    return str(model.save(path, metadata={"features": ["a", "b"], "target": "label"}))


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(content=malformed_csv(), predict=st.booleans())
def test_malformed_files_train_or_stop_with_one_line_naming_the_file(
    content, predict, capsys, model_ab
):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "data.csv")
        with open(path, "wb") as file:
            file.write(content)
        if predict:
            args = ["predict", model_ab, path]
        else:
            args = ["train", "--data", path, "--epochs", "1", "--no-progress"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scikit-learn's, on tiny data
            status, out, err = gradcore(capsys, *args)
        event(f"{args[0]}: exit {status}")  # --hypothesis-show-statistics: how many trained
        if status != 0:
            lines = [line for line in err.splitlines() if ": note: " not in line]
            assert len(lines) == 1 and path in lines[0], err
            assert lines[0].startswith(f"gradcore {args[0]}: error: ")
        else:
            assert "trained" in out or predict
        with open(path, "rb") as file:
            assert file.read() == content
        assert os.listdir(folder) == ["data.csv"]


def test_data_errors_name_the_path_as_typed(here, capsys):
    (here / "bad.csv").write_text("a,b,label\n1,2,0\n3,x4,1\n")
    message = refused(capsys, "train", "--data", "./bad.csv", *FAST)
    assert (
        message
        == "gradcore train: error: ./bad.csv, row 2 (line 3), column 'b': 'x4' is not a number"
    )


def test_a_model_with_nan_weights_never_predicts(here, capsys):
    assert gradcore(capsys, "train", "--data", "data.csv", "--save", "m.npz", *FAST)[0] == 0
    with np.load(here / "m.npz") as saved:
        arrays = dict(saved)
    arrays["coef/0"][0, 0] = np.nan  # what a diverged run would have saved
    np.savez(here / "nan.npz", **arrays)
    status, out, err = gradcore(capsys, "predict", "nan.npz", "data.csv", "--output", "p.csv")
    assert status == 1 and out == "" and not (here / "p.csv").exists()
    assert err.startswith("gradcore predict: error: nan.npz: coef/0 holds 1 NaN or infinite")
    assert len(err.splitlines()) == 1


def test_patience_on_a_regression_keeps_the_epoch_of_the_lowest_validation_loss(here, capsys):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(150, 2))
    rows = "".join(f"{a:.3f},{b:.3f},{a - 2 * b + 0.1 * rng.normal():.3f}\n" for a, b in X)
    (here / "reg.csv").write_text("a,b,y\n" + rows)
    flags = ["--epochs", "15", "--patience", "3", "--history", "h.csv", "--no-progress"]
    status, out, err = gradcore(capsys, "train", "--data", "reg.csv", "--lr", "0.01", *flags)
    assert status == 0, err
    header = (here / "h.csv").read_text().splitlines()[0]
    assert header == "epoch,loss,val_loss,val_r2"
    val_loss = np.loadtxt(here / "h.csv", delimiter=",", skiprows=1, ndmin=2)[:, 2]
    assert f"kept epoch {int(np.argmin(val_loss)) + 1} (validation loss" in out


# ---------------------------------------------------------------------------------------------
# issue 19: --optimizer and --dropout


@pytest.mark.parametrize(
    "flags",
    [["--optimizer", "adam", "--dropout", "0.2"],
     ["--optimizer", "adamw", "--weight-decay", "0.01"],
     ["--optimizer", "rmsprop", "--rho", "0.8", "--lr", "0.01"],
     ["--optimizer", "adagrad", "--lr", "0.05", "--epsilon", "1e-6"]],
    ids=["adam-dropout", "adamw", "rmsprop", "adagrad"],
)  # fmt: skip
def test_train_with_each_optimizer_and_dropout(flags, capsys):
    from gradcore.cli import main

    assert main(["train", *flags, "--epochs", "8", "--no-progress"]) == 0
    accuracy = float(re.search(r"test accuracy: ([0-9.]+)", capsys.readouterr().out).group(1))
    assert accuracy >= 0.85


def test_make_optimizer_takes_the_flags_of_its_optimizer():
    from gradcore.cli import _parser, make_optimizer

    parse = lambda *flags: _parser().parse_args(["train", *flags])  # noqa: E731
    adam = make_optimizer(parse("--optimizer", "adam", "--beta1", "0.5", "--epsilon", "1e-3"), 0.1)
    assert (type(adam), adam.beta_1, adam.epsilon, adam.learning_rate) == (
        gc.optim.Adam, 0.5, 1e-3, 0.001)  # fmt: skip
    sgd = make_optimizer(parse("--nesterov", "--weight-decay", "0.01"), 0.1)
    assert (type(sgd), sgd.nesterov, sgd.weight_decay, sgd.learning_rate) == (
        gc.optim.SGD, True, 0.01, 0.1)  # fmt: skip


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--optimizer", "rmsprop", "--beta1", "0.5"],
         "--beta1 works with --optimizer adam or adamw, not with rmsprop"),
        (["--rho", "0.5"], "--rho works with --optimizer rmsprop, not with sgd"),
        (["--optimizer", "adam", "--beta2", "1"], "Adam: beta_2 must be in [0, 1), got 1.0"),
        (["--dropout", "1"], "argument --dropout: must be in [0, 1), got 1"),
        (["--optimizer", "lbfgs"], "argument --optimizer: invalid choice: 'lbfgs'"),
    ],
)  # fmt: skip
def test_optimizer_flags_are_refused_in_one_line(flags, message, capsys):
    from gradcore.cli import main

    with contextlib.suppress(SystemExit):
        assert main(["train", *flags, "--no-progress"]) != 0
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--optimizer", "adamw"], "--optimizer adamw works with the bundled data sets; "
         "--data FILE trains with scikit-learn's solvers, sgd or adam"),
        (["--dropout", "0.1"], "--dropout works with the bundled data sets"),
        (["--optimizer", "adam", "--weight-decay", "0.1"], "--weight-decay works with the "
         "bundled data sets"),
        (["--beta1", "0.5"], "--beta1 works with --optimizer adam, not with sgd"),
    ],
)  # fmt: skip
def test_a_data_file_trains_with_scikit_learns_solvers_only(here, flags, message, capsys):
    from gradcore.cli import main

    assert main(["train", "--data", "data.csv", *flags, "--no-progress"]) == 1
    assert message in capsys.readouterr().err
    code = main(["train", "--data", "data.csv", "--optimizer", "adam", "--beta1", "0.8",
                 "--epochs", "3", "--no-progress"])  # fmt: skip
    assert code == 0
