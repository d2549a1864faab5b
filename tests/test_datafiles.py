"""Reading a user's CSV or .npz: what the target implies, and one-line errors for bad files."""

# ruff: noqa: N806 - X is a data matrix

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from gradcore.datafiles import DataFileError, read_dataset, read_features

HEADER = "a,b,label\n"


def write(tmp_path, text: str, name: str = "data.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path, **kwargs) -> str:
    with pytest.raises(DataFileError) as error:
        read_dataset(path, **kwargs)
    message = str(error.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


def test_integer_and_string_targets_are_classes_and_floats_regression(tmp_path):
    ints = read_dataset(write(tmp_path, HEADER + "1,2,0\n3,4,1\n"))
    assert ints.task == "classification" and ints.y.dtype == np.int64
    assert ints.features == ["a", "b"] and ints.target == "label"
    np.testing.assert_array_equal(ints.X, [[1, 2], [3, 4]])
    strings = read_dataset(write(tmp_path, HEADER + "1,2,cat\n3,4, dog\n"))
    assert strings.task == "classification" and strings.y.tolist() == ["cat", "dog"]
    floats = read_dataset(write(tmp_path, HEADER + "1,2,0.5\n3,4,1.5\n"))
    assert floats.task == "regression" and floats.y.dtype == np.float64
    tabs = read_dataset(write(tmp_path, "a\tb\tlabel\n1\t2\t0.5\n3\t4\t1\n", "data.tsv"))
    assert tabs.task == "regression" and tabs.X.shape == (2, 2)


def test_task_and_target_override_what_the_file_implies(tmp_path):
    path = write(tmp_path, HEADER + "1,2,0\n3,4,1\n5,6,1\n")
    assert read_dataset(path, task="regression").y.dtype == np.float64
    by_name = read_dataset(path, target="a")
    assert by_name.features == ["b", "label"] and by_name.y.tolist() == [1, 3, 5]
    as_classes = read_dataset(write(tmp_path, HEADER + "1,2,0.5\n3,4,1.5\n"), task="classification")
    assert as_classes.y.tolist() == ["0.5", "1.5"]


def test_missing_file(tmp_path):
    assert error_of(tmp_path / "nope.csv") == f"{tmp_path / 'nope.csv'}: no such file"


def test_empty_file_and_a_header_without_rows(tmp_path):
    assert error_of(write(tmp_path, "")).endswith(": the file is empty")
    assert error_of(write(tmp_path, "\n\n")).endswith(": the file is empty (only blank lines)")
    assert error_of(write(tmp_path, HEADER)).endswith(": a header but no data rows")


def test_missing_target_column(tmp_path):
    message = error_of(write(tmp_path, HEADER + "1,2,0\n"), target="species")
    assert message.endswith(": no column 'species' (the header has: a, b, label)")


def test_non_numeric_feature_value(tmp_path):
    message = error_of(write(tmp_path, HEADER + "1,2,0\n3,x4,1\n"))
    assert message.endswith(", row 2 (line 3), column 'b': 'x4' is not a number")


@pytest.mark.parametrize("missing", ["", "NA", "nan", "?"])
def test_missing_feature_value(tmp_path, missing):
    message = error_of(write(tmp_path, HEADER + f"1,2,0\n{missing},4,1\n"))
    assert message.endswith(", row 2 (line 3), column 'a': missing value")


def test_missing_target_value(tmp_path):
    message = error_of(write(tmp_path, HEADER + "1,2,0\n3,4,\n"))
    assert message.endswith(", row 2 (line 3), column 'label': missing value")


def test_rows_of_another_length(tmp_path):
    short = error_of(write(tmp_path, HEADER + "1,2,0\n\n3,4\n"))
    assert short.endswith(
        ", row 2 (line 4): 2 values but the header has 3 columns (no value for column 'label')"
    )
    long = error_of(write(tmp_path, HEADER + "1,2,0,9\n"))
    assert long.endswith(
        ", row 1 (line 2): 4 values but the header has 3 columns (a value after the last "
        "column 'label')"
    )


def test_a_single_class(tmp_path):
    message = error_of(write(tmp_path, HEADER + "1,2,yes\n3,4,yes\n"))
    assert message.endswith(
        ", column 'label': only one class ('yes'); a classifier needs at least two (for a "
        "numeric target, try --task regression)"
    )


def test_non_numeric_regression_target_and_duplicate_columns(tmp_path):
    message = error_of(write(tmp_path, HEADER + "1,2,0.5\n3,4,big\n"), task="regression")
    assert message.endswith(", row 2 (line 3), column 'label': 'big' is not a number")
    message = error_of(write(tmp_path, "a,a,label\n1,2,0\n"))
    assert message.endswith(": the header names column 'a' twice")


def test_npz_with_x_and_y(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, X=np.arange(6.0).reshape(3, 2), y=np.array(["u", "v", "u"]))
    data = read_dataset(path)
    assert data.task == "classification" and data.features == ["x0", "x1"]
    np.savez(path, X=np.ones((3, 2)), target=np.array([0.5, 1.0, 2.0]))
    assert read_dataset(path, target="target").task == "regression"


def test_npz_errors(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, X=np.ones((3, 2)))
    assert error_of(path).endswith(": no array 'y' (the file has: X)")
    np.savez(path, X=np.array([[1.0, np.nan], [1.0, 2.0]]), y=np.array([0, 1]))
    assert error_of(path).endswith(", row 1, column X[:, 1]: missing value (nan)")
    np.savez(path, X=np.ones((3, 2)), y=np.array([0, 1]))
    assert ": shape (2,); expected (3,), one value per row of X" in error_of(path)
    np.savez(path, X=np.ones((3, 2)), y=np.array([1, 1, 1]))
    assert "array 'y': only one class (1)" in error_of(path)
    path.write_bytes(b"not a zip")
    assert ": not a readable .npz file" in error_of(path)


def test_features_of_new_rows_are_picked_by_name(tmp_path):
    path = write(tmp_path, "b,extra,a\n2,x,1\n4,y,3\n")
    np.testing.assert_array_equal(read_features(path, ["a", "b"], 2), [[1, 2], [3, 4]])
    with pytest.raises(DataFileError, match=r"no column 'c', which the model was trained on"):
        read_features(path, ["a", "c"], 2)
    with pytest.raises(DataFileError, match=r"3 feature columns; the model takes 2"):
        read_features(write(tmp_path, "a,b,c\n1,2,3\n"), None, 2)


def test_the_command_line_prints_the_error_in_one_line(tmp_path):
    path = write(tmp_path, HEADER + "1,2,0\n3,x4,1\n")
    result = subprocess.run(
        [sys.executable, "-m", "gradcore", "train", "--data", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr == (
        f"gradcore: error: {path}, row 2 (line 3), column 'b': 'x4' is not a number\n"
    )
