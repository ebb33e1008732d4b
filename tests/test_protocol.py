"""Framing: Airflow's own length-prefixed msgpack frames; oversized or garbage input is an error."""

from __future__ import annotations

import pytest

from airflow.sdk.execution_time.comms import _RequestFrame
from multitrigger.protocol import FrameError, FrameReader


def frame(i: int, body: dict) -> bytes:
    return bytes(_RequestFrame(id=i, body=body).as_bytes())


def test_frames_split_across_reads_are_reassembled() -> None:
    data = frame(1, {"type": "GetConnection", "conn_id": "x"}) + frame(2, {"type": "GetVariable", "key": "k"})
    reader = FrameReader()
    got = []
    for i in range(0, len(data), 3):
        got += reader.feed(data[i : i + 3])
    assert [(f.id, f.body["type"]) for f in got] == [(1, "GetConnection"), (2, "GetVariable")]


def test_oversized_frame_is_refused_before_it_is_buffered() -> None:
    reader = FrameReader(max_frame=1024)
    with pytest.raises(FrameError, match="exceeds"):
        reader.feed((10**6).to_bytes(4, "big") + b"x")


def test_garbage_is_refused() -> None:
    with pytest.raises(FrameError, match="undecodable"):
        FrameReader().feed((5).to_bytes(4, "big") + b"\xc1\xc1\xc1\xc1\xc1")
