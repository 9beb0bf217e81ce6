"""The external-data files an ONNX graph reads, from its protobuf bytes (no onnx package).

ONNX Runtime loads a tensor stored outside the graph file (`data_location = EXTERNAL`, key
"location" in `external_data`) from a path relative to the graph. The artifact's sha256 check must
cover those files too, so `rt2edge.artifact` asks this module which files a graph names and refuses
any the manifest does not list. The robot has no `onnx` package: this walks the protobuf wire
format itself, only along the messages that can hold tensors, and skips every payload by its
length (a multi-GB graph is walked without reading its weights).

    ModelProto.graph (7) -> GraphProto.node (1) / initializer (5) / sparse_initializer (15)
    NodeProto.attribute (5) -> AttributeProto.t (5) / g (6) / tensors (10) / graphs (11) /
                               sparse_tensor (22) / sparse_tensors (23)
    SparseTensorProto.values (1) / indices (2) -> TensorProto.external_data (13): key (1), value (2)
"""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Callable, Iterator

MAX_DEPTH = 64  # nested subgraphs (If / Loop bodies); a deeper file is refused, not recursed into


class MalformedGraph(ValueError):
    """The bytes are not a well-formed ONNX protobuf."""


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise MalformedGraph("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, payload start, payload end) of one message's fields."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, after = _varint(buf, pos, end)
        elif wire == 1:
            after = pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            after = pos + length
        elif wire == 5:
            after = pos + 4
        else:
            raise MalformedGraph(f"unsupported wire type {wire}")
        if after > end:
            raise MalformedGraph("a field runs past its message")
        yield number, wire, pos, after
        pos = after


def _submessages(buf: memoryview, start: int, end: int, wanted: dict[int, Callable]) -> Iterator[str]:
    for number, wire, a, b in _fields(buf, start, end):
        if wire == 2 and number in wanted:
            yield from wanted[number](buf, a, b)


def _tensor(buf: memoryview, start: int, end: int) -> Iterator[str]:
    for number, wire, a, b in _fields(buf, start, end):
        if number == 13 and wire == 2:  # external_data: StringStringEntryProto
            entry = {n: bytes(buf[x:y]) for n, w, x, y in _fields(buf, a, b) if w == 2}
            if entry.get(1) == b"location" and 2 in entry:
                try:
                    yield entry[2].decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise MalformedGraph("an external data location is not UTF-8") from exc


def _sparse(buf: memoryview, start: int, end: int) -> Iterator[str]:
    yield from _submessages(buf, start, end, {1: _tensor, 2: _tensor})


def _graph(depth: int) -> Callable:
    if depth > MAX_DEPTH:
        raise MalformedGraph(f"subgraphs nested deeper than {MAX_DEPTH}")

    def walk(buf: memoryview, start: int, end: int) -> Iterator[str]:
        attribute = {5: _tensor, 10: _tensor, 22: _sparse, 23: _sparse, 6: _graph(depth + 1), 11: _graph(depth + 1)}

        def node(b: memoryview, s: int, e: int) -> Iterator[str]:
            yield from _submessages(b, s, e, {5: lambda b2, s2, e2: _submessages(b2, s2, e2, attribute)})

        yield from _submessages(buf, start, end, {1: node, 5: _tensor, 15: _sparse})
    return walk


def external_data_files(path: str | Path) -> list[str]:
    """The distinct external-data locations the ONNX graph at `path` names, in order of first use.
    MalformedGraph if the file is not a well-formed ONNX protobuf."""
    with open(path, "rb") as f:
        if Path(path).stat().st_size == 0:
            raise MalformedGraph("empty file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            buf = memoryview(mapped)
            try:
                found = list(_submessages(buf, 0, len(buf), {7: _graph(0)}))
            finally:
                buf.release()
    return list(dict.fromkeys(found))
