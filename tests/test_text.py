"""Tests of sjalign.data.text: .txt / .csv text datasets, their ids, labels, split filter and errors."""

from __future__ import annotations

import numpy as np
import pytest

from sjalign.data import load_observations
from sjalign.data.text import TextSet, load_text_dataset
from sjalign.errors import DataError


def _write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def test_txt_one_item_per_line_ids_are_line_numbers(tmp_path):
    p = _write(tmp_path / "a.txt", "first\n\n  second  \n   \nthird é ✓\r\nfourth")
    ts = load_text_dataset(p)
    assert isinstance(ts, TextSet)
    assert ts.texts == ["first", "  second  ", "third é ✓", "fourth"]
    np.testing.assert_array_equal(ts.state_ids, [0, 2, 4, 5])
    assert ts.state_ids.dtype == np.int64 and ts.labels is None and ts.is_test is None
    assert len(ts) == 4


def test_txt_max_states_keeps_first_n(tmp_path):
    p = _write(tmp_path / "a.txt", "\n".join(f"line {i}" for i in range(10)) + "\n")
    ts = load_text_dataset(p, max_states=3)
    assert ts.texts == ["line 0", "line 1", "line 2"]
    np.testing.assert_array_equal(ts.state_ids, [0, 1, 2])


def test_txt_split_filter_needs_a_split_column(tmp_path):
    p = _write(tmp_path / "a.txt", "x\ny\n")
    with pytest.raises(DataError, match="needs a 'split' column"):
        load_text_dataset(p, split="train")


def test_csv_all_columns(tmp_path):
    p = _write(tmp_path / "d.csv", 'state_id,text,label,split\n'
                                   '10,"hello, world",1,train\n'
                                   '7,"multi\nline",0,test\n'
                                   '3,plain,2,0\n'
                                   '99,last one,1,1\n')
    ts = load_text_dataset(p)
    assert ts.texts == ["hello, world", "multi\nline", "plain", "last one"]
    np.testing.assert_array_equal(ts.state_ids, [10, 7, 3, 99])
    np.testing.assert_array_equal(ts.labels, [1, 0, 2, 1])
    np.testing.assert_array_equal(ts.is_test, [False, True, False, True])
    assert ts.labels.dtype == np.int64 and ts.is_test.dtype == bool
    train = load_text_dataset(p, split="train")
    assert train.texts == ["hello, world", "plain"]
    np.testing.assert_array_equal(train.state_ids, [10, 3])
    np.testing.assert_array_equal(train.labels, [1, 2])
    assert not train.is_test.any()
    test = load_text_dataset(p, split="test", max_states=1)
    assert test.texts == ["multi\nline"] and list(test.state_ids) == [7] and list(test.labels) == [0]


def test_csv_text_only_ids_are_row_numbers(tmp_path):
    p = _write(tmp_path / "d.csv", "text\nalpha\nbeta\n\ngamma\n")
    ts = load_text_dataset(p)
    assert ts.texts == ["alpha", "beta", "gamma"]
    np.testing.assert_array_equal(ts.state_ids, [0, 1, 2])
    assert ts.labels is None and ts.is_test is None


def test_csv_empty_text_rows_skipped(tmp_path):
    p = _write(tmp_path / "d.csv", "state_id,text\n5,a\n6,\n7,c\n")
    ts = load_text_dataset(p)
    assert ts.texts == ["a", "c"] and list(ts.state_ids) == [5, 7]


def test_csv_bom_and_header_spaces(tmp_path):
    p = tmp_path / "d.csv"
    p.write_bytes("\ufeffstate_id, text ,label\n1,x,0\n".encode("utf-8"))
    ts = load_text_dataset(p)
    assert ts.texts == ["x"] and list(ts.state_ids) == [1] and list(ts.labels) == [0]


@pytest.mark.parametrize("content, pattern", [
    ("sentence,label\nhi,1\n", r"no 'text' column \(columns found: 'sentence', 'label'\)"),
    ("", r"no 'text' column \(columns found: none\)"),
    ("state_id,text\n1,a\n2,b\n1,c\n", r"duplicate state_id values \(1\)"),
    ("state_id,text\n1,a\nx,b\n", r"line 3: invalid state_id 'x'"),
    ("state_id,text\n1,a\n,b\n", r"invalid state_id ''"),
    ("text,label\na,1\nb,cat\n", r"invalid label 'cat'"),
    ("text,split\na,train\nb,validation\n", r"invalid split 'validation'"),
])
def test_csv_errors_name_the_file(tmp_path, content, pattern):
    p = _write(tmp_path / "bad.csv", content)
    with pytest.raises(DataError, match=pattern) as info:
        load_text_dataset(p)
    msg = str(info.value)
    assert str(p) in msg and "\n" not in msg


def test_missing_file_and_empty_selection(tmp_path):
    with pytest.raises(DataError, match="not found") as info:
        load_text_dataset(tmp_path / "nope.txt")
    assert "nope.txt" in str(info.value)
    with pytest.raises(DataError, match="empty"):
        load_text_dataset(_write(tmp_path / "blank.txt", "\n  \n\n"))
    p = _write(tmp_path / "d.csv", "text,split\na,train\nb,train\n")
    with pytest.raises(DataError, match="no text items in split 'test'"):
        load_text_dataset(p, split="test")
    with pytest.raises(DataError, match="unknown split"):
        load_text_dataset(p, split="validation")


def test_invalid_utf8(tmp_path):
    p = tmp_path / "latin1.txt"
    p.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="not valid UTF-8"):
        load_text_dataset(p)


def test_load_observations_dispatches_text(tmp_path):
    p = _write(tmp_path / "d.csv", "text,label\nalpha,0\nbeta,1\n")
    obs = load_observations(str(p))
    assert obs.modality == "text" and obs.items == ["alpha", "beta"]
    np.testing.assert_array_equal(obs.labels, [0, 1])
    with pytest.raises(DataError, match="views apply to images"):
        load_observations(str(p), view="crop:top")
