"""Render an `extra` training split of ru-synth: more sentences from lm.txt that no clip of the corpus reads yet,
spoken by the `more` split's voices, so that the model sees more spelling (docs/runs, demo v2, "what the remaining
errors are").

    python tools/render_extra.py --clips 25000      # data/ru-synth/extra: ~23 h of audio, ~25 min on two cores
    python tools/render_extra.py --split extra2 --seed 1 --exclude data/ru-synth/extra/plan.jsonl   # 25,000 more

The plan is drawn deterministically (--seed) from the recipe in recipe/ru-synth: sentences from lm.txt.xz minus
every text in plan.jsonl.xz and in the plans given to --exclude (earlier extra splits); engine, voice, rate, pitch,
stretch and speed as the `more` split's (festival for the same share of clips, espeak-ng voices out of the variants
`more` uses, values uniform over `more`'s ranges). It is written to OUT/SPLIT/plan.jsonl, and rendered as
tools/render_corpus.py renders the corpus's own splits: OUT/SPLIT/NNN/SPLIT_XXXXX.opus, with manifest.jsonl and
meta.jsonl beside. Resumable: rendered clips are kept. The valid and test sentences are not in lm.txt, so they stay
unseen. Exit status: 0 done, 1 a plan or recipe file that cannot be used (or a failed render), 2 bad options or
missing packages (named in one line, before anything is written).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proslushka.files import atomic_write  # noqa: E402
from proslushka.manifest import one_line  # noqa: E402
from tools import render_corpus  # noqa: E402
from tools.render_corpus import RecipeError, RenderError, read_plan  # noqa: E402

RU_SYNTH_SPLITS = {"train", "valid", "test", "more"}  # the recipe's own; an extra split must not write over them


class PlanError(ValueError):
    pass


def voice_space(plan: list[dict]) -> dict:
    """The `more` split's share of festival clips, its espeak-ng voices and the ranges of its settings."""
    more = [it for it in plan if it.get("split") == "more"]
    esp = [it for it in more if it["engine"] == "espeak-ng"]
    fest = [it for it in more if it["engine"] == "festival"]
    if not esp or not fest:
        raise PlanError("plan.jsonl has no `more` clips of both engines to take voices from")

    def span(items: list[dict], key: str) -> tuple:
        values = [it[key] for it in items]
        return min(values), max(values)

    return {
        "festival_share": len(fest) / len(more),
        "festival_voice": fest[0]["voice"],
        "variants": sorted({it["variant"] for it in esp}),
        "speed": span(esp, "speed"),
        "pitch": span(esp, "pitch"),
        "duration_stretch": span(fest, "duration_stretch"),
        "pitch_shift_cents": span(fest, "pitch_shift_cents"),
    }


def unused_sentences(plan: list[dict], lm_lines: list[str], exclude: set[str]) -> list[str]:
    used = {it["text"] for it in plan} | exclude
    seen: set[str] = set()
    out = []
    for line in lm_lines:
        text = line.strip()
        if text and text not in used and text not in seen:
            seen.add(text)
            out.append(text)
    return out


def make_plan(
    plan: list[dict],
    lm_lines: list[str],
    clips: int,
    seed: int,
    split: str = "extra",
    exclude: set[str] = frozenset(),
) -> list[dict]:
    """`clips` new plan rows in the recipe's plan format for `split`, none reading a text of `exclude`; the same for the
    same inputs and seed."""
    space = voice_space(plan)
    pool = unused_sentences(plan, lm_lines, exclude)
    if clips > len(pool):
        raise PlanError(f"--clips {clips}: lm.txt has only {len(pool)} sentences that no clip reads")
    rng = random.Random(seed)
    rows = []
    for i, text in enumerate(rng.sample(pool, clips)):
        row = {"id": f"{split}_{i:05d}", "split": split, "text": text, "source": "lm.txt"}
        if rng.random() < space["festival_share"]:
            row.update(
                engine="festival",
                voice=space["festival_voice"],
                variant=None,
                speed=None,
                pitch=None,
                duration_stretch=round(rng.uniform(*space["duration_stretch"]), 3),
                pitch_shift_cents=rng.randint(*space["pitch_shift_cents"]),
            )
        else:
            variant = rng.choice(space["variants"])
            row.update(
                engine="espeak-ng",
                voice=f"ru+{variant}",
                variant=variant,
                speed=rng.randint(*space["speed"]),
                pitch=rng.randint(*space["pitch"]),
                duration_stretch=None,
                pitch_shift_cents=None,
            )
        row["rel"] = f"{i // 1000:03d}/{row['id']}.opus"  # at most 1000 files a folder, as the recipe's splits
        rows.append(row)
    return rows


def render(items: list[dict], out: Path, split: str, jobs: int) -> None:
    folder = out / split
    render_corpus.render_clips(items, folder, jobs, split)
    clips, seconds = render_corpus.write_manifests(folder, items)
    print(f"{split}: {clips} of {len(items)} clips, {seconds / 3600:.2f} h -> {folder / 'manifest.jsonl'}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--recipe",
        type=Path,
        default=render_corpus.RECIPE,
        help="the ru-synth recipe folder: plan.jsonl.xz, lm.txt.xz (default: recipe/ru-synth)",
    )
    p.add_argument("--out", type=Path, default=Path("data/ru-synth"), help="corpus folder (default: %(default)s)")
    p.add_argument("--split", default="extra", help="the split's name: its folder and clip ids (default: %(default)s)")
    p.add_argument(
        "--exclude",
        type=Path,
        nargs="+",
        default=[],
        metavar="PLAN",
        help="plan.jsonl files of earlier extra splits: their sentences are not drawn again",
    )
    p.add_argument("--clips", type=int, default=25_000, help="clips to plan (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="draws sentences and voices (default: %(default)s)")
    p.add_argument("--limit", type=int, default=0, help="render only the first N clips of the plan")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel processes (default: all cores)")
    p.add_argument("--plan_only", action="store_true", help="write OUT/SPLIT/plan.jsonl and stop")
    args = p.parse_args(argv)
    if args.clips < 1 or args.limit < 0 or args.jobs < 1:
        p.error("--clips and --jobs must be at least 1, --limit at least 0")
    if not args.split.isidentifier() or args.split in RU_SYNTH_SPLITS:
        p.error(
            f"--split {args.split!r}: give a plain name, not one of ru-synth's own "
            f"({', '.join(sorted(RU_SYNTH_SPLITS))})"
        )
    plan_path = args.out / args.split / "plan.jsonl"
    if plan_path.resolve() in {e.resolve() for e in args.exclude}:
        p.error(f"--exclude {plan_path}: that is this split's own plan")

    t0 = time.time()
    try:
        plan = read_plan(args.recipe / "plan.jsonl.xz")
        exclude = {it["text"] for path in args.exclude for it in read_plan(path)}
        lm_lines = render_corpus.read_text(args.recipe / "lm.txt.xz").splitlines()
        items = make_plan(plan, lm_lines, args.clips, args.seed, args.split, exclude)
    except (PlanError, RecipeError) as e:
        print(f"render_extra: {e}", file=sys.stderr)
        return 1
    chosen = items[: args.limit] if args.limit else items
    todo = {it["engine"] for it in chosen if not (args.out / args.split / it["rel"]).exists()}
    if not args.plan_only and (missing := render_corpus.missing_packages(todo)):
        print(f"render_extra: {missing}", file=sys.stderr)
        return 2
    try:
        atomic_write(plan_path, "".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items))
        print(f"{args.split}: {len(items)} clips planned -> {plan_path}", flush=True)
        if not args.plan_only:
            render(chosen, args.out, args.split, args.jobs)
            print(f"done in {(time.time() - t0) / 60:.1f} min", flush=True)
    except (RenderError, OSError) as e:
        print(f"render_extra: {one_line(e, 300)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
