"""A note's sustain loop: the held part of a 4 s render looped without a click, so a key held longer than
the render sounds as long as it is held. The sampler export (`server.instrument_export`) writes these loop
points into its SFZ and SF2; `--play`'s mixer (`server.playback`) loops its voices over them."""

from __future__ import annotations

import numpy as np

LOOP_START_S = 1.0  # the loop runs over the later part of the held 3 s: past the attack, before the release
LOOP_END_S = 2.9
CROSSFADE_S = 0.05  # the loop's last 50 ms fade into the 50 ms before its start
ZERO_SEARCH_S = 0.02  # loop points move to the nearest rising zero crossing within this distance


def rising_zero(audio: np.ndarray, target: int, radius: int) -> int:
    """The rising zero crossing (a sample >= 0 after one < 0) nearest `target`, or `target` if none is near."""
    lo, hi = max(1, target - radius), min(audio.size - 1, target + radius)
    seg = audio[lo - 1 : hi]
    crossings = np.flatnonzero((seg[:-1] < 0) & (seg[1:] >= 0)) + lo  # (k,) indices of the sample >= 0
    return int(crossings[np.argmin(np.abs(crossings - target))]) if crossings.size else target


def loop(audio: np.ndarray, rate: int) -> tuple[np.ndarray, int, int]:
    """(audio with a seamless loop, loop start, loop end (exclusive)). The loop's last CROSSFADE_S blend
    (equal power) into the audio just before its start, so the sample played after the loop's last one is the
    one that followed that audio: the wrap is continuous. Both points are rising zero crossings, so leaving
    the loop at note-off (into the untouched release) jumps between two near-zero samples."""
    radius = int(ZERO_SEARCH_S * rate)
    start = rising_zero(audio, int(LOOP_START_S * rate), radius)
    end = rising_zero(audio, int(LOOP_END_S * rate), radius)
    n = min(int(CROSSFADE_S * rate), start, end - start)
    t = np.arange(1, n + 1) / n  # (n,) ends at 1: the last sample of the loop is the one before its start
    out = audio.astype(np.float32).copy()
    out[end - n : end] = audio[end - n : end] * np.cos(0.5 * np.pi * t) + audio[start - n : start] * np.sin(
        0.5 * np.pi * t
    )
    return out, start, end
