"""Hostile CSV files: each gets a named error (file, line, reason) or a counted reject,
never a traceback and never a silently changed or dropped row.

What the code before these checks did with each case is noted at its test.
"""

import csv
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import REPO
from test_ingest import GOOD_ROWS, HEADER, SPEC, canonical, read_examples, read_records
from transform import ingest
from transform.ingest import DataValidationError, ingest_csv


def write_bytes(tmp_path, data: bytes, name="data.csv") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def run(tmp_path, path, **kwargs):
    return ingest_csv(path, SPEC, str(tmp_path / "staged"), log=lambda _: None, **kwargs)


def error_of(tmp_path, path, **kwargs) -> str:
    with pytest.raises(DataValidationError) as raised:
        run(tmp_path, path, **kwargs)
    return str(raised.value)


def rejects_of(result) -> pd.DataFrame:
    return pd.read_csv(result.rejects_path, dtype=str, keep_default_na=False)


# ---------------------------------------------------------------- file structure

@pytest.mark.parametrize("mode", ["error", "reject"])
def test_empty_file_and_header_only(tmp_path, mode):
    """Before: the same two messages (no line needed: there is no row)."""
    empty = write_bytes(tmp_path, b"", "empty.csv")
    assert error_of(tmp_path, empty, bad_rows=mode) == (
        f"{empty}: the file is empty (0 bytes; expected a header row)")
    header = write_bytes(tmp_path, HEADER.encode(), "header.csv")
    assert error_of(tmp_path, header, bad_rows=mode) == f"{header}: no data rows after the header"


def test_binary_garbage_is_named_with_its_line_and_byte(tmp_path):
    """Before: "not a readable CSV file: 'utf-8' codec can't decode byte 0x89 in position
    0" (an offset in pandas' buffer, not the file), and a NUL byte inside a cell cut the
    cell short silently ('d\\x00e' was read as 'd')."""
    png = write_bytes(tmp_path, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "png.csv")
    assert error_of(tmp_path, png) == (
        f"{png} line 1, byte 1: not UTF-8 text (byte 0x89); save the file as UTF-8")
    nul = write_bytes(tmp_path, (HEADER + GOOD_ROWS + "d\x00e,31,2,1,1,5\n").encode(), "nul.csv")
    assert error_of(tmp_path, nul, bad_rows="reject") == (
        f"{nul} line 5, byte 2: a NUL byte (binary data, not CSV text)")
    utf8_then_bad = (HEADER + "dé,31,2,1,1,5\n" + "fr,40,1,0,0,0\n").encode() + b"it\xff,1,1,0,0,0\n"
    bad = write_bytes(tmp_path, utf8_then_bad, "latin.csv")
    assert error_of(tmp_path, bad) == (
        f"{bad} line 4, byte 3: not UTF-8 text (byte 0xff); save the file as UTF-8")


def test_random_bytes_get_a_one_line_error_from_the_cli(tmp_path):
    """Seeded random bytes (NULs among them) through `python -m tfx_pipeline run`: one
    `error:` line naming file, line and reason, exit status 1, no traceback."""
    garbage = np.random.default_rng(0).bytes(64 * 1024)
    assert b"\x00" in garbage
    data = write_bytes(tmp_path, garbage)
    spec = tmp_path / "spec.json"
    spec.write_text(SPEC.to_json())
    done = subprocess.run(
        [sys.executable, "-m", "tfx_pipeline", "run", "--dataset", "csv", "--data", data,
         "--spec", str(spec), "--pipeline-root", str(tmp_path / "root")],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {data} line 1, byte ")
    assert last.endswith(("a NUL byte (binary data, not CSV text)",
                          "save the file as UTF-8"))


def test_a_100_mb_line_is_refused_after_reading_one_mebibyte(tmp_path):
    """Before: pandas read the whole line into one cell; the numeric check then quoted
    the whole 100 MB cell in the error message."""
    path = tmp_path / "long.csv"
    with open(path, "wb") as handle:
        handle.write(HEADER.encode())
        block = b"9" * (1 << 20)
        for _ in range(100):
            handle.write(block)
        handle.write(b",31,2,1,1,5\n")
    try:
        assert error_of(tmp_path, str(path)) == (
            f"{path} line 2: longer than 1,048,576 bytes (MAX_LINE_BYTES); not a CSV file of "
            f"rows")
    finally:
        path.unlink()


def test_duplicate_header_names_fail_before_any_row_is_read(tmp_path):
    """Before: pandas renamed the second 'age' to 'age.1' and ingest used the first
    silently. The row after the header is broken too: the header is checked first."""
    path = write_bytes(tmp_path, b"country,age,age,slot,click,buy,amount\nde,1\n")
    assert error_of(tmp_path, path) == (
        f"{path} line 1: duplicate column name(s) ['age'] in the header")


def test_missing_column_is_an_error_and_an_unknown_one_a_note(tmp_path):
    """Before: the missing column was the same named error; the unknown column was
    ignored without a word."""
    missing = write_bytes(tmp_path, b"country,age,click,buy,amount\nde,31,1,1,12.5\n", "m.csv")
    assert error_of(tmp_path, missing) == (
        f"{missing}: missing column(s) ['slot'] required by spec 'tiny' (the header has "
        f"['country', 'age', 'click', 'buy', 'amount'])")
    extra = write_bytes(tmp_path, (HEADER.strip() + ",notes\n" + GOOD_ROWS.replace(
        "\n", ",x\n")).encode(), "extra.csv")
    logged = []
    result = ingest_csv(extra, SPEC, str(tmp_path / "staged"), log=logged.append)
    assert (result.rows_read, result.rows_written) == (3, 3)
    assert logged[0] == "note: ignoring column(s) ['notes'] that spec 'tiny' does not use"
    summary = json.loads(Path(result.examples_dir, "summary.json").read_text())
    assert summary["ignored_columns"] == ["notes"]


@pytest.mark.parametrize("body, line, fields", [
    ("de,31,2,1,1,5,extra\n" + GOOD_ROWS, 2, 7),    # before: columns shifted silently
    (GOOD_ROWS + "de,31,2,1,1,5,extra\n", 5, 7),    # before: named, but "line 5" was a record
    (GOOD_ROWS + "de,31\n", 5, 2),                  # before: a missing_value reject
])
def test_rows_with_the_wrong_number_of_fields(tmp_path, body, line, fields):
    path = write_bytes(tmp_path, (HEADER + body).encode())
    assert error_of(tmp_path, path, bad_rows="reject") == (
        f"{path} line {line}: {fields} field(s) where the header has 6")


def test_a_long_row_starting_a_later_chunk_is_not_cut_short(tmp_path, monkeypatch):
    """Before: pandas, reading in chunks, dropped the extra field of a row that started a
    chunk and wrote the row."""
    monkeypatch.setattr("transform.ingest.CHUNK_ROWS", 2)
    path = write_bytes(tmp_path, (HEADER + "de,31,2,1,1,5\nfr,40,1,0,0,0\n"
                                  "it,33,1,0,0,0,9\n").encode())
    assert error_of(tmp_path, path) == f"{path} line 4: 7 field(s) where the header has 6"


def test_a_quote_never_closed_names_the_line_it_opens_on(tmp_path):
    path = write_bytes(tmp_path, (HEADER + GOOD_ROWS + '"de,31,2,1,1,5\nfr,40,1,0,0,0\n').encode())
    assert error_of(tmp_path, path) == (
        f"{path} line 5: not valid CSV: unexpected end of data (in the row that starts on "
        f"this line)")


# ---------------------------------------------------------------- accepted spellings

def test_bom_and_crlf_give_the_same_examples_as_plain_lf(tmp_path):
    """Before: the same (pandas strips the BOM and reads CRLF); now tested."""
    plain = run(tmp_path / "lf", write_bytes(tmp_path, (HEADER + GOOD_ROWS).encode(), "lf.csv"))
    bom = run(tmp_path / "bom",
              write_bytes(tmp_path, ("\ufeff" + HEADER + GOOD_ROWS).encode(), "bom.csv"))
    crlf = run(tmp_path / "crlf", write_bytes(
        tmp_path, ("\ufeff" + HEADER + GOOD_ROWS).replace("\n", "\r\n").encode(), "crlf.csv"))
    assert plain.rows_written == bom.rows_written == crlf.rows_written == 3
    assert canonical(read_records(bom)) == canonical(read_records(plain))
    assert canonical(read_records(crlf)) == canonical(read_records(plain))


def test_quoted_commas_and_line_breaks_keep_physical_line_numbers(tmp_path):
    """The rows start on lines 2, 3 (to 4) and 5 (to 7); line 8 is blank; the bad row is
    on line 9. Before: the error said line 5 (it counted records) and the blank line was
    skipped without a count."""
    body = ('"de,at",31,2,1,1,12.5\n"fr\nbe",40,1,0,0,0\n"it\r\n\nx",22,3,1,0,0\n'
            "\n" 'es,old,1,0,0,0\n')
    path = write_bytes(tmp_path, (HEADER + body).encode())
    assert error_of(tmp_path, path).startswith(
        f"{path} line 9, column 'age': cannot parse 'old' as a number (rows with problems: "
        "1 unparsable_number;")
    result = run(tmp_path, path, bad_rows="reject")
    assert (result.rows_read, result.rows_written, result.blank_lines) == (4, 3, 1)
    assert rejects_of(result)["_line"].tolist() == ["9"]
    countries = sorted(e["country"].bytes_list.value[0] for e in read_examples(result))
    assert countries == [b"de,at", b"fr\nbe", b"it\r\n\nx"]


def test_blank_lines_are_counted_and_logged_not_rows(tmp_path):
    path = write_bytes(tmp_path, (HEADER + "de,31,2,1,1,12.5\n\n   \nfr,40,1,0,0,0\n\n").encode())
    logged = []
    result = ingest_csv(path, SPEC, str(tmp_path / "staged"), log=logged.append)
    assert (result.rows_read, result.rows_written, result.blank_lines) == (2, 2, 3)
    assert logged[0] == "note: skipped 3 blank line(s)"


# ---------------------------------------------------------------- numbers

def written_row(result, country: str):
    return next(e for e in read_examples(result) if e["country"].bytes_list.value == [country.encode()])


def test_float_range_is_float32_and_minus_zero_is_a_number(tmp_path):
    """Numeric features and the core target are stored as float32. Before: 1e308 and 1e39
    became inf in the written example without a word (a RuntimeWarning only), and 1e400
    was 'cannot parse' (unparsable_number)."""
    body = ("a,1e308,1,1,1,1\nb,1e39,1,1,1,1\nc,1e400,1,1,1,1\nd,3,1,1,1,1e308\n"
            "e,-1e400,1,1,1,1\nf,3.4e38,1,1,1,3.4e38\ng,-0.0,1,1,1,-0.0\nh,1e-50,1,1,1,0\n")
    path = write_bytes(tmp_path, (HEADER + body).encode())
    result = run(tmp_path, path, bad_rows="reject")
    assert (result.rows_read, result.rows_written) == (8, 3)
    assert result.reject_counts == {"out_of_range": 5}
    rejects = rejects_of(result)
    assert rejects["_line"].tolist() == ["2", "3", "4", "5", "6"]
    assert rejects["_reasons"].tolist() == [
        "age: '1e308' is out of range for float32",
        "age: '1e39' is out of range for float32",
        "age: '1e400' is out of range for float32",
        "amount: '1e308' is out of range for float32 for the continuous target",
        "age: '-1e400' is out of range for float32"]
    big = written_row(result, "f")
    assert big["age"].float_list.value[0] == np.float32(3.4e38)
    assert big["amount"].float_list.value[0] == np.float32(3.4e38)
    zero = written_row(result, "g")
    assert zero["age"].float_list.value[0] == 0.0
    assert math.copysign(1.0, zero["age"].float_list.value[0]) == -1.0
    assert written_row(result, "h")["age"].float_list.value[0] == 0.0   # underflows to 0


def test_integer_tokens_are_exact_int64(tmp_path):
    """Before: integer tokens went through float64, so 2**53 + 1 was written as 2**53,
    and 2**63 or 'inf' wrapped to an arbitrary int64 without a word."""
    body = ("a,1,9007199254740993,1,1,1\nb,1,9223372036854775807,1,1,1\n"
            "c,1,9223372036854775808,1,1,1\nd,1,1e20,1,1,1\ne,1,2.0,1,1,1\nf,1,2.5,1,1,1\n")
    result = run(tmp_path, write_bytes(tmp_path, (HEADER + body).encode()), bad_rows="reject")
    assert result.reject_counts == {"out_of_range": 2, "unparsable_number": 1}
    assert rejects_of(result)["_reasons"].tolist() == [
        "slot: '9223372036854775808' is out of range for int64",
        "slot: '1e20' is out of range for int64",
        "slot: cannot parse '2.5' as an integer"]
    assert written_row(result, "a")["slot"].int64_list.value == [9007199254740993]
    assert written_row(result, "b")["slot"].int64_list.value == [9223372036854775807]
    assert written_row(result, "e")["slot"].int64_list.value == [2]


NOT_A_NUMBER = ["nan", "NaN", "NAN", "-nan", "inf", "-Infinity"]
MISSING = ["N/A", "null", ""]


@pytest.mark.parametrize("spelling", NOT_A_NUMBER + MISSING)
@pytest.mark.parametrize("column", ["country", "age", "slot", "click", "amount"])
def test_nan_spellings_are_named_per_column_kind(tmp_path, column, spelling):
    """In number columns NaN and infinity spellings are non_finite, NA spellings
    missing_value; in a string column they are tokens, except the empty cell. Before:
    'nan' and 'inf' in the integer column 'slot' were written as 0 and -2**63; 'N/A'
    and 'null' were unparsable_number; 'nan' in 'click' was non_binary_label plus a
    chain_violation of 'buy'; '-Infinity' in 'amount' was also a negative_target."""
    row = dict(country="de", age="31", slot="2", click="1", buy="1", amount="5")
    row[column] = spelling
    body = GOOD_ROWS + ",".join(row.values()) + "\n"
    result = run(tmp_path, write_bytes(tmp_path, (HEADER + body).encode()), bad_rows="reject")
    if column == "country" and spelling:
        assert (result.rows_written, result.reject_counts) == (4, {})
        assert written_row(result, spelling)["age"].float_list.value == [31.0]
        return
    reason = "non_finite" if spelling in NOT_A_NUMBER else "missing_value"
    assert (result.rows_written, result.reject_counts) == (3, {reason: 1})
    expected = {"non_finite": f"non-finite value {spelling!r}",
                "missing_value": f"missing value ({spelling!r})" if spelling else "missing value"}
    suffix = " for the continuous target" if column == "amount" and reason == "non_finite" else ""
    assert rejects_of(result)["_reasons"].tolist() == [f"{column}: {expected[reason]}{suffix}"]


# ---------------------------------------------------------------- duplicates

def distinct_rows(count: int) -> list[str]:
    return [f"de,{20 + i},1,0,0,0" for i in range(count)]


@pytest.mark.parametrize("rows, duplicates, warned", [
    (distinct_rows(100) + ["de,20,1,0,0,0"], 1, None),              # 1 of 101: 0.99 %
    (distinct_rows(100) + ["de,20,1,0,0,0"] * 2, 2, "2 of 102 written rows (2.0%)"),
    (["de,31,2,1,1,12.5"] * 5 + ["fr,40,1,0,0,0"] * 3 + ["it,1,1,0,0,0", "es,2,1,0,0,0"], 6,
     "6 of 10 written rows (60.0%)"),
    (distinct_rows(10), 0, None),
])
def test_duplicate_rows_are_counted_and_warned_about_above_one_percent(
        tmp_path, monkeypatch, rows, duplicates, warned):
    """Counted across chunks (2 rows each here): 'de,31,...' five times is 4 duplicates,
    'fr,40,...' three times 2 more."""
    monkeypatch.setattr("transform.ingest.CHUNK_ROWS", 2)
    logged = []
    path = write_bytes(tmp_path, (HEADER + "\n".join(rows) + "\n").encode())
    result = ingest_csv(path, SPEC, str(tmp_path / "staged"), log=logged.append)
    assert result.duplicate_rows == duplicates
    summary = json.loads(Path(result.examples_dir, "summary.json").read_text())
    assert summary["duplicate_rows"] == duplicates
    warnings = [line for line in logged if line.startswith("warning:")]
    if warned is None:
        assert warnings == []
    else:
        assert warnings == [
            f"warning: {warned} repeat an earlier row exactly; the split hashes the whole row, "
            f"so all copies of a row land in the same split and rows that repeat often can be "
            f"missing from training or eval altogether: set split.partition_column in the spec "
            f"to split by an id column"]


def test_no_duplicate_warning_when_the_spec_splits_by_a_column(tmp_path):
    import dataclasses

    from transform.spec import SplitSpec

    spec = dataclasses.replace(SPEC, split=SplitSpec(partition_column="country"))
    logged = []
    path = write_bytes(tmp_path, (HEADER + "fr,40,1,0,0,0\nde,3,1,0,0,0\n" * 5).encode())
    result = ingest_csv(path, spec, str(tmp_path / "staged"), log=logged.append)
    assert result.duplicate_rows == 8
    assert not [line for line in logged if line.startswith("warning:")]


# ---------------------------------------------------------------- property: a reference reader

NUMBER = r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"


def reference_number(text: str, kind: str):
    """The spec's rules for one cell of a number column, written from the docs:
    returns (value, None) or (None, reason). `kind`: 'float32', 'int64' or 'step'."""
    import re

    text = text.strip()
    if text.lower() in ("", "na", "n/a", "null", "none"):
        return None, "missing_value"
    if re.fullmatch(r"[+-]?(nan|inf|infinity)", text, re.IGNORECASE):
        return None, "non_finite"
    if kind == "int64" and re.fullmatch(r"[+-]?[0-9]+", text):
        value = int(text)
        return (value, None) if -2 ** 63 <= value < 2 ** 63 else (None, "out_of_range")
    if not re.fullmatch(NUMBER, text):
        return None, "unparsable_number"
    value = float(text)
    with np.errstate(over="ignore"):
        too_big = math.isinf(value) or (kind == "float32" and math.isinf(np.float32(value)))
    if too_big:
        return None, "out_of_range"
    if kind == "int64":
        if value != math.floor(value):
            return None, "unparsable_number"
        if abs(value) >= 2 ** 53:
            return None, "out_of_range"
        return int(value), None
    if kind == "step" and value not in (0.0, 1.0):
        return None, "non_binary_label"
    return value, None


def reference_row(row: dict):
    """(typed values, set of reasons) of one row of SPEC by the reference rules."""
    reasons, typed = set(), {}
    if not row["country"].strip():
        reasons.add("missing_value")
    typed["country"] = row["country"]
    for column, kind in (("age", "float32"), ("slot", "int64"), ("click", "step"),
                         ("buy", "step"), ("amount", "float32")):
        typed[column], reason = reference_number(row[column], kind)
        if reason:
            reasons.add(reason)
    click, buy, amount = typed["click"], typed["buy"], typed["amount"]
    if amount is not None and amount < 0:
        reasons.add("negative_target")
    if click == 0 and buy == 1:
        reasons.add("chain_violation")
    if buy == 0 and amount is not None and amount > 0:
        reasons.add("chain_violation")
    return typed, reasons


CELLS = st.one_of(
    st.sampled_from(["0", "1", "-0.0", "1.0", "2", "1e3", ".5", "5.", "+7", "0001", "-3.5",
                     "1e308", "1e400", "3.4e38", "1e39", "nan", "-NaN", "inf", "-Infinity",
                     "N/A", "null", "None", "", " 1 ", "1_000", "0x10", "1,5", "١٢", "½",
                     "9007199254740993", "9223372036854775808", "1e20", "2.5", "e5", "--1"]),
    st.integers(-10 ** 20, 10 ** 20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=6),
)
TOKENS = st.one_of(st.sampled_from(["de", "fr", "", " ", "a,b", 'say "hi"', "two\nlines",
                                    "cr\r\nlf", "NA", "null", "nan", "ü", "日本"]),
                   st.text(st.characters(codec="utf-8", exclude_characters="\x00\r\n"),
                           max_size=5))
GOOD_CHAINS = [("0", "0", "0"), ("1", "0", "0"), ("1", "1", "0"), ("1", "1", "2.5")]


def mostly(good, other):
    """`good` nine times in ten, `other` the rest."""
    return st.integers(0, 9).flatmap(lambda draw: other if draw == 0 else good)


@st.composite
def table_rows(draw):
    """One row of SPEC: most cells good, any cell can be anything from CELLS."""
    click, buy, amount = draw(st.sampled_from(GOOD_CHAINS))
    good = st.sampled_from(["0", "1", "3", "12.5", " 7 ", "-0.0", "1e3"])
    return {"country": draw(TOKENS), "age": draw(mostly(good, CELLS)),
            "slot": draw(mostly(st.sampled_from(["0", "1", "42", "+7", "2.0"]), CELLS)),
            "click": draw(mostly(st.just(click), CELLS)),
            "buy": draw(mostly(st.just(buy), CELLS)),
            "amount": draw(mostly(st.just(amount), CELLS))}


ROWS = st.lists(table_rows(), min_size=1, max_size=8)


COLUMNS = ["country", "age", "slot", "click", "buy", "amount"]


def as_csv(rows) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([row[column] for column in COLUMNS])
    return out.getvalue().encode()


def line_breaks(text: str) -> int:
    """Physical line breaks in a cell: LF, CRLF and a lone CR count once each."""
    return text.count("\n") + text.count("\r") - text.count("\r\n")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(rows=ROWS)
def test_ingest_agrees_with_a_reference_reader(tmp_path_factory, rows):
    """Every row is written with the values the reference reads, or rejected with the
    reasons it gives; rows written + rejected == rows read."""
    tmp_path = tmp_path_factory.mktemp("property")
    path = write_bytes(tmp_path, as_csv(rows))
    expected = [reference_row(row) for row in rows]
    event(f"{sum(not reasons for _, reasons in expected)} of {len(rows)} rows good")
    try:
        result = run(tmp_path, path, bad_rows="reject")
    except DataValidationError as error:   # only when no row is good
        assert all(reasons for _, reasons in expected), str(error)
        assert "every one of" in str(error)
        return
    assert result.rows_read == len(rows)
    assert result.rows_written + (len(rejects_of(result)) if result.rejects_path else 0) == len(rows)
    bad_lines = {}
    if result.rejects_path:
        rejects = rejects_of(result)
        bad_lines = dict(zip(rejects["_line"].astype(int), rejects["_reasons"]))
    reject_counts: dict = {}
    written = []
    line = 2
    for row, (typed, reasons) in zip(rows, expected):
        if reasons:
            assert line in bad_lines, (row, reasons)
            got = {part.split(": ", 1)[0] for part in bad_lines.pop(line).split("; ")}
            assert got <= set(row), got
            for reason in reasons:
                reject_counts[reason] = reject_counts.get(reason, 0) + 1
        else:
            written.append(typed)
        line += 1 + sum(line_breaks(cell) for cell in row.values())
    assert bad_lines == {}
    assert result.reject_counts == reject_counts
    examples = read_examples(result)
    got = sorted((e["country"].bytes_list.value[0].decode(), e["age"].float_list.value[0],
                  e["slot"].int64_list.value[0], e["click"].int64_list.value[0],
                  e["buy"].int64_list.value[0], e["amount"].float_list.value[0])
                 for e in examples)
    want = sorted((t["country"], float(np.float32(t["age"])), t["slot"], int(t["click"]),
                   int(t["buy"]), float(np.float32(t["amount"]))) for t in written)
    assert got == want
