"""Playback on the server's own audio output (--play, /play) through sounddevice, when PortAudio and a device
exist: a small polyphonic mixer, so that notes overlap, a held note sounds as long as its key (its render's
held part looped, as the SF2 export loops it), the sustain pedal holds note-offs back, and a note-off fades
its pitch out over /release.

sounddevice is imported on first use: without libportaudio2 (or with no output device, as on headless
machines) the server still runs and `/play` answers `/error` saying why.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from server import looping

MAX_VOICES = 16  # past this the oldest voice is dropped
CUT_S = 0.01  # a voice replaced or stopped fades over 10 ms instead of clicking


class PlaybackError(RuntimeError):
    """No audio output: the message says what is missing."""


@dataclass
class Voice:
    audio: np.ndarray  # (n,) float32
    pitch: int | None  # a note's pitch; None for other renders (a new one replaces the last)
    loop: bool = False  # the whole render, over and over (/play 1)
    position: float = 0.0  # in samples of `audio`: fractional while a bend plays it faster or slower
    gain: float = 1.0
    fall: float = 0.0  # gain lost per sample once released
    sustain: tuple[int, int] | None = None  # a note's loop [start, end) while its key is held (server.looping)
    start_at: float | None = None  # time.perf_counter() it starts sounding at (a note-on tagged ahead); None: now

    def next(self, frames: int, ratio: float = 1.0) -> np.ndarray:
        """The next `frames` samples (fewer at the end), read `ratio` samples apart (a pitch bend: 2 ** (st /
        12)) with linear interpolation; advances `position`."""
        pos = self.position + ratio * np.arange(frames + 1)  # one more: where the next block starts
        n = self.audio.size
        pos = self._wrap(pos)
        pos = pos[pos < n]
        self.position = float(pos[frames]) if pos.size > frames else float(n)
        pos = pos[:frames]
        i = np.floor(pos).astype(np.int64)
        after = self._wrap(i + 1.0).astype(np.int64)
        frac = (pos - i).astype(np.float32)
        return self.audio[i] * (1 - frac) + self.audio[np.minimum(after, n - 1)] * frac

    def _wrap(self, pos: np.ndarray) -> np.ndarray:
        if self.loop:
            return pos % self.audio.size
        if self.sustain is not None and self.fall == 0.0:  # held: round the loop, never past its end
            start, end = self.sustain
            return np.where(pos >= end, start + (pos - start) % (end - start), pos)
        return pos


class Mixer:
    """Voices summed block by block; `mix` runs on the audio thread, the rest on the server's threads."""

    def __init__(self, rate: int):
        self.rate = rate
        self.voices: list[Voice] = []
        self.released: dict[int | None, float] = {}  # pitch → time.perf_counter() of its last note-off
        self.pedal = False  # the sustain pedal (CC 64) is down: note-offs wait for it to come up
        self.ratio = 1.0  # the pitch bend, as a playback speed: 2 ** (semitones / 12)
        self.pedalled: dict[int, float] = {}  # pitch → release seconds of the note-offs it holds back
        self.lock = threading.Lock()

    def add(
        self,
        audio: np.ndarray,
        pitch: int | None = None,
        loop: bool = False,
        struck: float | None = None,
        at: float | None = None,
    ) -> None:
        """A new voice; a note (`struck`: when its note-on arrived, or its time tag) whose key was released since
        is not played. `at` (time.perf_counter()): when it starts, to the sample (`mix`); None: at once."""
        with self.lock:
            if struck is not None and self.released.get(pitch, float("-inf")) > struck:
                return
            if at is None:
                self._gives_way(pitch)
            audio = np.asarray(audio, np.float32)
            sustain = None
            if pitch is not None and not loop and audio.size > looping.LOOP_END_S * self.rate:
                audio, start, end = looping.loop(audio, self.rate)  # held past its render, as the SF2 is
                sustain = (start, end)
            if pitch is not None:
                self.pedalled.pop(pitch, None)  # the key is down again: the pedal no longer holds its note-off
            self.voices.append(Voice(audio, pitch, loop, sustain=sustain, start_at=at))
            del self.voices[:-MAX_VOICES]

    def _gives_way(self, pitch: int | None, to: Voice | None = None) -> None:
        """The same key struck again, or a new render: the sounding voice of `pitch` fades out fast."""
        for v in self.voices:
            if v.pitch == pitch and v is not to and v.start_at is None:
                self._fade(v, CUT_S)

    def release(self, pitch: int | None, seconds: float, at: float | None = None) -> None:
        """Fade out the voices of `pitch` (every voice when None) over `seconds`; with the pedal down, a key's
        note-off waits for the pedal. `at`: the note-off's time tag; a note-on tagged after it is not its to end."""
        with self.lock:
            now = time.perf_counter() if at is None else at
            self.released[pitch] = now
            if self.pedal and pitch is not None:
                self.pedalled[pitch] = seconds
                return
            for v in self.voices:
                if (pitch is None or v.pitch == pitch) and (v.start_at is None or v.start_at < now):
                    self._fade(v, seconds)

    def bend(self, semitones: float) -> None:
        """Every note's pitch moved by `semitones` (the next block on), as a MIDI pitch wheel does."""
        with self.lock:
            self.ratio = float(2.0 ** (semitones / 12.0))

    def sustain(self, down: bool) -> None:
        """The sustain pedal: down holds every key released meanwhile; up releases them."""
        with self.lock:
            self.pedal = down
            if down:
                return
            held, self.pedalled = self.pedalled, {}
            for v in self.voices:
                if v.pitch in held:
                    self._fade(v, held[v.pitch])

    def _fade(self, v: Voice, seconds: float) -> None:
        v.fall = max(v.fall, 1.0 / max(1.0, seconds * self.rate))

    def mix(self, frames: int, now: float | None = None) -> np.ndarray:
        """The next `frames` samples of every voice summed: (frames,) float32. `now`: the time.perf_counter()
        the first of them sounds at (the stream's output latency included), which places a voice's `start_at`
        to the sample."""
        out = np.zeros(frames, np.float32)
        now = time.perf_counter() if now is None else now
        with self.lock:
            for v in self.voices:
                offset = 0
                if v.start_at is not None:
                    offset = max(0, round((v.start_at - now) * self.rate))
                    if offset >= frames:
                        continue  # not yet
                    v.start_at = None
                    self._gives_way(v.pitch, to=v)
                samples = v.next(frames - offset, self.ratio if v.pitch is not None else 1.0)  # bends move notes only
                env = np.clip(v.gain - v.fall * np.arange(1, samples.size + 1), 0.0, 1.0)
                out[offset : offset + samples.size] += samples * env
                v.gain = float(env[-1]) if samples.size else 0.0
            self.voices = [v for v in self.voices if v.gain > 0 and (v.loop or v.position < v.audio.size)]
        return out


class Player:
    """One output stream for the worker (--play) and /play, opened at the rate of what it plays."""

    def __init__(self) -> None:
        self._sd: Any = None
        self._stream: Any = None
        self.mixer: Mixer | None = None
        self.bent = 0.0  # semitones
        self._lock = threading.Lock()

    def _device(self) -> Any:
        if self._sd is None:
            try:
                import sounddevice
            except (ImportError, OSError) as exc:  # OSError: the PortAudio library itself is missing
                raise PlaybackError(f"no audio output: sounddevice/PortAudio unavailable ({exc})") from None
            self._sd = sounddevice
        try:
            self._sd.query_devices(kind="output")
        except Exception as exc:  # PortAudioError, ValueError: no default output device
            raise PlaybackError(f"no audio output device ({exc})") from None
        return self._sd

    def check(self) -> str:
        """ "" if there is an audio output to play on, else why not (said at start-up for --play)."""
        try:
            self._device()
        except PlaybackError as exc:
            return str(exc)
        return ""

    def play(
        self,
        audio: np.ndarray,
        sample_rate: int,
        loop: bool = False,
        pitch: int | None = None,
        struck: float | None = None,
        at: float | None = None,
    ) -> None:
        with self._lock:
            if self.mixer is None or self.mixer.rate != sample_rate or self._stream is None:
                self._open(sample_rate)
            assert self.mixer is not None
            self.mixer.add(audio, pitch, loop, struck, at)

    def _open(self, rate: int) -> None:
        sd = self._device()
        self._close()
        mixer = Mixer(rate)
        mixer.bend(self.bent)

        def callback(outdata: np.ndarray, frames: int, times: Any, _status: Any) -> None:
            # when this block's first sample reaches the output, on the perf_counter clock the tags are kept in
            ahead = max(0.0, times.outputBufferDacTime - times.currentTime) if times.currentTime else 0.0
            outdata[:, 0] = mixer.mix(frames, time.perf_counter() + ahead)

        try:
            self._stream = sd.OutputStream(samplerate=rate, channels=1, dtype="float32", callback=callback)
            self._stream.start()
        except Exception as exc:
            self._stream = None
            raise PlaybackError(f"playback failed ({exc})") from None
        self.mixer = mixer

    def release(self, pitch: int, seconds: float, at: float | None = None) -> None:
        if self.mixer is not None:  # none yet: nothing sounds, and a note before the first play cannot be late
            self.mixer.release(pitch, seconds, at)

    def sustain(self, down: bool) -> None:
        if self.mixer is not None:
            self.mixer.sustain(down)

    def bend(self, semitones: float) -> None:
        self.bent = semitones  # kept for a mixer opened later (the first note after a bend)
        if self.mixer is not None:
            self.mixer.bend(semitones)

    def stop(self) -> None:
        if self.mixer is not None:
            self.mixer.release(None, CUT_S)

    def _close(self) -> None:
        if self._stream is not None:
            try:
                self._stream.close()
            except Exception:  # a device that vanished: nothing left to close
                pass
            self._stream = None

    def close(self) -> None:
        with self._lock:
            self._close()
