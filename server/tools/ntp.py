"""OSC time tags for clients that schedule ahead (the tests and the attacks): NTP seconds since 1900."""

from __future__ import annotations

import struct

NTP_TO_UNIX = 2_208_988_800  # seconds from 1900 to 1970


def tagged_bundle(at: float | None, *messages: bytes) -> bytes:
    """A bundle of encoded `messages` time-tagged for unix time `at` (None: OSC's "immediately")."""
    if at is None:
        tag = struct.pack(">II", 0, 1)
    else:
        ntp = at + NTP_TO_UNIX
        tag = struct.pack(">II", int(ntp), int((ntp % 1) * 2**32))
    return b"#bundle\0" + tag + b"".join(struct.pack(">i", len(m)) + m for m in messages)
