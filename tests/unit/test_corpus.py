"""searchr1.retrieval.corpus: row shapes, streaming JSONL (plain and gzip), malformed lines."""

from __future__ import annotations

import gzip
import json

import pytest

from searchr1.errors import CorpusFormatError
from searchr1.retrieval.corpus import (
    BadLine,
    Passage,
    format_contents,
    iter_passages,
    parse_row,
    split_contents,
    write_passages,
)


def write_lines(path, lines: list[bytes | str]) -> None:
    with open(path, "wb") as f:
        for line in lines:
            f.write((line.encode("utf-8") if isinstance(line, str) else line) + b"\n")


# ----------------------------------------------------------------------------- contents strings


def test_format_contents_quotes_title():
    assert format_contents("Paris", "Capital of France.") == '"Paris"\nCapital of France.'


def test_split_contents_strips_quotes_and_keeps_rest_verbatim():
    assert split_contents('"Paris"\nline one\nline two') == ("Paris", "line one\nline two")


def test_split_contents_single_line_has_no_title():
    assert split_contents("just text") == ("", "just text")


# ----------------------------------------------------------------------------- parse_row


def test_parse_row_contents_shape():
    p = parse_row({"id": "7", "contents": '"Paris"\nCapital of France.'})
    assert p == Passage("7", "Paris", "Capital of France.", None)


def test_parse_row_title_text_shape():
    p = parse_row({"id": "8", "title": "Rome", "text": "Capital of Italy.", "extra": 1})
    assert p == Passage("8", "Rome", "Capital of Italy.", None)


def test_parse_row_text_without_title():
    assert parse_row({"id": "9", "text": "t"}) == Passage("9", "", "t")


def test_parse_row_int_id_becomes_str():
    p = parse_row({"id": 42, "text": "t"})
    assert p.doc_id == "42"
    assert isinstance(p.doc_id, str)


def test_parse_row_zero_id_is_valid():
    assert parse_row({"id": 0, "text": "t"}).doc_id == "0"


def test_parse_row_underscore_id_fallback():
    assert parse_row({"_id": 5, "text": "t"}).doc_id == "5"


def test_parse_row_id_takes_precedence_over_underscore_id():
    assert parse_row({"id": "a", "_id": "b", "text": "t"}).doc_id == "a"


def test_canonical_contents_is_not_kept_raw():
    p = parse_row({"id": 1, "contents": '"T"\nbody'})
    assert p.raw_contents is None
    assert p.contents == '"T"\nbody'


@pytest.mark.parametrize(
    "contents",
    [
        "T\nbody",            # title without quotes
        "single line only",   # no title line at all
        '"T" \nbody',          # trailing space after the quoted title
    ],
)
def test_non_canonical_contents_is_preserved_byte_for_byte(contents):
    p = parse_row({"id": 1, "contents": contents})
    assert p.raw_contents == contents
    assert p.contents == contents


@pytest.mark.parametrize(
    "row, reason",
    [
        ({"contents": '"T"\nx'}, "missing or invalid 'id'"),
        ({"id": None, "text": "x"}, "missing or invalid 'id'"),
        ({"id": [1], "text": "x"}, "missing or invalid 'id'"),
        ({"id": True, "text": "x"}, "missing or invalid 'id'"),
        ({"id": 1}, "need 'contents'"),
        ({"id": 1, "contents": 3}, "need 'contents'"),
        ({"id": 1, "title": 3, "text": "x"}, "'title' must be a string"),
        (["id", "contents"], "expected a JSON object, got list"),
    ],
)
def test_parse_row_rejects_bad_rows(row, reason):
    with pytest.raises(ValueError, match=reason):
        parse_row(row)


# ----------------------------------------------------------------------------- iter_passages


ROWS = [
    {"id": 1, "contents": '"A"\nalpha text'},
    {"id": "2", "title": "B", "text": "beta text"},
    {"id": 3, "contents": '"C"\ngamma text'},
]
EXPECTED = [Passage("1", "A", "alpha text"), Passage("2", "B", "beta text"), Passage("3", "C", "gamma text")]


def test_iter_passages_streams_jsonl(tmp_path):
    path = tmp_path / "c.jsonl"
    write_lines(path, [json.dumps(r) for r in ROWS])
    assert list(iter_passages(path)) == EXPECTED


def test_iter_passages_is_lazy(tmp_path):
    path = tmp_path / "c.jsonl"
    write_lines(path, [json.dumps(ROWS[0]), "{bad json"])
    it = iter_passages(path)
    assert next(it) == EXPECTED[0]  # the bad second line is not read yet
    with pytest.raises(CorpusFormatError):
        next(it)


def test_iter_passages_with_progress_bar_yields_the_same(tmp_path):
    path = tmp_path / "c.jsonl"
    write_lines(path, [json.dumps(r) for r in ROWS])
    assert list(iter_passages(path, progress=True)) == EXPECTED


def test_iter_passages_reads_gzip(tmp_path):
    path = tmp_path / "c.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for r in ROWS:
            f.write(json.dumps(r) + "\n")
    assert list(iter_passages(path)) == EXPECTED


def test_iter_passages_ignores_blank_lines(tmp_path):
    path = tmp_path / "c.jsonl"
    write_lines(path, ["", json.dumps(ROWS[0]), "   ", "\t", json.dumps(ROWS[1]), ""])
    assert list(iter_passages(path)) == EXPECTED[:2]


def test_iter_passages_handles_crlf_and_non_ascii(tmp_path):
    path = tmp_path / "c.jsonl"
    row = {"id": "é", "title": "Zürich", "text": "Stadt – 日本"}
    path.write_bytes(json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\r\n")
    assert list(iter_passages(path)) == [Passage("é", "Zürich", "Stadt – 日本")]


def test_iter_passages_missing_file(tmp_path):
    with pytest.raises(CorpusFormatError, match="not found"):
        list(iter_passages(tmp_path / "nope.jsonl"))


@pytest.mark.parametrize(
    "bad, reason",
    [
        (b'{"id": 1, "contents": ', "invalid JSON"),
        (b'{"contents": "\\"T\\"\\nx"}', "missing or invalid 'id'"),
        (b'{"id": 1, "text": "caf\xe9"}', "not valid UTF-8"),
        (b'[1, 2, 3]', "expected a JSON object"),
    ],
)
def test_malformed_line_raises_with_path_and_line_number(tmp_path, bad, reason):
    path = tmp_path / "c.jsonl"
    # line 1 good, line 2 blank, line 3 good, line 4 bad
    write_lines(path, [json.dumps(ROWS[0]), "", json.dumps(ROWS[1]), bad])
    with pytest.raises(CorpusFormatError) as e:
        list(iter_passages(path))
    assert f"{path}:4:" in str(e.value)
    assert reason in str(e.value)


def test_malformed_line_in_gzip_names_line(tmp_path):
    path = tmp_path / "c.jsonl.gz"
    with gzip.open(path, "wb") as f:
        f.write(json.dumps(ROWS[0]).encode() + b"\nnot json\n")
    with pytest.raises(CorpusFormatError, match=f"{path}:2: invalid JSON"):
        list(iter_passages(path))


def test_gz_suffix_on_an_uncompressed_file(tmp_path):
    path = tmp_path / "c.jsonl.gz"
    path.write_text(json.dumps(ROWS[0]) + "\n")
    with pytest.raises(CorpusFormatError, match="not a valid gzip file"):
        list(iter_passages(path))


def test_truncated_gzip_yields_what_it_can_then_names_the_file(tmp_path):
    path = tmp_path / "c.jsonl.gz"
    data = gzip.compress("".join(json.dumps(ROWS[0]) + "\n" for _ in range(2000)).encode())
    path.write_bytes(data[: len(data) // 2])
    got = []
    with pytest.raises(CorpusFormatError, match=f"{path}: not a valid gzip file"):
        for p in iter_passages(path):
            got.append(p)
    assert got and all(p == EXPECTED[0] for p in got)


def test_skip_collects_bad_lines_and_yields_good_rows(tmp_path):
    path = tmp_path / "c.jsonl"
    write_lines(
        path,
        [
            json.dumps(ROWS[0]),       # 1
            "not json",                # 2
            "",                        # 3 (blank: neither yielded nor bad)
            json.dumps(ROWS[1]),       # 4
            b'{"id": 9, "text": "\xff"}',  # 5
            '{"title": "no id"}',      # 6
            json.dumps(ROWS[2]),       # 7
        ],
    )
    bad: list[BadLine] = []
    got = list(iter_passages(path, on_bad_line="skip", bad_lines=bad))
    assert got == EXPECTED
    assert [b.lineno for b in bad] == [2, 5, 6]
    assert bad[0].raw == "not json"
    assert bad[0].reason.startswith("invalid JSON")
    assert bad[1].reason == "not valid UTF-8"
    assert "\ufffd" in bad[1].raw  # undecodable bytes shown with the replacement character
    assert bad[2].reason == "missing or invalid 'id'"


def test_skip_without_a_list_still_skips(tmp_path):
    path = tmp_path / "c.jsonl"
    write_lines(path, ["oops", json.dumps(ROWS[0])])
    assert list(iter_passages(path, on_bad_line="skip")) == EXPECTED[:1]


# ----------------------------------------------------------------------------- write_passages


@pytest.mark.parametrize("shape", ["contents", "title_text"])
@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_write_then_read_round_trip(tmp_path, shape, suffix):
    passages = [Passage("1", "A", "alpha\nsecond line"), Passage("2", "Bé", "beta"), Passage("3", "", "no title")]
    path = tmp_path / f"out{suffix}"
    assert write_passages(passages, path, shape=shape) == 3
    got = list(iter_passages(path))
    assert [(p.doc_id, p.title, p.text) for p in got] == [(p.doc_id, p.title, p.text) for p in passages]


def test_write_contents_shape_keeps_raw_contents(tmp_path):
    p = Passage("1", "T", "body", raw_contents="T\nbody")
    path = tmp_path / "out.jsonl"
    write_passages([p], path)
    assert json.loads(path.read_text()) == {"id": "1", "contents": "T\nbody"}
