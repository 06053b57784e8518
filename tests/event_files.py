"""Writers of event recordings in the exact on-disk formats tonic 1.x reads (for the loader tests).

* N-MNIST: 40-bit events (x, y, polarity|timestamp[22:16], timestamp[15:8], timestamp[7:0]) in
  ``Train/<digit>/<id>.bin`` (Orchard et al. 2015; ``tonic.io.read_mnist_file``).
* DVS128 Gesture: tonic's preprocessed release, ``ibmGestureTrain/user<NN>_<lighting>/<label>.npy``,
  rows ``(x, y, p, t in ms)``.
* CIFAR10-DVS: ``<class>/<id>.aedat4`` (AEDAT 4.0, read by tonic with the ``aedat`` package).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_nmnist_bin(path: Path, events: list[tuple[int, int, int, int]]) -> None:
    """``events``: (x, y, p, t_us) with t < 2**23, sorted by t."""
    out = bytearray()
    for x, y, p, t in events:
        assert 0 <= t < 2 ** 23 and 0 <= x < 256 and 0 <= y < 240
        out += bytes([x, y, (p << 7) | ((t >> 16) & 0x7F), (t >> 8) & 0xFF, t & 0xFF])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(out))


def write_gesture_npy(path: Path, events: list[tuple[int, int, int, int]]) -> None:
    """``events``: (x, y, p, t_ms), sorted by t."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.asarray(events, dtype=np.int64).reshape(-1, 4))


def synthetic_nmnist(root: Path, per_class: int, classes: int = 10, seed: int = 0,
                     events_per_sample: int = 60) -> None:
    """A learnable N-MNIST-format set: class ``c`` fires around pixel row ``3*c``, over 300 ms."""
    rng = np.random.default_rng(seed)
    for split, folder in (("train", "Train"), ("test", "Test")):
        for c in range(classes):
            for i in range(per_class):
                t = np.sort(rng.integers(0, 300_000, events_per_sample))
                y = np.clip(3 * c + rng.integers(-1, 2, events_per_sample), 0, 33)
                x = rng.integers(0, 34, events_per_sample)
                p = rng.integers(0, 2, events_per_sample)
                write_nmnist_bin(root / folder / str(c) / f"{i:05d}.bin",
                                 list(zip(x.tolist(), y.tolist(), p.tolist(), t.tolist())))


# --- AEDAT 4.0 (iniVation DV; https://docs.inivation.com/software/software-advanced-usage/file-formats/aedat-4.0.html):
# "#!AER-DAT4.0\r\n", then a size-prefixed flatbuffer IOHeader ("IOHE": compression, fileDataPosition,
# description = the XML stream list), then packets: u32 stream id, u32 byte count, a size-prefixed flatbuffer
# EventPacket ("EVTS") whose only field is a vector of 16-byte structs (i64 t, i16 x, i16 y, bool on, 3 pad).
# Written by hand (no compression) so the tests need no flatbuffers package.
_AEDAT4_MAGIC = b"#!AER-DAT4.0\r\n"
_AEDAT4_DESCRIPTION = ('<dv version="2.0"><node name="outInfo"><node name="0">'
                       '<attr key="typeIdentifier" type="string">EVTS</attr><node name="info">'
                       '<attr key="sizeX" type="int">{w}</attr><attr key="sizeY" type="int">{h}</attr>'
                       '</node></node></node></dv>')


def _u16(v: int) -> bytes:
    return int(v).to_bytes(2, "little")


def _u32(v: int) -> bytes:
    return int(v).to_bytes(4, "little", signed=v < 0)


def _aedat4_ioheader(description: str) -> bytes:
    text = description.encode() + b"\0"
    text += b"\0" * (-len(text) % 4)
    body = bytearray()
    body += _u32(20)                          # [4] root uoffset -> table at 24 (relative to position 4)
    body += b"IOHE"                           # [8] file identifier
    body += _u16(10) + _u16(8) + _u16(0) + _u16(0) + _u16(4)  # [12] vtable: 3 slots, only description set
    body += b"\0\0"                           # [22] pad
    body += _u32(12)                          # [24] table: soffset to the vtable at 12
    body += _u32(4)                           # [28] description: uoffset -> string at 32
    body += _u32(len(description.encode())) + text  # [32] string length, bytes, NUL
    return _u32(len(body)) + bytes(body)


def _aedat4_events_packet(events: list[tuple[int, int, int, int]]) -> bytes:
    body = bytearray()
    body += _u32(16)                          # [4] root uoffset -> table at 20
    body += b"EVTS"                           # [8]
    body += _u16(6) + _u16(8) + _u16(4)       # [12] vtable: 1 slot (elements) at table + 4
    body += b"\0\0"                           # [18] pad
    body += _u32(8)                           # [20] table: soffset to the vtable at 12
    body += _u32(4)                           # [24] elements: uoffset -> vector at 28
    body += _u32(len(events))                 # [28] vector length; structs from 32 (8-byte aligned)
    for x, y, p, t in events:
        body += int(t).to_bytes(8, "little", signed=True) + _u16(x) + _u16(y) + bytes([p]) + b"\0\0\0"
    payload = _u32(len(body)) + bytes(body)
    return _u32(0) + _u32(len(payload)) + payload


def write_aedat4(path: Path, events: list[tuple[int, int, int, int]], size: tuple[int, int] = (128, 128),
                 packet_size: int = 2) -> None:
    """``events``: (x, y, p, t_us) sorted by t, split into packets of ``packet_size`` events."""
    path.parent.mkdir(parents=True, exist_ok=True)
    packets = b"".join(_aedat4_events_packet(events[i:i + packet_size]) for i in range(0, len(events), packet_size))
    path.write_bytes(_AEDAT4_MAGIC + _aedat4_ioheader(_AEDAT4_DESCRIPTION.format(w=size[0], h=size[1])) + packets)
