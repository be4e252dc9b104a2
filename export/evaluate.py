"""`inpaint-train evaluate BUNDLE --data DIR`: what a bundle can do, measured, as a markdown report.

Everything runs through the exported bundle on onnxruntime (the graphs a performer's server runs), on the
held-out validation split of the dataset the bundle was trained on (the paper's seeded 80/20 split):
reconstruction (log-spectral distance, multi-resolution STFT distance, pitch kept), generation pitch accuracy
over the paper's grid of 11 families x 9 pitches, inpainting pitch kept (the paper's three experiments over
every validation note whose original reads at pitch, per family), codebook usage, the three experiments on
one note (audio, spectrograms, codemaps) and sampling speed; optionally the same reconstruction and
inpainting measures on notes of a soundfont the model never saw (`--unseen DATA`). Sampling uses the server's
default settings. The report and its media go under one folder.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import soundfile as sf

from export import timbre
from export.config import DataConfig
from export.family_judge import timbre_features
from export.metrics import (
    estimate_f0,
    high_band_db,
    log_spectral_distance,
    midi_to_hz,
    pitch_kept,
    stft_magnitudes,
)
from export.nsynth import Note, load_splits, read_note, read_notes
from server import codemaps, dsp, vqvae_audio
from server.bundle import Bundle
from server.files import shown
from server.picture import encode_png, spectrogram_picture
from server.sampling import Conditioning, Inpainter

GRID_PITCHES = (24, 31, 38, 45, 52, 59, 66, 73, 80)  # the paper's generation grid
TARGETS = {"pitch_accuracy": 0.90, "family_pitch_accuracy": 0.70, "inpaint_pitch_kept": 0.90,
           "recon_pitch_kept": 0.98, "codes_used": 0.50, "family_of_ceiling": 0.80, "worst_family_of_ceiling": 0.50,
           "diversity": 0.50, "recon_lsd_db": 5.0}  # fmt: skip
DEFAULTS = Conditioning(0, 0)  # the server's default sampling settings (temperature, top-p, guidance)
STFT_RESOLUTIONS = (512, 1024, 2048)  # n_fft of the multi-resolution distance (hop n_fft / 4, Hann)


# ---------------------------------------------------------------- measures


def multi_resolution_stft_distance(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Mean over resolutions of spectral convergence + mean |log magnitude difference| (the Parallel WaveGAN
    auxiliary loss, as a distance: 0 for identical audio)."""
    total = 0.0
    for n_fft in STFT_RESOLUTIONS:
        a, b = stft_magnitudes(reference, n_fft), stft_magnitudes(estimate, n_fft)
        convergence = np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-12)
        log_l1 = np.mean(np.abs(np.log(np.maximum(a, 1e-7)) - np.log(np.maximum(b, 1e-7))))
        total += convergence + log_l1
    return float(total / len(STFT_RESOLUTIONS))


def codebook_usage(codes: np.ndarray, n_codes: int) -> tuple[float, float]:
    """(perplexity, fraction of the codebook used) of a bag of code indices."""
    counts = np.bincount(codes.ravel(), minlength=n_codes).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(np.exp(-(p * np.log(p)).sum())), float((counts > 0).mean())


def _cents_off(audio: np.ndarray, pitch: int) -> float | None:
    target = midi_to_hz(pitch)
    f0 = estimate_f0(audio, fmin=max(20.0, target / 2.2), fmax=min(16_000 / 2.5, target * 2.2))
    return None if f0 is None else 1200 * math.log2(f0 / target)


# ---------------------------------------------------------------- experiments


@dataclass
class Reconstruction:
    family: int
    pitch: int
    lsd: float  # dB, VQ-VAE reconstruction vs original
    lsd_decoded_if: float  # dB, the same decoded spectrogram inverted with its own IF (the paper's inversion)
    lsd_representation: float  # dB, the spectrogram's own round trip (no VQ-VAE): the floor
    mrstft: float
    input_kept: bool  # the original's f0 reads within 50 cents of its MIDI pitch
    recon_kept: bool
    top: np.ndarray
    bottom: np.ndarray
    timbre: np.ndarray  # the family judge's features of the reconstruction
    timbre_original: np.ndarray  # and of the original
    darker_db: float  # high_band_db of the original minus the reconstruction's: > 0 when the VQ-VAE darkens it


def reconstruct(bundle: Bundle, notes: list[Note]) -> list[Reconstruction]:
    p = bundle.manifest.spectrogram
    rows = []
    for note in notes:
        audio = read_note(note, p)
        top, bottom = vqvae_audio.encode_audio(bundle, audio)
        spec = vqvae_audio.decode(bundle, top, bottom)
        recon = dsp.invert(spec, p)
        rows.append(
            Reconstruction(
                note.family,
                note.pitch,
                log_spectral_distance(audio, recon, p),
                log_spectral_distance(audio, dsp.invert(spec, p, phase="if"), p),
                log_spectral_distance(audio, dsp.invert(dsp.analyze(audio, p), p), p),
                multi_resolution_stft_distance(audio, recon),
                pitch_kept(audio, note.pitch),
                pitch_kept(recon, note.pitch),
                top,
                bottom,
                timbre_features(recon, note.pitch),
                timbre_features(audio, note.pitch),
                high_band_db(audio) - high_band_db(recon),
            )
        )
    return rows


@dataclass
class Generation:
    family: int
    pitch: int
    cents: float | None  # f0 of the generated note against the requested pitch; None: no f0 found
    priors_s: float
    decoder_s: float
    inversion_s: float
    timbre: np.ndarray  # the family judge's features

    @property
    def kept(self) -> bool:
        return self.cents is not None and abs(self.cents) <= 50


def generate_grid(
    bundle: Bundle, samples: int, seed: int, settings: Conditioning = DEFAULTS, pitches=GRID_PITCHES
) -> list[Generation]:
    inpainter = Inpainter.from_bundle(bundle)
    rows = []
    for family in range(len(bundle.manifest.families)):
        for pitch in pitches:
            for s in range(samples):
                cond = replace(settings, pitch=pitch, family=family)
                t0 = time.perf_counter()
                top, bottom = inpainter.generate(cond, np.random.default_rng([seed, family, pitch, s]))
                t1 = time.perf_counter()
                spec = vqvae_audio.decode(bundle, top, bottom)
                t2 = time.perf_counter()
                audio = dsp.invert(spec, bundle.manifest.spectrogram)
                t3 = time.perf_counter()
                timbre = timbre_features(audio, pitch)
                rows.append(Generation(family, pitch, _cents_off(audio, pitch), t1 - t0, t2 - t1, t3 - t2, timbre))
    return rows


INPAINTING = (
    ("time", "the first two seconds regenerated (top columns 0-1, and the bottom beneath)"),
    ("frequency", "the lower quarter of the frequencies regenerated (top rows 0-7, and the bottom beneath)"),
    ("bottom", "the top map kept, the whole bottom map resampled"),
)


@dataclass
class Inpainted:
    family: int
    kind: str  # one of INPAINTING's kinds
    cents: float | None  # f0 after the edit against the note's pitch
    timbre: np.ndarray  # the family judge's features after the edit

    @property
    def kept(self) -> bool:
        return self.cents is not None and abs(self.cents) <= 50


def inpaint_notes(
    bundle: Bundle, notes: list[Note], rows: list[Reconstruction], seed: int, settings: Conditioning = DEFAULTS
) -> list[Inpainted]:
    """The paper's three experiments on each note (its own codes, conditioned on its own pitch and family):
    does its f0 survive the edit?"""
    inpainter = Inpainter.from_bundle(bundle)
    out = []
    for i, (note, row) in enumerate(zip(notes, rows, strict=True)):
        cond = replace(settings, pitch=note.pitch, family=note.family)
        for j, (kind, _) in enumerate(INPAINTING):
            layer, mask = inpainting_masks(kind)
            top, bottom = inpainter.inpaint(row.top, row.bottom, layer, mask, cond, np.random.default_rng([seed, i, j]))
            audio = vqvae_audio.render(bundle, top, bottom)
            out.append(Inpainted(note.family, kind, _cents_off(audio, note.pitch), timbre_features(audio, note.pitch)))
    return out


def inpainting_masks(kind: str) -> tuple[str, np.ndarray]:
    """(layer, (F, T) mask) of one of the paper's three experiments."""
    if kind == "bottom":
        return "bottom", np.ones(codemaps.BOTTOM_SHAPE, bool)
    mask = np.zeros(codemaps.TOP_SHAPE, bool)
    if kind == "time":
        mask[:, : codemaps.TOP_SHAPE[1] // 2] = True
    else:
        mask[: codemaps.TOP_SHAPE[0] // 4] = True
    return "top", mask


# ---------------------------------------------------------------- pictures


def codemap_picture(codes: np.ndarray, changed: np.ndarray, cell: tuple[int, int]) -> np.ndarray:
    """(F, T) codes → RGB with one fixed colour per code, frequency upwards; changed cells get a white frame."""
    palette = np.random.default_rng(7).integers(40, 230, (int(codes.max()) + 1, 3)).astype(np.uint8)
    h, w = cell
    rgb = np.repeat(np.repeat(palette[codes], h, axis=0), w, axis=1)
    frame = np.zeros((h, w), bool)
    frame[[0, 1, -2, -1], :] = frame[:, [0, 1, -2, -1]] = True
    rgb[np.kron(changed, frame).astype(bool)] = 255
    return rgb[::-1]


def accuracy_picture(table: np.ndarray, cell: int = 24) -> np.ndarray:
    """(families, pitches) accuracy in [0, 1] (NaN: none) → red (0) to green (1) cells."""
    colour = np.stack([255 * (1 - table), 200 * table, 60 * np.ones_like(table)], axis=-1)
    colour = np.where(np.isnan(colour), 128, colour).astype(np.uint8)
    return np.repeat(np.repeat(colour, cell, axis=0), cell, axis=1)


def _write_png(path: Path, rgb: np.ndarray) -> str:
    path.write_bytes(encode_png(np.ascontiguousarray(rgb)))
    return path.name


def _write_wav(path: Path, audio: np.ndarray, rate: int) -> str:
    sf.write(str(path), np.clip(audio, -1, 1), rate, subtype="PCM_16")
    return path.name


# ---------------------------------------------------------------- report


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _verdict(value: float, target: float) -> str:
    return f"{_pct(value)} (target {_pct(target)}: {'met' if value >= target else 'NOT met'})"


def choose_test_note(notes: list[Note], families: tuple[str, ...], name: str | None) -> Note:
    """The named note, else the first validation keyboard note nearest middle C at velocity 100."""
    if name is not None:
        for note in notes:
            if note.note_str == name:
                return note
        raise ValueError(f"{name}: not a validation note of this dataset")
    keyboard = families.index("keyboard") if "keyboard" in families else 0
    return min(notes, key=lambda n: (n.family != keyboard, abs(n.pitch - 60), abs(n.velocity - 100), n.note_str))


def evaluate(
    bundle_dir: Path,
    data: Path,
    out: Path,
    notes: int = 400,
    samples: int = 2,
    seed: int = 0,
    test_note: str | None = None,
    unseen: Path | None = None,
    settings: Conditioning = DEFAULTS,
) -> dict:
    """Write `out` (markdown) and its media in `<out stem>/`; returns the headline figures. `settings`: the
    sampling settings (default: the server's)."""
    bundle = Bundle(bundle_dir)
    m = bundle.manifest
    families = m.families
    media = out.with_suffix("")
    media.mkdir(parents=True, exist_ok=True)
    data_config = DataConfig(pitch_min=m.pitch_range[0], pitch_max=m.pitch_range[1], families=families)
    split = load_splits(data, data_config)
    valid = split["valid"]
    picked = [valid[i] for i in sorted(np.random.default_rng(seed).permutation(len(valid))[:notes])]

    t0 = time.perf_counter()
    recon = reconstruct(bundle, picked)
    recon_s = time.perf_counter() - t0
    gens = generate_grid(bundle, samples, seed, settings)
    pitched = [(n, r) for n, r in zip(picked, recon, strict=True) if r.input_kept]
    t0 = time.perf_counter()
    inpainted = inpaint_notes(bundle, [n for n, _ in pitched], [r for _, r in pitched], seed, settings)
    inpaint_s = time.perf_counter() - t0

    recon_kept = float(np.mean([r.recon_kept for _, r in pitched])) if pitched else float("nan")
    usage = {
        layer: codebook_usage(np.concatenate([getattr(r, layer).ravel() for r in recon]), m.n_codes)
        for layer in ("top", "bottom")
    }
    accuracy = float(np.mean([g.kept for g in gens]))
    by_family = [float(np.mean([g.kept for g in gens if g.family == i])) for i in range(len(families))]
    inpaint = {kind: _rate([x.kept for x in inpainted if x.kind == kind]) for kind, _ in INPAINTING}
    judge = timbre.train_judge(split["train"], bundle, data)
    heard = timbre_of(judge, recon, gens, inpainted)
    heard_summary = timbre.summary(heard)

    lines = [
        f"# Evaluation of the `{m.raw.get('name', bundle_dir.name)}` bundle",
        "",
        f"Produced by `inpaint-train evaluate {shown(bundle_dir)} --data {shown(data)} --notes {notes} "
        f"--samples {samples} --seed {seed}{f' --unseen {unseen}' if unseen else ''}{_settings_flags(settings)}` "
        f"on the bundle's ONNX graphs (onnxruntime, CPU). Dataset: `{shown(data)}`, the paper's seeded 80/20 "
        f"split: {len(split['train'])} training and {len(valid)} validation notes. Sampling"
        f"{' at the server' + chr(39) + 's defaults' if settings == DEFAULTS else ''}: temperature "
        f"{settings.temperature:g}, top-p {settings.top_p:g}, guidance {settings.guidance:g}"
        f"{_guidance_note(bundle)}, harmonic guidance {settings.harmonic:g}, family guidance {settings.timbre:g}"
        f"{'' if bundle.family_tables else ' (this bundle has no family tables: none)'}.",
        "",
        "## Headline",
        "",
        "| measure | value |",
        "|---|---|",
        f"| generation pitch accuracy (11 families x 9 pitches x {samples}) | "
        f"{_verdict(accuracy, TARGETS['pitch_accuracy'])} |",
        f"| lowest family generation pitch accuracy ({families[int(np.argmin(by_family))]}) | "
        f"{_verdict(min(by_family), TARGETS['family_pitch_accuracy'])} |",
        *(
            f"| inpainting pitch kept: {kind} ({what}) | {_verdict(inpaint[kind], TARGETS['inpaint_pitch_kept'])} |"
            for kind, what in INPAINTING
        ),
        f"| reconstruction pitch kept (validation notes whose own pitch reads right) | "
        f"{_verdict(recon_kept, TARGETS['recon_pitch_kept'])} |",
        f"| generated notes recognised as their family, divided by the judge's ceiling "
        f"({_pct(heard_summary['family_ceiling'])}: a ratio, not a share of notes)"
        f" | {_verdict(heard_summary['generation_family_of_ceiling'], TARGETS['family_of_ceiling'])} |",
        f"| lowest family, of its ceiling | "
        f"{_verdict(heard_summary['worst_family_of_ceiling'], TARGETS['worst_family_of_ceiling'])} |",
        f"| diversity: seed to seed, of real program to program | "
        f"{_verdict(heard_summary['diversity'], TARGETS['diversity'])} |",
        f"| reconstruction log-spectral distance | {np.mean([r.lsd for r in recon]):.2f} dB (target "
        f"{TARGETS['recon_lsd_db']:.1f} dB, representation floor "
        f"{np.mean([r.lsd_representation for r in recon]):.2f} dB) |",
        *(
            f"| codes used, {layer} | {_verdict(usage[layer][1], TARGETS['codes_used'])}, perplexity "
            f"{usage[layer][0]:.1f} of {m.n_codes} |"
            for layer in ("top", "bottom")
        ),
        "",
    ]
    lines += _reconstruction_section(recon, [r for _, r in pitched], families, recon_s)
    lines += _generation_section(gens, families, samples, media)
    lines += _inpainting_kept_section(inpainted, families, len(pitched), inpaint_s)
    lines += timbre.timbre_section(heard, families)
    figures = {}
    if unseen is not None:
        section, figures = _unseen_section(bundle, unseen, data_config, notes, seed, settings)
        lines += section
    lines += _usage_section(usage, m.n_codes, len(recon))
    lines += _inpainting_section(bundle, choose_test_note(valid, families, test_note), media, seed, settings)
    lines += _speed_section(gens, bundle)
    lines += _provenance_section(m.raw.get("provenance", {}))
    out.write_text("\n".join(lines) + "\n")
    return {
        "report": str(out),
        "generation_pitch_accuracy": accuracy,
        "generation_pitch_accuracy_by_family": dict(zip(families, by_family, strict=True)),
        "inpainting_pitch_kept": inpaint,
        "reconstruction_pitch_kept": recon_kept,
        "reconstruction_lsd_db": float(np.mean([r.lsd for r in recon])),
        "reconstruction_lsd_decoded_if_db": float(np.mean([r.lsd_decoded_if for r in recon])),
        "codes_used": {layer: usage[layer][1] for layer in usage},
        "timbre": heard_summary,
        **figures,
    }


def timbre_of(judge: timbre.JudgeData, recon: list[Reconstruction], gens: list[Generation], inpainted) -> dict:
    """The family judge's figures (`export.timbre.timbre_figures`) for one evaluation's notes."""
    return timbre.timbre_figures(
        judge,
        (np.stack([r.timbre_original for r in recon]), np.array([r.family for r in recon])),
        np.stack([r.timbre for r in recon]),
        (np.stack([g.timbre for g in gens]), np.array([g.family for g in gens]), np.array([g.pitch for g in gens])),
        {
            kind: (np.stack([x.timbre for x in mine]), np.array([x.family for x in mine]))
            for kind, _ in INPAINTING
            if (mine := [x for x in inpainted if x.kind == kind])
        },
    )


def _rate(flags: list[bool]) -> float:
    return float(np.mean(flags)) if flags else float("nan")


def _guidance_note(bundle: Bundle) -> str:
    guided = [layer for layer, p in bundle.manifest.priors.items() if p.unconditional]
    if len(guided) == len(bundle.manifest.priors):
        return ""
    plain = " and ".join(sorted(set(bundle.manifest.priors) - set(guided)))
    return f" (this bundle's {plain} prior has no null label: no guidance there)"


def _inpainting_kept_section(rows: list[Inpainted], families, n_notes: int, seconds: float) -> list[str]:
    lines = [
        "## Inpainting pitch kept",
        "",
        f"The paper's three experiments on each of the {n_notes} validation notes above whose original reads at "
        "pitch, conditioned on the note's own pitch and family: the fraction whose f0 is still within 50 cents "
        f"of its MIDI pitch after the edit. {seconds:.0f} s.",
        "",
        "| family | notes | " + " | ".join(kind for kind, _ in INPAINTING) + " |",
        "|---|---|" + "---|" * len(INPAINTING),
    ]
    for i, name in [*enumerate(families), (None, "**all**")]:
        mine = [x for x in rows if i is None or x.family == i]
        if not mine:
            continue
        cells = []
        for kind, _ in INPAINTING:
            kept = [x.kept for x in mine if x.kind == kind]
            cells.append(f"{sum(kept)}/{len(kept)} ({_pct(_rate(kept))})")
        lines.append(f"| {name} | {len(mine) // len(INPAINTING)} | " + " | ".join(cells) + " |")
    what = "; ".join(f"{kind}: {text}" for kind, text in INPAINTING)
    return [*lines, "", what + ".", ""]


def _settings_flags(settings: Conditioning) -> str:
    """The evaluate flags that differ from the server's defaults, for the report's command line."""
    return "".join(
        f" --{name} {getattr(settings, name):g}"
        for name in ("harmonic", "timbre")
        if getattr(settings, name) != getattr(DEFAULTS, name)
    )


def _unseen_section(
    bundle: Bundle, data: Path, data_config: DataConfig, notes: int, seed: int, settings: Conditioning = DEFAULTS
):
    """Reconstruction and inpainting on notes of a dataset the model never trained on (all its notes count)."""

    every = read_notes(data, data_config)
    picked = [every[i] for i in sorted(np.random.default_rng(seed).permutation(len(every))[: notes // 2])]
    recon = reconstruct(bundle, picked)
    pitched = [(n, r) for n, r in zip(picked, recon, strict=True) if r.input_kept]
    inpainted = inpaint_notes(bundle, [n for n, _ in pitched], [r for _, r in pitched], seed, settings)
    kept = _rate([r.recon_kept for _, r in pitched])
    inpaint = {kind: _rate([x.kept for x in inpainted if x.kind == kind]) for kind, _ in INPAINTING}
    lines = [
        "## Notes from a soundfont the model never heard",
        "",
        f"{len(picked)} notes drawn at random from `{data}` (rendered by `inpaint-train dataset` from another "
        f"soundfont; nothing was trained or tuned on it), {len(pitched)} of which read at pitch.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| reconstruction LSD | {np.mean([r.lsd for r in recon]):.2f} dB |",
        f"| reconstruction pitch kept | {_pct(kept)} |",
        *(f"| inpainting pitch kept: {kind} | {_pct(inpaint[kind])} |" for kind, _ in INPAINTING),
        "",
    ]
    return lines, {"unseen": {"reconstruction_pitch_kept": kept, "inpainting_pitch_kept": inpaint}}


def _reconstruction_section(recon, pitched, families, seconds) -> list[str]:
    lines = [
        "## Reconstruction (validation notes through the VQ-VAE-2)",
        "",
        f"{len(recon)} validation notes drawn at random (seeded), encoded, decoded and inverted. "
        "Log-spectral distance (LSD, dB, n_fft 2048) against the original; the *representation* column is the "
        "Mel-IF round trip alone (no VQ-VAE), the floor any model on this spectrogram starts from. Inverted with "
        "the phase locked to the spectral peaks (`dsp.invert`'s default); the *decoded IF* column inverts the same "
        "decoded spectrograms with the decoder's own IF (the paper's inversion). "
        "Multi-resolution STFT distance: spectral convergence + mean |log magnitude difference| over n_fft "
        f"{', '.join(map(str, STFT_RESOLUTIONS))}. Pitch kept: f0 (YIN, 1 s of the held part) within 50 cents "
        f"of the note's MIDI pitch, counted over the {len(pitched)} notes whose *original* passes the same test "
        f"({len(recon) - len(pitched)} originals do not: inharmonic or octave-ambiguous sounds). {seconds:.0f} s.",
        "",
        "| family | notes | LSD (dB) | LSD, decoded IF (dB) | representation LSD (dB) | MR-STFT | pitch kept |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, name in [*enumerate(families), (None, "**all**")]:
        rows = [r for r in recon if i is None or r.family == i]
        kept_rows = [r for r in pitched if i is None or r.family == i]
        if not rows:
            continue
        kept = f"{sum(r.recon_kept for r in kept_rows)}/{len(kept_rows)}" if kept_rows else "-"
        lsd, decoded_if, floor = (
            np.mean([getattr(r, k) for r in rows]) for k in ("lsd", "lsd_decoded_if", "lsd_representation")
        )
        mrstft = np.mean([r.mrstft for r in rows])
        lines.append(f"| {name} | {len(rows)} | {lsd:.2f} | {decoded_if:.2f} | {floor:.2f} | {mrstft:.3f} | {kept} |")
    return [*lines, ""]


def _generation_section(gens: list[Generation], families, samples: int, media: Path) -> list[str]:
    table = np.full((len(families), len(GRID_PITCHES)), np.nan)
    for i in range(len(families)):
        for j, pitch in enumerate(GRID_PITCHES):
            cell = [g.kept for g in gens if g.family == i and g.pitch == pitch]
            table[i, j] = np.mean(cell) if cell else np.nan
    picture = _write_png(media / "pitch_accuracy.png", accuracy_picture(table))
    lines = [
        "## Generation pitch accuracy",
        "",
        f"{samples} notes per cell generated from nothing (the default settings, seeded), decoded and "
        "inverted; a note counts when its f0 is within 50 cents of the requested pitch.",
        "",
        f"![pitch accuracy per family (rows, {families[0]} at the top) and pitch (columns, 24 to 80): "
        f"red 0, green 1]({media.name}/{picture})",
        "",
        "| family | " + " | ".join(map(str, GRID_PITCHES)) + " | family |",
        "|---|" + "---|" * (len(GRID_PITCHES) + 1),
    ]
    for i, name in enumerate(families):
        cells = " | ".join(f"{100 * v:.0f}" for v in table[i])
        lines.append(f"| {name} | {cells} | **{_pct(np.nanmean(table[i]))}** |")
    column = " | ".join(f"{100 * v:.0f}" for v in np.nanmean(table, axis=0))
    overall = np.mean([g.kept for g in gens])
    lines.append(f"| **all** | {column} | **{_pct(overall)}** |")
    misses = [g for g in gens if not g.kept]
    no_f0 = sum(g.cents is None for g in misses)
    octave = sum(g.cents is not None and abs(abs(g.cents) - 1200) <= 50 for g in misses)
    lines += [
        "",
        f"Of the {len(misses)} misses: {no_f0} with no f0 found (silent or noise-like), {octave} an octave off, "
        f"{len(misses) - no_f0 - octave} otherwise off.",
        "",
    ]
    return lines


def _usage_section(usage, n_codes: int, n_notes: int) -> list[str]:
    lines = [
        "## Codebook usage",
        "",
        f"Over the codemaps of the {n_notes} reconstructed validation notes. Perplexity = exp(entropy) of the "
        f"code histogram (at most {n_codes}).",
        "",
        "| layer | perplexity | codes used |",
        "|---|---|---|",
    ]
    lines += [
        f"| {layer} | {p:.1f} | {_pct(u)} ({round(u * n_codes)} of {n_codes}) |" for layer, (p, u) in usage.items()
    ]
    return [*lines, ""]


def _inpainting_section(
    bundle: Bundle, note: Note, media: Path, seed: int, settings: Conditioning = DEFAULTS
) -> list[str]:
    m = bundle.manifest
    rate = m.spectrogram.sample_rate
    audio = read_note(note, m.spectrogram)
    top, bottom = vqvae_audio.encode_audio(bundle, audio)
    cond = replace(settings, pitch=note.pitch, family=note.family)
    inpainter = Inpainter.from_bundle(bundle)
    lines = [
        "## Inpainting: the paper's three experiments",
        "",
        f"Test note `{note.note_str}` (validation split, {m.families[note.family]}, MIDI {note.pitch}), "
        f"conditioned on its own pitch and family, the default settings, seed {seed}. Spectrograms: log "
        "power, frequency upwards, with the top map's grid; codemaps: one colour per code, regenerated cells "
        "framed in white. f0 is read as in the tables above.",
        "",
        "| | audio | spectrogram | top codemap | bottom codemap | f0 vs MIDI pitch |",
        "|---|---|---|---|---|---|",
    ]
    wav = _write_wav(media / "original.wav", audio, rate)
    lines.append(
        f"| original | [{wav}]({media.name}/{wav}) | "
        f"{_spectrogram_cell(media, 'original', dsp.analyze(audio, m.spectrogram))} | | | "
        f"{_cents_text(audio, note.pitch)} |"
    )
    results = [("reconstruction", "encoded and decoded, nothing regenerated", top, bottom, None, None)]
    for i, (kind, what) in enumerate(INPAINTING):
        layer, mask = inpainting_masks(kind)
        new_top, new_bottom = inpainter.inpaint(top, bottom, layer, mask, cond, np.random.default_rng([seed, i]))
        results.append((kind, what, new_top, new_bottom, layer, mask))
    for kind, what, t, b, layer, mask in results:
        spec = vqvae_audio.decode(bundle, t, b)
        sound = dsp.invert(spec, m.spectrogram)
        top_changed = t != top
        bottom_changed = b != bottom
        if layer == "top":
            top_changed, bottom_changed = mask, codemaps.upsample_mask(mask)
        elif layer == "bottom":
            bottom_changed = mask
        wav = _write_wav(media / f"{kind}.wav", sound, rate)
        top_png = _write_png(media / f"{kind}_top.png", codemap_picture(t, top_changed, (12, 48)))
        bottom_png = _write_png(media / f"{kind}_bottom.png", codemap_picture(b, bottom_changed, (6, 24)))
        lines.append(
            f"| {kind}: {what} | [{wav}]({media.name}/{wav}) | {_spectrogram_cell(media, kind, spec)} | "
            f"![top]({media.name}/{top_png}) | ![bottom]({media.name}/{bottom_png}) | "
            f"{_cents_text(sound, note.pitch)} |"
        )
    return [*lines, ""]


def _spectrogram_cell(media: Path, name: str, spec: np.ndarray) -> str:
    png = _write_png(media / f"{name}_spectrogram.png", spectrogram_picture(spec, "top", width_scale=2)[::2])
    return f"![{name}]({media.name}/{png})"


def _cents_text(audio: np.ndarray, pitch: int) -> str:
    c = _cents_off(audio, pitch)
    return "no f0" if c is None else f"{c:+.0f} cents"


def _decoding(bundle: Bundle) -> str:
    """How the bundle's priors decode a whole note: 'top: 128 steps (KV-cached), bottom: 8 masked passes'."""
    parts = []
    for layer, prior in bundle.manifest.priors.items():
        length = int(np.prod(codemaps.layer_shape(layer)))
        how = f"{prior.passes} masked passes" if prior.kind == "masked" else f"{length} steps (KV-cached)"
        parts.append(f"{layer}: {how}")
    return ", ".join(parts)


def _speed_section(gens: list[Generation], bundle: Bundle) -> list[str]:
    def ms(values) -> str:
        return f"{1000 * np.median(values):.0f} ms (p95 {1000 * np.percentile(values, 95):.0f})"

    total = [g.priors_s + g.decoder_s + g.inversion_s for g in gens]
    seconds = bundle.manifest.spectrogram.n_samples / bundle.manifest.spectrogram.sample_rate
    return [
        "## Sampling speed",
        "",
        f"Over the {len(gens)} generations above, in this process (onnxruntime CPU, all cores of this machine), "
        "median and 95th percentile:",
        "",
        "| stage | time |",
        "|---|---|",
        f"| both priors ({_decoding(bundle)}) | {ms([g.priors_s for g in gens])} |",
        f"| VQ-VAE decoder | {ms([g.decoder_s for g in gens])} |",
        f"| Mel-IF inversion | {ms([g.inversion_s for g in gens])} |",
        f"| a whole new 4 s note | {ms(total)}: {seconds / np.median(total):.1f}x faster than real time |",
        "",
    ]


def _provenance_section(provenance: dict) -> list[str]:
    lines = ["## How this bundle was made", ""]
    dataset = provenance.get("dataset") or {}
    if dataset:
        fonts = ", ".join(f"`{f['file']}` (sha256 {f['sha256'][:12]}…)" for f in dataset.get("soundfonts", []))
        lines += [
            f"Data: {dataset.get('notes')} notes of {dataset.get('instruments')} instruments rendered from {fonts} "
            f"by {dataset.get('renderer')}; pitches {min(dataset['pitches'])}-{max(dataset['pitches'])}, "
            f"velocities {', '.join(map(str, dataset['velocities']))}.",
            "",
        ]
    steps = provenance.get("steps", {})
    if steps:
        lines += ["Training steps: " + ", ".join(f"{k} {v}" for k, v in steps.items()) + ".", ""]
    commands = provenance.get("commands", [])
    if commands:
        lines += ["Commands (from the manifest):", "", "```", *(c["command"] for c in commands), "```", ""]
    return lines
