"""Wire format v1: payload shape, normalization, splitting into parts of at most 256 KiB."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runcov.export.wire import (
    MAX_LINE,
    MAX_PAYLOAD_BYTES,
    WIRE_VERSION,
    decode,
    encode_coverage,
    encode_static,
)


def test_single_payload_shape_matches_the_documented_example() -> None:
    files = [
        {
            "path": "shop/views.py",
            "sha": "3f1c9a0b2d4e6f70",
            "lines": {14, 12, 20, 13},
            "arcs": {(-11, 12), (12, 13), (13, 14), (14, 20), (20, -11)},
        }
    ]
    [payload] = encode_coverage(files)
    assert payload == (
        '{"v":1,"files":[{"path":"shop/views.py","sha":"3f1c9a0b2d4e6f70",'
        '"lines":[12,13,14,20],"arcs":[[-11,12],[12,13],[13,14],[14,20],[20,-11]]}]}'
    )


def test_static_payload_shape() -> None:
    files = [
        {
            "path": "shop/views.py",
            "sha": "3f1c9a0b2d4e6f70",
            "lines": [1, 3],
            "arcs": [[1, 3], [3, -1]],
            "functions": [{"name": "checkout", "start": 11, "end": 20}],
        }
    ]
    [payload] = encode_static(files)
    doc = json.loads(payload)
    assert doc == {
        "v": 1,
        "files": [
            {
                "path": "shop/views.py",
                "sha": "3f1c9a0b2d4e6f70",
                "lines": [1, 3],
                "arcs": [[1, 3], [3, -1]],
                "functions": [{"name": "checkout", "start": 11, "end": 20}],
            }
        ],
    }
    assert decode([payload]) == doc


def test_out_of_bounds_numbers_are_dropped() -> None:
    [payload] = encode_coverage(
        [{"path": "a.py", "sha": "0" * 16, "lines": [0, -3, 5, MAX_LINE, MAX_LINE + 1],
          "arcs": [(0, 1), (1, MAX_LINE + 1), (-MAX_LINE, 2), (2, 2)]}]
    )
    doc = json.loads(payload)
    assert doc["files"][0]["lines"] == [5, MAX_LINE]
    assert doc["files"][0]["arcs"] == [[-MAX_LINE, 2], [2, 2]]


def test_no_files_is_one_empty_payload() -> None:
    assert encode_coverage([]) == ['{"v":1,"files":[]}']


def test_many_files_are_packed_into_parts_under_the_limit() -> None:
    files = [
        {"path": f"pkg/mod_{i}.py", "sha": f"{i:016x}", "lines": range(1, 400),
         "arcs": [(n, n + 1) for n in range(1, 400)]}
        for i in range(200)
    ]
    payloads = encode_coverage(files)
    assert len(payloads) > 1
    for payload in payloads:
        assert len(payload.encode("utf-8")) <= MAX_PAYLOAD_BYTES
    # Files are not split when they fit, so each file appears in exactly one part.
    seen = [f["path"] for p in payloads for f in json.loads(p)["files"]]
    assert sorted(seen) == sorted(f["path"] for f in files)
    merged = decode(payloads)
    assert len(merged["files"]) == 200
    assert merged["files"][0]["lines"] == list(range(1, 400))


def test_one_huge_file_is_split_across_parts() -> None:
    lines = set(range(1, 150_000))
    arcs = {(n, n + 1) for n in range(1, 60_000)}
    payloads = encode_coverage([{"path": "big.py", "sha": "ab" * 8, "lines": lines, "arcs": arcs}])
    assert len(payloads) >= 3
    assert all(len(p) <= MAX_PAYLOAD_BYTES for p in payloads)
    [merged] = decode(payloads)["files"]
    assert set(merged["lines"]) == lines
    assert {tuple(a) for a in merged["arcs"]} == arcs


def test_non_ascii_paths_are_escaped_and_counted_in_bytes() -> None:
    files = [{"path": f"caf\u00e9/\u65e5\u672c_{i}.py", "sha": "1" * 16, "lines": range(1, 2000),
              "arcs": []} for i in range(40)]
    payloads = encode_coverage(files, limit=20_000)
    assert len(payloads) > 1
    for p in payloads:
        assert p.isascii()
        assert len(p.encode()) <= 20_000
    assert {f["path"] for f in decode(payloads)["files"]} == {f["path"] for f in files}


def test_decode_merges_parts_and_rejects_other_versions() -> None:
    a = '{"v":1,"files":[{"path":"a.py","sha":"s","lines":[3,1],"arcs":[[1,3]]}]}'
    b = '{"v":1,"files":[{"path":"a.py","sha":"s","lines":[2,3],"arcs":[[3,-1]]}]}'
    assert decode([a, b]) == {
        "v": WIRE_VERSION,
        "files": [{"path": "a.py", "sha": "s", "lines": [1, 2, 3], "arcs": [[1, 3], [3, -1]]}],
    }
    with pytest.raises(ValueError, match="version 1"):
        decode(['{"v":2,"files":[]}'])


file_strategy = st.fixed_dictionaries(
    {
        "path": st.text(min_size=1, max_size=40),
        "sha": st.text(alphabet="0123456789abcdef", min_size=16, max_size=16),
        "lines": st.sets(st.integers(1, MAX_LINE), max_size=300),
        "arcs": st.sets(
            st.tuples(st.integers(-MAX_LINE, MAX_LINE), st.integers(-MAX_LINE, MAX_LINE)).filter(
                lambda t: t[0] != 0 and t[1] != 0
            ),
            max_size=300,
        ),
    }
)


@settings(max_examples=60, deadline=None)
@given(files=st.lists(file_strategy, max_size=6, unique_by=lambda f: (f["path"], f["sha"])),
       limit=st.integers(1000, 6000))
def test_roundtrip_and_limit_property(files: list[dict[str, Any]], limit: int) -> None:
    payloads = encode_coverage(files, limit=limit)
    for p in payloads:
        assert len(p.encode("utf-8")) <= limit
    merged = {(f["path"], f["sha"]): f for f in decode(payloads)["files"]}
    for f in files:
        if not f["lines"] and not f["arcs"]:
            continue
        got = merged[(f["path"], f["sha"])]
        assert got["lines"] == sorted(f["lines"])
        assert [tuple(a) for a in got["arcs"]] == sorted(f["arcs"])
