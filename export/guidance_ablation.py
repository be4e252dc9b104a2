"""`inpaint-train ablate-guidance BUNDLE --data DIR --out DIR`: harmonic guidance recipes on one trained model,
judged by pitch and timbre side by side.

Every variant is the same bundle with its code profiles re-measured (`export.reguide`: a recipe and a weight
per prior) and sampled at a harmonic weight; nothing is trained. Each is measured through the bundle as the
server runs it, on the development grid (every family x pitches between the evaluation grid's, so the report's
own grid stays untouched) and on validation notes drawn with another seed than the report's: generation pitch
accuracy, inpainting pitch kept (the paper's three experiments), the family judge's accuracy on the same
notes against its ceiling, the Fréchet distance and seed-to-seed diversity, and the time of a new note.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export import timbre
from export.ablation import pitch_figures
from export.config import DataConfig
from export.evaluate import generate_grid, inpaint_notes, reconstruct, timbre_of
from export.family_guidance import FAMILY_NOTES, FamilyRecipe
from export.monitor import DEV_PITCHES
from export.nsynth import load_splits
from export.reguide import reguide
from server.bundle import Bundle
from server.codemaps import LAYERS
from server.protocol import DEFAULTS
from server.sampling import DEFAULT_GUIDANCE, Conditioning


@dataclass(frozen=True)
class Variant:
    """A profile recipe, a weight baked into each prior's graph, the runtime harmonic and family weights, how
    the family tables are counted and kept, and the classifier-free guidance weight (`/guidance`; it acts on
    bundles whose priors have null labels)."""

    recipe: str
    top: float
    bottom: float
    harmonic: float
    timbre: float = 0.0
    family: FamilyRecipe = FamilyRecipe()
    guidance: float = DEFAULT_GUIDANCE
    temperature: float = DEFAULTS["temperature"]
    top_p: float = DEFAULTS["top_p"]

    @classmethod
    def parse(cls, text: str) -> Variant:
        """`recipe:top:bottom:harmonic[:timbre[:region[:notes]]][:layers=top+bottom][:floor=F][:cfg=W][:t=T][:p=P]`,
        e.g. `level:1:1:1:2`, `level:1:1:0.5:2:12`, `level:1:1:0.5:2:layers=top`, `level:1:1:1:0:cfg=3` or
        `level:1:1:0.5:2:p=0.5`; `recipe:harmonic[:timbre]` is `recipe:1:1:harmonic[:timbre]`. The fields of
        `export.family_guidance.FamilyRecipe` default as there; `cfg`, `t` and `p` as the server's `/guidance`,
        `/temperature` and `/top_p`."""
        fields = text.split(":")
        parts = [f for f in fields if "=" not in f]
        keywords = dict(f.split("=", 1) for f in fields if "=" in f)
        if len(parts) in (2, 3):
            parts = [parts[0], "1", "1", *parts[1:]]
        if len(parts) not in (4, 5, 6, 7) or set(keywords) - {"layers", "floor", "cfg", "t", "p"}:
            raise ValueError(
                f"{text!r}: a variant is recipe:top:bottom:harmonic[:timbre[:region[:notes]]][:layers=..][:floor=..]"
                "[:cfg=..][:t=..][:p=..] or recipe:harmonic[:timbre]"
            )
        top, bottom, harmonic = map(float, parts[1:4])
        timbre = float(parts[4]) if len(parts) > 4 else 0.0
        family = FamilyRecipe(
            region=int(parts[5]) if len(parts) > 5 else 0,
            notes=int(parts[6]) if len(parts) > 6 else FAMILY_NOTES,
            layers=tuple(keywords["layers"].split("+")) if "layers" in keywords else LAYERS,
            floor=float(keywords["floor"]) if "floor" in keywords else None,
        )
        guidance = float(keywords.get("cfg", DEFAULT_GUIDANCE))
        temperature = float(keywords.get("t", DEFAULTS["temperature"]))
        top_p = float(keywords.get("p", DEFAULTS["top_p"]))
        return cls(parts[0], top, bottom, harmonic, timbre, family, guidance, temperature, top_p)

    @property
    def name(self) -> str:
        f = self.family
        name = f"{self.recipe}:{self.top:g}:{self.bottom:g}:{self.harmonic:g}:{self.timbre:g}"
        if f.notes != FAMILY_NOTES:
            name += f":{f.region}:{f.notes}"
        elif f.region:
            name += f":{f.region}"
        sampling = f":cfg={self.guidance:g}" if self.guidance != DEFAULT_GUIDANCE else ""
        sampling += f":t={self.temperature:g}" if self.temperature != DEFAULTS["temperature"] else ""
        sampling += f":p={self.top_p:g}" if self.top_p != DEFAULTS["top_p"] else ""
        return name + self._keywords(":{}={}") + sampling

    @property
    def graphs(self) -> str:
        """The folder name of its reguided bundle (variants that differ in the runtime weights alone share one)."""
        f = self.family
        name = f"{self.recipe}-{self.top:g}-{self.bottom:g}" + (f"-r{f.region}" if f.region else "")
        return name + (f"-n{f.notes}" if f.notes != FAMILY_NOTES else "") + self._keywords("-{}{}")

    def _keywords(self, form: str) -> str:
        f = self.family
        layers = form.format("layers", "+".join(f.layers)) if f.layers != LAYERS else ""
        return layers + (form.format("floor", f"{f.floor:g}") if f.floor is not None else "")


def measure(bundle_dir: Path, judge, notes, recon, reference, v: Variant, samples: int, seed: int = 0) -> dict:
    """Pitch and timbre of one variant: inpainting on `notes` (with their reconstructions `recon`), the judge's
    ceiling on the reconstructions `reference` (more notes: a steadier ceiling)."""
    bundle = Bundle(bundle_dir)
    settings = Conditioning(0, 0, v.temperature, v.top_p, guidance=v.guidance, harmonic=v.harmonic, timbre=v.timbre)
    gens = generate_grid(bundle, samples, seed, settings, DEV_PITCHES)
    inpainted = inpaint_notes(bundle, notes, recon, seed, settings)
    return {**pitch_figures(gens, inpainted), **timbre.summary(timbre_of(judge, reference, gens, inpainted))}


def ablate_guidance(
    bundle_dir: Path,
    data: Path,
    out: Path,
    variants: list[Variant],
    notes: int = 40,
    samples: int = 2,
    markdown: Path | None = None,
    seed: int = 0,
) -> dict:
    """Measure each variant (resumable: `out/guidance.json` keeps what was measured); `seed` draws the notes
    generated and inpainted (another seed: an independent sample of the same variants)."""
    out.mkdir(parents=True, exist_ok=True)
    m = Bundle(bundle_dir).manifest
    split = load_splits(data, DataConfig(pitch_min=m.pitch_range[0], pitch_max=m.pitch_range[1], families=m.families))
    judge = timbre.train_judge(split["train"], Bundle(bundle_dir), data)
    valid = split["valid"]
    picked = [valid[i] for i in sorted(np.random.default_rng(1).permutation(len(valid))[: 3 * notes])]
    recon = reconstruct(Bundle(bundle_dir), picked)  # one VQ-VAE for every variant
    keep = [i for i, r in enumerate(recon) if r.input_kept and r.recon_kept][:notes]
    chosen, rows = [picked[i] for i in keep], [recon[i] for i in keep]
    results_path = out / "guidance.json"
    results = json.loads(results_path.read_text())["results"] if results_path.is_file() else {}
    summary = {"bundle": str(bundle_dir), "notes": len(chosen), "samples": samples, "seed": seed, "results": results}
    for v in variants:
        if v.name in results:  # resumable: a variant measured before is kept
            continue
        graphs = out / v.graphs
        if not (graphs / "manifest.json").is_file():
            weights = {"top": v.top, "bottom": v.bottom}
            reguide(bundle_dir, data, graphs, v.recipe, weights, out / "train_codes.npz", v.family)
        results[v.name] = measure(graphs, judge, chosen, rows, recon, v, samples, seed)
        print(json.dumps({v.name: results[v.name]}), flush=True)
        results_path.write_text(json.dumps(summary, indent=2))  # `results` is in it: each variant as it ends
    if markdown is not None:
        markdown.write_text(guidance_markdown(summary))
    return summary


def guidance_markdown(summary: dict) -> str:
    def pct(x: float) -> str:
        return f"{100 * x:.0f} %"

    lines = [
        "| recipe : top : bottom : harmonic : family [: region [: notes]] | generation pitch (worst family) "
        "| first 2 s | lowest quarter | resample bottom | family, generated (of ceiling) | worst family (of ceiling) "
        "| family, inpainted 2 s / quarter / bottom | Fréchet | diversity | priors (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in summary["results"].items():
        lines.append(
            f"| {name} | {pct(r['generation'])} ({pct(r['worst_family'])}) | {pct(r['time'])} | "
            f"{pct(r['frequency'])} | {pct(r['bottom'])} | {pct(r['generation_family'])} "
            f"({r['generation_family_of_ceiling']:.2f}) | {r['worst_family_of_ceiling']:.2f} | "
            f"{pct(r['inpainting_family_time'])} / {pct(r['inpainting_family_frequency'])} / "
            f"{pct(r['inpainting_family_bottom'])} | {r['frechet_generated']:.1f} | {r['diversity']:.2f} | "
            f"{r['priors_ms']:.0f} |"
        )
    first = next(iter(summary["results"].values()))
    return "\n".join(
        [
            f"Generation: every family x pitches {', '.join(map(str, DEV_PITCHES))}, {summary['samples']} notes "
            f"each. Inpainting: {summary['notes']} validation notes whose original and reconstruction read at "
            f"pitch (another draw than the report's). Family: the judge's accuracy; its ceiling (validation notes "
            f"through this VQ-VAE) is {pct(first['family_ceiling'])}, on the real notes "
            f"{pct(first['family_ceiling_real'])}.",
            "",
            *lines,
            "",
        ]
    )
