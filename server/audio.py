"""Audio at other rates, both ways: user files read into the model's format (any rate, any channel count, any
length → 4 s mono at 16 kHz; `server.dsp` turns it into a spectrogram) and the libsoxr resampler that does it,
which `server.delivery` also uses to bring renders to each client's rate.

numpy, soundfile and soxr only (no librosa, no scipy): the runtime installs light.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from server.dsp import SpectrogramParams


class AudioError(ValueError):
    """A file that cannot be read as audio; the message names the file and the reason."""


def resample(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """(n,) audio from `rate_in` to `rate_out` with libsoxr's high-quality ("HQ") band-limited filter; the length
    is n * rate_out / rate_in, rounded (64 000 samples at 16 kHz → 192 000 at 48 kHz). About 1 ms for a 4 s note
    on one core."""
    audio = np.ascontiguousarray(audio, np.float32)
    if rate_in == rate_out or audio.size == 0:
        return audio
    return np.asarray(soxr.resample(audio, rate_in, rate_out, quality="HQ"), np.float32)


def seconds_of(path: str | Path) -> float:
    """A sound file's length in seconds (its header's), or 0.0 if it cannot be read."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return 0.0
    return info.frames / info.samplerate if info.samplerate else 0.0


def load_audio(path: str | Path, p: SpectrogramParams = SpectrogramParams()) -> np.ndarray:
    """Read `path` → (n_samples,) float32 mono at p.sample_rate, cropped or zero-padded to 4 s.

    Raises AudioError for a missing, unreadable or empty file.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: {'a folder, not a sound file' if path.is_dir() else 'no such file'}")
    try:
        info = sf.info(str(path))
        # Read only what survives the crop (plus a little for the resampler) from long files.
        frames = min(info.frames, int(np.ceil(p.n_samples * info.samplerate / p.sample_rate)) + 64)
        data, rate = sf.read(str(path), frames=frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError(f"{path}: not a readable audio file ({exc})") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path}: the file holds no audio frames")
    mono = data.mean(axis=1)  # (n,)
    mono = resample(mono, rate, p.sample_rate)
    if not np.all(np.isfinite(mono)):
        raise AudioError(f"{path}: the audio holds NaN or infinite samples")
    out = np.zeros(p.n_samples, np.float32)
    n = min(p.n_samples, mono.shape[0])
    out[:n] = mono[:n]
    return out
