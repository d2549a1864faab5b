"""Reading a user's CSV or .npz: what the target implies, and one-line errors for bad files."""

# ruff: noqa: N806 - X is a data matrix

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from gradcore.datafiles import DataFileError, HeaderlessWarning, read_dataset, read_features

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
        f"gradcore train: error: {path}, row 2 (line 3), column 'b': 'x4' is not a number\n"
    )


# ---------------------------------------------------------------------------------------------
# issue 21/18: where a file is, how it is separated, whether it has a header, and the C reader


def test_a_directory_says_so(tmp_path):
    assert error_of(tmp_path) == f"{tmp_path}: a directory, not a data file"


def test_a_header_only_file_says_so(tmp_path):
    assert error_of(write(tmp_path, "a;b;label\n")).endswith(": a header but no data rows")


@pytest.mark.parametrize("delimiter", [";", "\t", ","])
def test_the_delimiter_is_detected_from_the_header(tmp_path, delimiter):
    text = "a,b,label\n1.5,2,x\n3,4,y\n".replace(",", delimiter)
    data = read_dataset(write(tmp_path, text))
    assert data.features == ["a", "b"] and data.y.tolist() == ["x", "y"]
    np.testing.assert_array_equal(data.X, [[1.5, 2], [3, 4]])


def test_a_given_delimiter_wins_and_one_column_says_which_was_tried(tmp_path):
    path = write(tmp_path, "a|b|label\n1|2|0\n3|4|1\n")
    assert read_dataset(path, delimiter="|").X.shape == (2, 2)
    assert error_of(path).endswith(
        ": every row parses into one column (tried comma, semicolon and tab); give the "
        "delimiter with --delimiter"
    )
    assert error_of(path, delimiter=";").endswith(
        ": every row parses into one column (with --delimiter ';'); check the delimiter"
    )
    with pytest.raises(DataFileError, match=r"one column \(tried comma, semicolon and tab\)"):
        read_features(path, None, 2)


def test_decimal_commas_in_a_semicolon_file_are_named(tmp_path):
    message = error_of(write(tmp_path, "a;b;label\n1,5;2;0\n"))
    assert message.endswith(
        ", row 1 (line 2), column 'a': '1,5' is not a number (a decimal comma? numbers are "
        "read with a decimal point)"
    )


def test_a_first_row_of_numbers_is_data_with_a_note(tmp_path):
    path = write(tmp_path, "1,2,0\n3,4,1\n5,6,1\n")
    with pytest.warns(HeaderlessWarning, match=r"the first row is all numbers, so it is read as "
                      r"data \(no header\); the columns are named 1 to 3"):  # fmt: skip
        data = read_dataset(path)
    assert data.features == ["1", "2"] and data.target == "3" and data.y.tolist() == [0, 1, 1]
    np.testing.assert_array_equal(data.X, [[1, 2], [3, 4], [5, 6]])
    with pytest.warns(HeaderlessWarning):
        np.testing.assert_array_equal(read_features(path, ["1", "2"], 2), data.X)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"a,b,label\n1,2,\x00\x01\x02\n", ": a binary file, not a CSV text file"),
        (b"a,b,label\n1,2,caf\xe9\n3,4,x\n", ": not a UTF-8 text file (byte 17)"),
        ("a,b,label\n1,2,0\n".encode("utf-16"), ": a binary file, not a CSV text file"),
    ],
)
def test_binary_and_other_encodings(tmp_path, content, message):
    path = tmp_path / "data.csv"
    path.write_bytes(content)
    assert error_of(path).endswith(message)


def test_quoted_fields_blank_lines_bom_and_crlf(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes('\ufeff"a","b",label\r\n\r\n1,"2",cat\r\n3,4,"big, dog"\r\n'.encode())
    data = read_dataset(path)
    assert data.features == ["a", "b"] and data.y.tolist() == ["cat", "big, dog"]
    np.testing.assert_array_equal(data.X, [[1, 2], [3, 4]])


def test_a_regression_target_that_is_not_finite_is_named(tmp_path):
    message = error_of(write(tmp_path, HEADER + "1,2,0.5\n\n3,4,inf\n"))
    assert message.endswith(", row 2 (line 4), column 'label': 'inf' is not a finite number")


def test_missing_values_in_columns_predict_does_not_use_are_ignored(tmp_path):
    path = write(tmp_path, "a,b,label\n1,2,\n3,4,NA\n")
    np.testing.assert_array_equal(read_features(path, ["a", "b"], 2), [[1, 2], [3, 4]])


def test_a_well_formed_file_is_read_by_the_c_reader_alone(tmp_path, monkeypatch):
    """The csv module only names the place of a problem; good files never reach it."""
    import gradcore.datafiles as datafiles

    def refuse(*args, **kwargs):
        raise AssertionError("the slow reader ran")

    monkeypatch.setattr(datafiles, "_read_csv_slow", refuse)
    rows = "".join(f"{i * 0.5},{-i},{'long class name ' * 9}{i % 3}\n" for i in range(500))
    data = read_dataset(write(tmp_path, HEADER + rows))
    assert data.X.shape == (500, 2) and len(np.unique(data.y)) == 3
    assert data.y[2].endswith("name 2") and len(data.y[2]) == 16 * 9 + 1  # no truncation
    assert read_dataset(write(tmp_path, HEADER + "1,2,0.5\n3,4,1.5\n")).task == "regression"
