"""The performer's instrument: two codemaps, the conditioning, an undo history, and every operation on them.

Single-threaded and free of OSC: `server.worker` runs one operation at a time, `server.osc` turns messages
into operations. Inputs that depend on the model (pitch range, families, grid sizes, code range) are checked
here and raise EngineError with a message fit for an `/error` reply; a failed operation changes nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from server import codemaps, dsp, vqvae_audio
from server.audio import AudioError, load_audio, seconds_of
from server.bundle import Bundle
from server.files import atomic_write
from server.protocol import DEFAULTS, SOUND_FIELDS
from server.sampling import Conditioning, Inpainter

SESSION_VERSION = 1
NOTE_MODES = ("generate", "resample")
Progress = Callable[[float], None]


class EngineError(ValueError):
    """An operation the current model or state cannot do; nothing was changed."""


@dataclass(frozen=True)
class Settings:
    """The conditioning and sampling parameters: set at any time, read when an operation starts."""

    # Defaults: `server.protocol.SETTINGS`, where each setting's address and default are written once.
    pitch: int = DEFAULTS["pitch"]
    family: int = DEFAULTS["family"]
    temperature: float = DEFAULTS["temperature"]
    top_p: float = DEFAULTS["top_p"]
    guidance: float = DEFAULTS["guidance"]
    harmonic: float = DEFAULTS["harmonic"]
    timbre: float = DEFAULTS["timbre"]
    seed: int = DEFAULTS["seed"]
    note_mode: str = DEFAULTS["note_mode"]
    # How renders reach the performer (server.level); not part of a note's sound, so not of its cache key.
    level: float = DEFAULTS["level"]  # dBFS RMS over the held part
    gain: float = DEFAULTS["gain"]  # dB
    velocity_curve: float = DEFAULTS["velocity_curve"]
    release: float = DEFAULTS["release"]  # s, after a note-off
    fill: bool = DEFAULTS["fill"]  # fill the note cache across the pitch range when idle

    def conditioning(self, pitch: int | None = None) -> Conditioning:
        pitch = self.pitch if pitch is None else pitch
        return Conditioning(pitch, self.family, self.temperature, self.top_p, self.guidance, self.harmonic, self.timbre)


@dataclass
class Note:
    """A cached note: codes and the model's audio (before level, velocity and resampling)."""

    top: np.ndarray
    bottom: np.ndarray
    audio: np.ndarray


class Engine:
    """Codemaps, settings and history over one bundle. Every edit goes through `_commit`, which records undo."""

    def __init__(self, bundle: Bundle, history_limit: int = 100, note_cache: int = 128, phase: str = dsp.PHASES[0]):
        self.bundle = bundle
        self.phase = phase  # how renders are inverted (dsp.invert): for the whole session, so cached notes agree
        self.manifest = bundle.manifest
        self.inpainter = Inpainter.from_bundle(bundle)
        self.settings = Settings(family=min(Settings.family, len(self.manifest.families) - 1))
        # The codes of a silent note: what `erase` writes and where a new session starts.
        silence = np.zeros(self.manifest.spectrogram.n_samples, np.float32)
        self.silence_top, self.silence_bottom = vqvae_audio.encode_audio(bundle, silence)
        self.top, self.bottom = self.silence_top.copy(), self.silence_bottom.copy()
        self.last_spectrogram: np.ndarray | None = None  # of the last render, for pictures
        self.rendered_version = -1  # the version that spectrogram shows
        self.version = 0
        self.draws = 0  # random operations since the seed was set: the next one draws from (seed, draws)
        self.undo_stack: list[tuple[np.ndarray, np.ndarray]] = []
        self.redo_stack: list[tuple[np.ndarray, np.ndarray]] = []
        self.history_limit = history_limit
        self.notes: OrderedDict[tuple, Note] = OrderedDict()
        self.key_draws: dict[int, int] = {}  # pitch → times /note/redraw drew its note anew: part of its sound
        self.channel_families: dict[int, int] = {}  # MIDI channel 1-16 → its own family (/channel/instrument)
        self.note_cache_size = note_cache
        # (key, top, bottom, spectrogram or None) of a note stopped after its sampling: `make_note` goes on from it.
        self._unfinished: tuple[Any, np.ndarray | None, np.ndarray | None, np.ndarray | None] = (None, None, None, None)
        # Settings change on the receive thread while the worker edits: one lock over every change of state.
        self.lock = threading.RLock()
        self.save_lock = threading.Lock()  # the worker and the settings saver both write the session

    def update_settings(self, **changes: object) -> Settings:
        with self.lock:
            self.settings = replace(self.settings, **changes)  # type: ignore[arg-type]
            if "seed" in changes:
                self.draws = 0  # setting a seed, even the same one, restarts its random sequence
            return self.settings

    # ---- checks -------------------------------------------------------------------------------------------

    def check_pitch(self, pitch: int) -> int:
        lo, hi = self.manifest.pitch_range
        if not lo <= pitch <= hi:
            raise EngineError(f"pitch {pitch} is outside the model's range {lo}..{hi}")
        return pitch

    def family_index(self, value: int | str) -> int:
        families = self.manifest.families
        if isinstance(value, str):
            if value not in families:
                raise EngineError(f"unknown instrument {value!r}: one of {', '.join(families)}")
            return families.index(value)
        if not 0 <= value < len(families):
            raise EngineError(f"instrument {value} is outside 0..{len(families) - 1}")
        return value

    def range_mask(self, layer: str, t0: int, t1: int, f0: int, f1: int) -> np.ndarray:
        try:
            return codemaps.rectangle_mask(layer, t0, t1, f0, f1)
        except ValueError as exc:
            raise EngineError(str(exc)) from None

    def cells_mask(self, layer: str, cells: Iterable[tuple[int, ...]]) -> np.ndarray:
        rows, cols = self.layer_shape(layer)
        mask = np.zeros((rows, cols), bool)
        for t, f, *_ in cells:
            self._check_cell(layer, t, f)
            mask[f, t] = True
        return mask

    def layer_shape(self, layer: str) -> tuple[int, int]:
        try:
            return codemaps.layer_shape(layer)
        except ValueError as exc:
            raise EngineError(str(exc)) from None

    def _check_cell(self, layer: str, t: int, f: int) -> None:
        rows, cols = self.layer_shape(layer)
        if not (0 <= t < cols and 0 <= f < rows):
            raise EngineError(f"{layer} cell (t={t}, f={f}) is outside the {rows} x {cols} grid")

    # ---- history ------------------------------------------------------------------------------------------

    def _commit(self, top: np.ndarray, bottom: np.ndarray) -> None:
        with self.lock:
            self.undo_stack.append((self.top, self.bottom))
            del self.undo_stack[: -self.history_limit]
            self.redo_stack.clear()
            self._set(top, bottom)

    def _commit_layer(self, layer: str, codes: np.ndarray) -> None:
        if layer == "top":
            self._commit(codes, self.bottom)
        else:
            self._commit(self.top, codes)

    def _set(self, top: np.ndarray, bottom: np.ndarray) -> None:
        self.top, self.bottom = top.astype(np.int64), bottom.astype(np.int64)
        self.version += 1

    def undo(self) -> None:
        with self.lock:
            if not self.undo_stack:
                raise EngineError("nothing to undo")
            self.redo_stack.append((self.top, self.bottom))
            self._set(*self.undo_stack.pop())

    def redo(self) -> None:
        with self.lock:
            if not self.redo_stack:
                raise EngineError("nothing to redo")
            self.undo_stack.append((self.top, self.bottom))
            self._set(*self.redo_stack.pop())

    # ---- operations ---------------------------------------------------------------------------------------

    def _rng(self) -> np.random.Generator:
        with self.lock:  # a /seed arriving now must not be undone by this increment
            self.draws += 1
            return np.random.default_rng([self.settings.seed, self.draws])

    def generate(self, progress: Progress | None = None) -> None:
        self._commit(*self.inpainter.generate(self.settings.conditioning(), self._rng(), progress))

    def inpaint(self, layer: str, mask: np.ndarray, progress: Progress | None = None) -> None:
        """Regenerate the masked cells of `layer`; a top edit also resamples the bottom cells beneath."""
        cond = self.settings.conditioning()
        self._commit(*self.inpainter.inpaint(self.top, self.bottom, layer, mask, cond, self._rng(), progress))

    def resample_bottom(self, progress: Progress | None = None) -> None:
        """Keep the top map, draw a whole new bottom map (the paper's third experiment)."""
        cond = self.settings.conditioning()
        self._commit(self.top, self.inpainter.resample_bottom(self.top, self.bottom, cond, self._rng(), progress))

    def erase(self, layer: str, mask: np.ndarray) -> None:
        """Masked cells take the codes of silence; a top erase silences the bottom cells beneath too."""
        top, bottom = self.top.copy(), self.bottom.copy()
        if layer == "top":
            top[mask] = self.silence_top[mask]
            mask = codemaps.upsample_mask(mask)
        bottom[mask] = self.silence_bottom[mask]
        self._commit(top, bottom)

    def randomize(self, layer: str, mask: np.ndarray) -> None:
        """Uniformly random codes in the masked cells of `layer` (NOTONO's random brush: no prior involved)."""
        codes = self.top.copy() if layer == "top" else self.bottom.copy()
        codes[mask] = self._rng().integers(0, self.manifest.n_codes, int(mask.sum()))
        self._commit_layer(layer, codes)

    def check_codes(self, layer: str, cells: Iterable[tuple[int, int, int]]) -> None:
        """(t, f, code) triples: every cell inside the layer's grid, every code in the codebook."""
        for t, f, code in cells:
            self._check_cell(layer, t, f)
            if not 0 <= code < self.manifest.n_codes:
                raise EngineError(f"code {code} is outside 0..{self.manifest.n_codes - 1}")

    def set_cells(self, layer: str, cells: list[tuple[int, int, int]]) -> None:
        self.check_codes(layer, cells)
        codes = self.top.copy() if layer == "top" else self.bottom.copy()
        for t, f, code in cells:
            codes[f, t] = code
        self._commit_layer(layer, codes)

    def analyze(self, path: Path) -> float:
        """Encode a sound file as the current codemaps; returns its length in seconds (the note's is fixed: a
        longer file is cut, a shorter one padded with silence)."""
        try:
            audio = load_audio(path, self.manifest.spectrogram)
        except AudioError as exc:
            raise EngineError(str(exc)) from None
        self._commit(*vqvae_audio.encode_audio(self.bundle, audio))
        return seconds_of(path)

    def warm(self) -> bool:
        """Idle-time work, about 2 ms per call: extend the bottom prior's key/value cache over the current maps so
        that the next bottom edit samples from it. True while more remains."""
        cond, bottom = self.settings.conditioning(), self.inpainter.bottom
        memory = bottom.encode(codemaps.to_sequence(self.top, "top"), cond)
        return bottom.warm(codemaps.to_sequence(self.bottom, "bottom"), cond, memory)

    def render(self, timings: dict[str, float] | None = None) -> np.ndarray:
        """The current codemaps → (n_samples,) float32 audio; the spectrogram is kept for pictures.
        `timings` (s) receives the decoder's and the inversion's time."""
        self.rendered_version = self.version
        t0 = time.perf_counter()
        self.last_spectrogram = vqvae_audio.decode(self.bundle, self.top, self.bottom)
        t1 = time.perf_counter()
        audio = dsp.invert(self.last_spectrogram, self.manifest.spectrogram, phase=self.phase)
        if timings is not None:
            timings.update(decoder=t1 - t0, inversion=time.perf_counter() - t1)
        return audio

    # ---- notes --------------------------------------------------------------------------------------------

    def note_key(self, pitch: int, s: Settings | None = None) -> tuple:
        s = s or self.settings
        base: tuple = (pitch, *(getattr(s, name) for name in SOUND_FIELDS))
        if self.key_draws.get(pitch):  # a redrawn key: its own random stream (keys never redrawn keep theirs)
            base = (*base, self.key_draws[pitch])
        if s.note_mode == "resample":  # keeps the top map: the sound depends on it
            return (*base, hashlib.blake2b(self.top.tobytes(), digest_size=8).hexdigest())
        return base

    def channel_settings(self, channel: int | None) -> Settings:
        """The settings a note on `channel` is drawn with: the current ones, with the channel's own family."""
        with self.lock:
            family = self.channel_families.get(channel) if channel is not None else None
            return self.settings if family is None else replace(self.settings, family=family)

    def set_channel_family(self, channel: int, family: int | None) -> None:
        """A channel's own family, or None: the channel plays the current family again."""
        with self.lock:
            if family is None:
                self.channel_families.pop(channel, None)
            else:
                self.channel_families[channel] = self.family_index(family)

    def last_edit(self, layer: str) -> np.ndarray | None:
        """(rows, cols) bool: the cells of `layer` the last edit changed (None before any edit)."""
        with self.lock:
            if not self.undo_stack:
                return None
            before = self.undo_stack[-1][0 if layer == "top" else 1]
            return (self.top if layer == "top" else self.bottom) != before

    def cached_note(self, pitch: int, s: Settings | None = None) -> Note | None:
        key = self.note_key(pitch, s)
        note = self.notes.get(key)
        if note is not None:
            self.notes.move_to_end(key)
        return note

    def redraw(self, pitch: int) -> None:
        """The key's next note is drawn anew: its cached one (if any) is forgotten for these settings."""
        with self.lock:
            self.check_pitch(pitch)
            self.key_draws[pitch] = self.key_draws.get(pitch, 0) + 1

    def stale_note(self, pitch: int, family: int | None = None) -> Note | None:
        """The most recent cached note of `pitch` under other settings (of `family` when given), or None. A knob
        turned while playing changes every note's key: until the fill has rendered the key anew, it plays this
        one (as a synth plays on while its next patch loads), instead of a 0.3-0.9 s render that cancels the
        melody. A channel with its own instrument asks for its family: another channel's note is not its sound."""
        at = 1 + SOUND_FIELDS.index("family")
        for key in reversed(self.notes):
            if key[0] == pitch and (family is None or key[at] == family):
                return self.notes[key]
        return None

    def make_note(
        self,
        pitch: int,
        progress: Progress | None = None,
        settings: Settings | None = None,
        between: Callable[[], None] | None = None,
        run_options: Any = None,
    ) -> Note:
        """Sample and render the note for `pitch` under the current settings (or `settings`: an export holds
        one set across its keys), deterministically: the random stream comes from the note's key, so a cached
        note is exactly what sampling again would give.

        `progress` runs after every sampled token, and `between()` (default: `progress(1.0)`) between the stages:
        sampling, the decoder, the projection and each group of frames of the inversion. Raising from either
        stops the note there; what was done after the sampling is kept for this key (one note), so the next call
        for it goes on from where this one stopped: the note cache's fill gives way to a request without losing
        its work. `run_options` (`Bundle.stoppable`) lets another thread stop the decoder halfway."""
        s = settings or self.settings  # read once: the key, the conditioning and the mode must agree
        key = self.note_key(pitch, s)
        top, bottom, spectrogram = self._unfinished[1:] if self._unfinished[0] == key else (None, None, None)
        if top is None or bottom is None:
            seed = int.from_bytes(hashlib.blake2b(repr(key).encode(), digest_size=8).digest(), "little")
            rng = np.random.default_rng(seed)
            cond = s.conditioning(pitch)
            if s.note_mode == "generate":
                top, bottom = self.inpainter.generate(cond, rng, progress)
            else:
                mask = np.ones(codemaps.BOTTOM_SHAPE, bool)
                top, bottom = self.inpainter.inpaint(self.top, self.bottom, "bottom", mask, cond, rng, progress)
        if between is None:
            between = (lambda: progress(1.0)) if progress is not None else (lambda: None)
        try:
            if spectrogram is None:
                between()
                spectrogram = vqvae_audio.decode(self.bundle, top, bottom, run_options)
            between()
            audio = dsp.invert(spectrogram, self.manifest.spectrogram, between, phase=self.phase)
        except BaseException:
            self._unfinished = (key, top, bottom, spectrogram)
            raise
        self._unfinished = (None, None, None, None)
        note = Note(top, bottom, audio)
        self.notes[key] = note
        while len(self.notes) > self.note_cache_size:
            self.notes.popitem(last=False)
        return note

    def fill_status(self) -> tuple[int, int, int | None]:
        """(notes cached, notes in the pitch range, the next pitch to fill) for the current settings; the next
        is the uncached pitch nearest the current one, so the part of the keyboard in use fills first."""
        s = self.settings
        lo, hi = self.manifest.pitch_range
        missing = [p for p in range(lo, hi + 1) if self.note_key(p, s) not in self.notes]
        total = hi - lo + 1
        return total - len(missing), total, min(missing, key=lambda p: abs(p - s.pitch)) if missing else None

    def play_note(self, pitch: int, note: Note) -> None:
        """A note-on: the note's pitch becomes the conditioning and its codes the current state."""
        with self.lock:
            self.update_settings(pitch=pitch)
            self._commit(note.top, note.bottom)

    # ---- session ------------------------------------------------------------------------------------------

    def save(self, path: Path, durable: bool = True) -> None:
        """Everything a restart needs, written atomically (a temporary file, then a rename) and durably: the
        file is fsynced before the rename and its folder after, so a save that returned survives a power cut
        (as SQLite and PostgreSQL commit). The state is copied under `lock` (a fraction of a millisecond, so
        the receive thread never waits on the disk; saves run on the worker and the settings saver), and
        writers take turns, so a later snapshot is never replaced by an earlier one. `durable=False` skips the
        two fsyncs: only the benchmark uses it, to measure what they cost."""
        with self.save_lock:
            with self.lock:
                arrays = self._snapshot()
            buffer = io.BytesIO()
            np.savez(buffer, **arrays)
            atomic_write(path, buffer.getvalue(), durable=durable)  # a random temporary name: none to plant

    def _snapshot(self) -> dict[str, Any]:  # name → array, for np.savez
        meta = {
            "session_version": SESSION_VERSION,
            "bundle": self.manifest.raw.get("name", ""),
            "settings": asdict(self.settings),
            "version": self.version,
            "draws": self.draws,
            "key_draws": {str(k): v for k, v in self.key_draws.items()},
            "channel_families": {str(k): v for k, v in self.channel_families.items()},
        }
        arrays = {"top": self.top, "bottom": self.bottom, "meta": np.array(json.dumps(meta))}
        for name, stack in (("undo", self.undo_stack), ("redo", self.redo_stack)):
            arrays[f"{name}_top"] = np.array([t for t, _ in stack], np.int16).reshape(-1, *codemaps.TOP_SHAPE)
            arrays[f"{name}_bottom"] = np.array([b for _, b in stack], np.int16).reshape(-1, *codemaps.BOTTOM_SHAPE)
        return arrays

    def load(self, path: Path) -> None:
        """Restore a saved session; raises EngineError (and changes nothing) if the file is not one this model
        can play: every field is checked for its type and range before anything is kept."""
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                if not isinstance(meta, dict):
                    raise EngineError(f"{path}: session meta is a {type(meta).__name__}, not an object")
                if meta.get("session_version") != SESSION_VERSION:
                    raise EngineError(f"{path}: session version {meta.get('session_version')!r} is not supported")
                maps = [data[k].astype(np.int64) for k in ("top", "bottom")]
                stacks = [
                    list(zip(data[f"{n}_top"].astype(np.int64), data[f"{n}_bottom"].astype(np.int64), strict=True))
                    for n in ("undo", "redo")
                ]
        except EngineError:
            raise
        except Exception as exc:  # numpy and zipfile raise many kinds on a damaged file; none may stop a start
            raise EngineError(f"{path}: not a readable session ({type(exc).__name__}: {exc})") from None
        settings = _settings_from(meta.get("settings"), path)
        version, draws = (_count(meta.get(k), k, path) for k in ("version", "draws"))
        key_draws = _int_map(meta.get("key_draws", {}), "key_draws", path)
        channels = _int_map(meta.get("channel_families", {}), "channel_families", path)  # none before /channel
        for channel, family in channels.items():
            if not 1 <= channel <= 16:
                raise EngineError(f"{path}: channel_families has channel {channel}, outside 1..16")
            self.family_index(family)
        for top, bottom in [maps, *stacks[0], *stacks[1]]:
            if top.shape != codemaps.TOP_SHAPE or bottom.shape != codemaps.BOTTOM_SHAPE:
                raise EngineError(f"{path}: codemaps of the wrong shape")
            if min(top.min(), bottom.min()) < 0 or max(top.max(), bottom.max()) >= self.manifest.n_codes:
                raise EngineError(f"{path}: codes outside this model's 0..{self.manifest.n_codes - 1}")
        self.check_pitch(settings.pitch)
        self.family_index(settings.family)
        if settings.note_mode not in NOTE_MODES:
            raise EngineError(f"{path}: unknown note mode {settings.note_mode!r}")
        self.top, self.bottom = maps
        self.undo_stack, self.redo_stack = stacks
        self.settings, self.version, self.draws, self.key_draws = settings, version, draws, key_draws
        self.channel_families = channels


def _settings_from(stored: object, path: Path) -> Settings:
    """Settings from a session's JSON, each field of its default's type (an int where an int belongs: `4.0` is
    not a family; a float may be written as an int); a field left out takes its default."""
    if not isinstance(stored, dict):
        raise EngineError(f"{path}: session settings missing or not an object")
    values: dict[str, Any] = {}
    for f in fields(Settings):
        if f.name not in stored:
            continue
        value, kind = stored[f.name], type(getattr(Settings, f.name))  # bool, int, float or str
        if kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        else:
            ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        if not ok:
            raise EngineError(f"{path}: setting {f.name} is {value!r}, not {_KINDS[kind]}")
        values[f.name] = kind(value)
    return Settings(**values)  # a setting this version does not know is left out, not a reason to refuse


_KINDS = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}


def _int_map(stored: object, name: str, path: Path) -> dict[int, int]:
    """A session's {"60": 2} (redrawn keys, channels' families); sessions before them have none."""
    if not isinstance(stored, dict) or not all(isinstance(k, str) and k.isdigit() for k in stored):
        raise EngineError(f"{path}: {name} must map numbers to counts, not {str(stored)[:80]}")
    return {int(k): _count(v, f"{name}[{k}]", path) for k, v in stored.items()}


def _count(value: object, name: str, path: Path) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise EngineError(f"{path}: session {name} is {value!r}, not a count")
    return value
