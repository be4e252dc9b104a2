"""The OSC wire format as this server speaks it: replies encoded with int32, float32 and string arguments only
(what Max and Pd read), and the framing check a bundle passes before python-osc parses it. No sockets and no
engine: `server.osc` (the server) and `server.client` (a client) both use it."""

from __future__ import annotations

import re
import struct
from typing import Any

import numpy as np

from server.protocol import INT32, MAX_DATAGRAM


def bundle_problem(data: bytes, depth: int = 0) -> str:
    """What is wrong with an OSC bundle's framing, or "" (also for plain messages). python-osc loops forever
    on an element of size 0 and misreads negative sizes (found by the fuzzer): such datagrams never reach it."""
    if not data.startswith(b"#bundle\0"):
        return ""
    if depth > 8:
        return "bundles nested more than 8 deep"
    pos = 16  # after "#bundle\0" and the 8-byte time tag
    while pos < len(data):
        if pos + 4 > len(data):
            return f"truncated element size at byte {pos}"
        size = struct.unpack(">i", data[pos : pos + 4])[0]
        if size <= 0 or size % 4 or pos + 4 + size > len(data):
            return f"element size {size} at byte {pos} (a positive multiple of 4 within the datagram)"
        inner = bundle_problem(data[pos + 4 : pos + 4 + size], depth + 1)
        if inner:
            return inner
        pos += 4 + size
    return ""


KNOWN_TAGS = "ifdsbhtmrTFN"  # the argument types python-osc reads whole (others it skips unread)
_UNKNOWN_TAG = re.compile(f"[^{KNOWN_TAGS}\\[\\]]")
MAX_ARRAY_DEPTH = 4


def type_tag_problem(data: bytes) -> str:
    """A type tag python-osc would skip without consuming its bytes (shifting every later argument: `,ci` read
    as one int from the `c`'s bytes) or arrays nested deeper than MAX_ARRAY_DEPTH, in any message of the
    datagram; "" if none. Run after `bundle_problem`, which checks the framing walked here."""
    if data.startswith(b"#bundle\0"):
        pos = 16
        while pos + 4 <= len(data):
            size = struct.unpack(">i", data[pos : pos + 4])[0]
            problem = type_tag_problem(data[pos + 4 : pos + 4 + size])
            if problem:
                return problem
            pos += 4 + size
        return ""
    end = data.find(b"\0")
    tags_at = (end // 4 + 1) * 4 if end >= 0 else len(data)
    if data[tags_at : tags_at + 1] != b",":
        return ""  # no type tags: python-osc reads no arguments, or refuses the message itself
    tag_end = data.find(b"\0", tags_at)
    tags = data[tags_at + 1 : tag_end if tag_end >= 0 else len(data)].decode("ascii", "replace")
    unknown = _UNKNOWN_TAG.search(tags)  # in C: a 64 kB datagram's thousands of tags on the receive thread
    if unknown:
        return f"argument type {unknown.group()!r} is not one this server reads (i f d s b h t m r T F N and arrays)"
    if "[" in tags:
        depth = 0
        for tag in tags:
            depth += (tag == "[") - (tag == "]")
            if depth > MAX_ARRAY_DEPTH:
                return f"arrays nested more than {MAX_ARRAY_DEPTH} deep"
    return ""


def _pad(b: bytes) -> bytes:
    return b + b"\0" * (4 - len(b) % 4)


def encode(address: str, *args: Any) -> bytes:
    """An OSC message with explicit i/f/s types; a numpy array argument becomes that many floats."""
    tags, data = [","], []
    for a in args:
        if isinstance(a, np.ndarray):
            tags.append("f" * a.size)
            data.append(a.astype(">f4").tobytes())
        elif isinstance(a, str):
            tags.append("s")
            data.append(_pad(a.encode("utf-8")))
        elif isinstance(a, (bool, np.bool_)):
            raise TypeError("booleans are not sent: Max and Pd read no T/F")
        elif isinstance(a, (int, np.integer)):
            tags.append("i")
            data.append(struct.pack(">i", max(INT32[0], min(INT32[1], int(a)))))
        elif isinstance(a, (float, np.floating)):
            tags.append("f")
            data.append(struct.pack(">f", float(a)))
        else:
            raise TypeError(f"cannot send {type(a).__name__}")
    datagram = _pad(address.encode()) + _pad("".join(tags).encode()) + b"".join(data)
    if len(datagram) > MAX_DATAGRAM:
        raise ValueError(f"{address}: {len(datagram)}-byte datagram exceeds {MAX_DATAGRAM}")
    return datagram
