"""Open-set study behind docs/openset.md: generated streams and real photographs, both backbones.

    python -m firmware_sim.studies.openset_report --out docs/openset.md [--wheel FOOLBOX_WHEEL]

1. Generated CORe50-format streams (NC and NICv2-391, run 0, tiny backbone): ``edge-sim openset``
   (`firmware_sim.loop.openset_study`), 10 objects held out (seed 0).
2. Real photographs: the labelled sample photos of the ``foolbox==3.3.4`` wheel (CIFAR-10, CIFAR-100,
   ImageNet, MNIST, Fashion-MNIST; ``~/.cache/edge-continual/foolbox-3.3.4-py3-none-any.whl``, the one
   tests/_real_photos.py uses), through the device resize and each backbone. Every photo gives
   `CROPS` augmented crops. *cifar10* (4 seeds): 5 of the 8 CIFAR-10 classes with >= 2 photos are
   taught, one learn call (burst) per photo, from one photo per class (two where a class has >= 3);
   known test frames are crops of the class's OTHER photos (new conditions); never-taught frames are
   the 3 other classes and the 20 CIFAR-100 photos. *imagenet* (2 rotations): the 4 WordNet groups of
   tests/_real_photos.py taught from one photo each; never-taught: the 11 other ImageNet photos. Far
   out-of-distribution: the 40 MNIST and Fashion-MNIST photos (digits and clothes).

Every stream's new-minus-previous AUROC gets a paired 95 % bootstrap interval
(`firmware_sim.loop.openset_study.bootstrap_auroc_difference`, 1,000 resamples, seed 0) over its independent
units: photos (all crops of a photo together) on the photo streams, session-object recordings on the generated ones.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from edge.agent import Agent, AgentConfig
from edge.openset import FALSE_REJECT, auroc
from firmware_sim.loop.openset_study import (BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, PairedScores,
                                             bootstrap_auroc_difference, format_interval, format_report,
                                             fpr_at_95_tpr, previous_novelty, run_openset)

CROPS = 16
MEMBER = re.compile(r"^foolbox/data/(\w+?)_(\d\d)_(\d+)\.(png|jpg)$")
IMAGENET_GROUPS = {243: "dog", 251: "dog", 22: "bird", 99: "bird", 129: "bird", 305: "insect", 317: "insect",
                   609: "jeep"}


def _crops(image: Any, rng: np.random.Generator, size: int = 224) -> np.ndarray:
    from PIL import Image

    w, h = image.size
    out = []
    for _ in range(CROPS):
        area = rng.uniform(0.5, 1.0) * w * h
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw = int(min(w, max(1, round(np.sqrt(area * aspect)))))
        ch = int(min(h, max(1, round(np.sqrt(area / aspect)))))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        frame = np.asarray(image.crop((left, top, left + cw, top + ch)).resize((size, size), Image.Resampling.BICUBIC))
        out.append(frame[:, ::-1] if rng.random() < 0.5 else frame)
    return np.stack(out).astype(np.uint8)


def photo_embeddings(wheel: Path, model: str, precision: str) -> tuple[np.ndarray, np.ndarray, Any]:
    """``(meta (P, 3) [set, index, label], embeddings (P * CROPS, d), manifest)``; embedded in chunks."""
    from PIL import Image

    from edge.preprocess import fit_frame
    from edge.runtimes import open_backbone

    meta, frames = [], []
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(wheel) as zf:
        for member in sorted(zf.namelist()):
            m = MEMBER.match(member)
            if m:
                meta.append((m[1], int(m[2]), int(m[3])))
                frames.append(_crops(Image.open(io.BytesIO(zf.read(member))).convert("RGB"), rng))
    with open_backbone(model, precision=precision) as bb:
        chunks = []
        for photo in frames:
            chunks.append(bb.embed(np.stack([fit_frame(f, bb.manifest) for f in photo])))
        return np.array(meta, dtype=object), np.concatenate(chunks), bb.manifest


def photo_protocols(meta: np.ndarray) -> list[tuple[str, list[tuple[int, int]], list[tuple[int, int]], list[int]]]:
    """``(stream, teach [(photo, class)], known test [(photo, class)], never-taught photos)`` per rotation."""
    kind, label = meta[:, 0], meta[:, 2].astype(int)
    out = []
    groups: dict[int, list[int]] = {}
    for i in np.flatnonzero(kind == "cifar10"):
        groups.setdefault(int(label[i]), []).append(int(i))
    multi = sorted(c for c, v in groups.items() if len(v) >= 2)
    for seed in range(4):
        held = set(np.random.default_rng(seed).choice(multi, 3, replace=False).tolist())
        known = [c for c in multi if c not in held]
        teach, test = [], []
        for k, c in enumerate(known):
            photos = groups[c][seed % len(groups[c]):] + groups[c][:seed % len(groups[c])]
            n_taught = 2 if len(photos) >= 3 else 1
            teach += [(p, k) for p in photos[:n_taught]]
            test += [(p, k) for p in photos[n_taught:]]
        never = [i for c in groups if c not in known for i in groups[c]] + \
            [int(i) for i in np.flatnonzero(kind == "cifar100")]
        out.append(("cifar10", teach, test, never))
    inet: dict[str, list[int]] = {}
    for i in np.flatnonzero(kind == "imagenet"):
        if int(label[i]) in IMAGENET_GROUPS:
            inet.setdefault(IMAGENET_GROUPS[int(label[i])], []).append(int(i))
    for r in range(2):
        teach, test = [], []
        for k, g in enumerate(sorted(inet)):
            taught = inet[g][r % len(inet[g])]
            teach.append((taught, k))
            test += [(p, k) for p in inet[g] if p != taught]
        never = [int(i) for i in np.flatnonzero(kind == "imagenet") if int(label[i]) not in IMAGENET_GROUPS]
        out.append(("imagenet", teach, test, never))
    return out


def run_photos(wheel: Path, model: str, precision: str, rate: float) -> dict[str, dict[str, Any]]:
    """Mean over rotations per stream of AUROC / FPR at 95 % TPR (new and previous score), far-OOD
    AUROC, and the rates at the agent's threshold; ``auroc_difference``: new minus previous AUROC with
    its bootstrap interval over photos."""
    meta, emb, manifest = photo_embeddings(wheel, model, precision)
    far_photos = [int(i) for i in np.flatnonzero(np.isin(meta[:, 0], ["mnist", "fashionMNIST"]))]

    def rows(photos: list[int]) -> np.ndarray:
        return np.concatenate([np.arange(p * CROPS, (p + 1) * CROPS) for p in photos])

    per: dict[str, list[dict[str, float]]] = {}
    paired: dict[str, list[PairedScores]] = {}
    for stream, teach, test, never in photo_protocols(meta):
        agent = Agent(None, AgentConfig(strategy="ncm", max_classes=10), embedding_size=emb.shape[1],
                      embedding_mean=manifest.embedding_mean, embedding_std=manifest.embedding_std)
        for photo, c in teach:   # one learn call per photo
            agent.learn_embeddings(emb[rows([photo])], np.full(CROPS, c))
        k, u, f = (emb[rows([p for p, _ in test])], emb[rows(never)], emb[rows(far_photos)])
        nk, nu, nf = (agent.novelty_embeddings(a) for a in (k, u, f))
        std = agent.standardizer or (lambda a: a)
        ok, ou = previous_novelty(agent.stats, std(k)), previous_novelty(agent.stats, std(u))
        known_photos = np.repeat([p for p, _ in test], CROPS)
        paired.setdefault(stream, []).append(PairedScores(nk, nu, ok, ou, known_photos, np.repeat(never, CROPS)))
        t = agent.openset.threshold_at(rate)
        calibrated = agent.openset.calibrated_on != "nothing"
        per.setdefault(stream, []).append({
            "auroc": auroc(nk, nu), "previous_auroc": auroc(ok, ou), "fpr95": fpr_at_95_tpr(nk, nu),
            "previous_fpr95": fpr_at_95_tpr(ok, ou), "far_auroc": auroc(nk, nf),
            "calibrated": float(calibrated),
            "false_reject": float((nk > t).mean()) if calibrated else float("nan"),
            "false_accept": float((nu <= t).mean()) if calibrated else float("nan"),
            "far_rejected": float((nf > t).mean()) if calibrated else float("nan"),
        })
    return {s: {key: float(np.nanmean([r[key] for r in rs])) if any(np.isfinite(r[key]) for r in rs)
                else float("nan") for key in rs[0]} | {"rotations": float(len(rs))}
            | {"auroc_difference": bootstrap_auroc_difference(paired[s]) | {"unit": "photos", "seed": BOOTSTRAP_SEED}}
            for s, rs in per.items()}


def render(generated: list[dict[str, Any]], photos: dict[str, dict[str, dict[str, Any]]], command: str,
           wall: float) -> str:
    pct = (lambda v: "-" if v is None or v != v else f"{100 * v:.1f}")
    lines = ["# Open-set rejection: objects the agent was never taught", "",
             f"Generated by `{command}` in {wall:.0f} s. Do not edit by hand "
             "(`firmware_sim/studies/openset_report.py`).", "",
             "Score (`edge/openset.py`, MDS++): each raw embedding scaled to unit length; squared Mahalanobis "
             "distance to the nearest class mean direction under the shared within-class covariance of the "
             "unit rows, shrunk toward a scaled identity (weight 0.8). Computed for every strategy from the "
             "agent's one `ClassStatistics` (direction statistics: exact sums, so undo and merge stay exact). "
             "*Previous*: the score it replaced (squared distance to the nearest standardised class mean over "
             "that class's spread). AUROC: probability that a never-taught frame scores higher than a known "
             "one. FPR@95: never-taught frames accepted when 95 % of known ones are. *new - previous*: the AUROC "
             f"difference with a paired 95 % bootstrap interval ({BOOTSTRAP_RESAMPLES:,} resamples, seed "
             f"{BOOTSTRAP_SEED}; both scores on the same draw) that resamples the stream's independent units, known "
             "and never-taught separately: photos on the photo streams (a photo's crops together), session-object "
             "recordings on the generated streams (a recording's frames together).", "",
             "Threshold: leave-one-burst-out. A burst is the rows of one learn call; the agent keeps 8 rows of "
             "each and scores them against the class statistics without their burst. Target false-reject "
             f"rate {100 * FALSE_REJECT:g} % (`--unknown-rate`). With every class taught in one learn call "
             "there is nothing held out: the threshold is +inf and nothing is rejected "
             "(*calibrated on nothing*).", "",
             "## Generated CORe50-format streams (tiny backbone, 10 of 50 objects held out)", "",
             "| stream | AUROC | previous | new - previous AUROC [95 % interval] | FPR@95 % | previous % | "
             "calibrated on | FR on new teach bursts % | FR on test sessions % | FA on never-taught % | command |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in generated:
        lines.append(f"| {r['scenario']} | {r['auroc']:.3f} | {r['previous_auroc']:.3f} | "
                     f"{format_interval(r['auroc_difference'])} | {pct(r['fpr_at_95_tpr'])} | "
                     f"{pct(r['previous_fpr_at_95_tpr'])} | {r['calibrated_on']} | "
                     f"{pct(r['false_reject_new_bursts'])} | "
                     f"{pct(r['false_reject_test'])} | {pct(r['false_accept_test'])} | "
                     f"`edge-sim openset --scenario {r['scenario']}` |")
    lines += ["", "*FR on new teach bursts*: rows of each later learn call of an already-known object, scored "
              "before it was learned (the burst the calibration never saw). *FR on test sessions*: known "
              "objects in the test sessions, conditions unlike every taught one. NC teaches each object in "
              "one batch, so nothing calibrates there.", ""]
    for model, streams in photos.items():
        lines += [f"## Real photographs, {model}", "",
                  "| stream | rotations | AUROC | previous | new - previous AUROC [95 % interval] | FPR@95 % | "
                  "previous % | far-OOD AUROC | rotations calibrated | FR known % | FA never-taught % | "
                  "far-OOD rejected % |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for s, r in streams.items():
            lines.append(f"| {s} | {r['rotations']:.0f} | {r['auroc']:.3f} | {r['previous_auroc']:.3f} | "
                         f"{format_interval(r['auroc_difference'])} | {pct(r['fpr95'])} | "
                         f"{pct(r['previous_fpr95'])} | {r['far_auroc']:.3f} | "
                         f"{r['calibrated'] * r['rotations']:.0f} | {pct(r['false_reject'])} | "
                         f"{pct(r['false_accept'])} | {pct(r['far_rejected'])} |")
        lines.append("")
    lines += ["## Reading", "", *_reading_of_intervals(generated, photos),
              "- The threshold holds its target on the agent's own future teach bursts (generated NICv2-391), "
              "but known objects in conditions unlike any taught (the test sessions; another photograph of "
              "a taught class) are rejected several times more often than the target. That is why novelty "
              "rejection stays OFF by default (`edge.openset.OpenSetPolicy`): turn it on (`--reject-novel`, "
              "`--unknown-rate`) after teaching each object in several learn calls, in the conditions the "
              "device will see.",
              "- Far out-of-distribution photos (digits, clothes) score far above taught objects with the "
              "ImageNet backbone; they are rejected wherever the threshold is calibrated.",
              "- Fine-grained look-alikes (another flavour of a taught product) were not separable by any score "
              "measured on the issue's shop photos (AUROC <= 0.61, issue 23): do not count on rejecting them.",
              ""]
    return "\n".join(lines)


def _reading_of_intervals(generated: list[dict[str, Any]],
                          photos: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """The Reading's first bullets: from the numbers, where the AUROC comparison is decided and where not;
    then what the search for a score ahead everywhere found."""
    rows = [(f"generated {g['scenario']}", g["auroc_difference"], g["fpr_at_95_tpr"] > g["previous_fpr_at_95_tpr"])
            for g in generated]
    rows += [(f"{model.split(' (')[0].split(' 224')[0].replace(' ', '-')} {stream} photos", r["auroc_difference"],
              r["fpr95"] > r["previous_fpr95"]) for model, streams in photos.items() for stream, r in streams.items()]

    def listed(picked: list[tuple[str, dict[str, Any], bool]]) -> str:
        return ", ".join(f"{name} ({format_interval(d)})" for name, d, _ in picked)

    ahead = [r for r in rows if r[1]["low"] > 0]
    undecided = [r for r in rows if r[1]["low"] <= 0 <= r[1]["high"]]
    behind = [r for r in rows if r[1]["high"] < 0]
    text = f"- New minus previous AUROC decides the comparison on {len(ahead) + len(behind)} of {len(rows)} streams"
    text += (": the new score is ahead, its whole 95 % interval above 0, on " + listed(ahead) + "." if ahead
             else ".")
    if behind:
        text += " The previous score is ahead, the whole interval below 0, on " + listed(behind) + "."
    if undecided:
        favour_new = [name for name, d, _ in undecided if d["difference"] > 0]
        favour_old = [name for name, d, _ in undecided if d["difference"] < 0]
        sizes: dict[str, list[str]] = {}
        for name, d, _ in undecided:
            key = f"{d['known_units']:.3g} known and {d['unknown_units']:.3g} never-taught {d['unit']}"
            sizes.setdefault(key, []).append(name)
        text += (f" On the other {len(undecided)} the interval contains 0, so that stream's data cannot tell "
                 "which score ranks never-taught objects better: " + listed(undecided) + ". Their point "
                 f"estimates favour the new score on {len(favour_new)} and the previous one on {len(favour_old)}"
                 + (f" ({', '.join(favour_old)})" if favour_old else "") + ". Independent units per rotation "
                 "(on average): " + "; ".join(f"{k} ({', '.join(v)})" for k, v in sizes.items()) + ".")
    worse_tail = [name for name, _, worse in rows if worse]
    if worse_tail:
        text += (" The new score's FPR at 95 % TPR is still worse than the previous one's on "
                 + ", ".join(worse_tail) + " (its tail of known frames overlaps the never-taught ones more).")
    return [text, (
        "- A search over 35 scores computed from the same class statistics (relative Mahalanobis, distances "
        "divided by each class's own spread, cosine, Gaussian likelihood variants, other shrinkage weights; "
        "each stream's embeddings dumped once and every candidate scored with this page's protocols) found none "
        "ahead of the previous score on all six streams: the scores that divide by each class's own spread "
        "reach 0.604-0.620 on tiny-backbone CIFAR-10 (previous 0.603) but lose 0.11-0.18 AUROC against MDS++ on "
        "EfficientNet CIFAR-10 (0.62-0.69 against 0.800).")]


def main(argv: list[str] | None = None) -> int:
    from edge.models import tiny_model_dir

    p = argparse.ArgumentParser(prog="python -m firmware_sim.studies.openset_report",
                                description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--out", default="docs/openset.md")
    p.add_argument("--wheel", default=str(Path.home() / ".cache" / "edge-continual" / "foolbox-3.3.4-py3-none-any.whl"))
    p.add_argument("--imagenet-model", default="models/efficientnet_lite0_224")
    p.add_argument("--skip-generated", action="store_true")
    args = p.parse_args(argv)
    started = time.perf_counter()
    generated = []
    if not args.skip_generated:
        for scenario in ("nc", "nicv2_391"):
            ns = argparse.Namespace(data="synthetic", scenario=scenario, run=0, image_size=None, model=str(tiny_model_dir()),
                                 precision="fp32", held_out="10", seed=0, strategy="ncm", unknown_rate=FALSE_REJECT,
                                 cache=None, no_cache=False, json=None)
            report = run_openset(ns)
            print(format_report(report), flush=True)
            generated.append(report)
    photos = {}
    for name, model, precision in (("tiny backbone (32 px)", str(tiny_model_dir()), "fp32"),
                                   ("EfficientNet-Lite0 224 int8", args.imagenet_model, "int8")):
        photos[name] = run_photos(Path(args.wheel), model, precision, FALSE_REJECT)
        print(name, json.dumps(photos[name]), flush=True)
    command = "python -m firmware_sim.studies.openset_report " + " ".join(argv or [])
    out = Path(args.out)
    out.write_text(render(generated, photos, command.strip(), time.perf_counter() - started), encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps({"generated": generated, "photos": photos}, indent=1) + "\n",
                                        encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
