"""Render an `extra` training split of ru-synth: more sentences from lm.txt that no clip of the corpus reads yet,
spoken by the `more` split's voices, so that the model sees more spelling (docs/runs, demo v2, "what the remaining
errors are").

    python tools/render_extra.py --clips 25000      # data/ru-synth/extra: ~23 h of audio, ~25 min on two cores
    python tools/render_extra.py --split extra2 --seed 1 --exclude data/ru-synth/extra/plan.jsonl   # 25,000 more

The plan is drawn deterministically (--seed) from ../shared/data/ru-synth: sentences from lm.txt minus every text in
plan.jsonl and in the plans given to --exclude (earlier extra splits); engine, voice, rate, pitch, stretch and speed
as the `more` split's (festival for the same share of clips, espeak-ng voices out of the variants `more` uses,
values uniform over `more`'s ranges). It is written to OUT/SPLIT/plan.jsonl, and rendered with ru-synth's own
render.py functions into OUT/SPLIT/NNN/SPLIT_XXXXX.opus, with manifest.jsonl and meta.jsonl beside, as render.py
does for its splits. Resumable: rendered clips are kept. The valid and test sentences are not in lm.txt, so they
stay unseen."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proslushka.files import atomic_write  # noqa: E402

RU_SYNTH_SPLITS = {"train", "valid", "test", "more"}  # render.py's own; an extra split must not write over them


class PlanError(ValueError):
    pass


def read_plan(path: Path) -> list[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        raise PlanError(f"{path}: {e}") from None


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
    """`clips` new plan rows in render.py's format for `split`, none reading a text of `exclude`; the same for the
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
        row["rel"] = f"{i // 1000:03d}/{row['id']}.opus"  # at most 1000 files a folder, as render.py does
        rows.append(row)
    return rows


def load_renderer(ru_synth: Path):
    spec = importlib.util.spec_from_file_location("ru_synth_render", ru_synth / "render.py")
    if spec is None or not (ru_synth / "render.py").is_file():
        raise PlanError(f"{ru_synth / 'render.py'}: not found")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its pool workers get its functions by module name
    spec.loader.exec_module(module)
    return module


def render(items: list[dict], out: Path, split: str, ru_synth: Path, jobs: int) -> None:
    r = load_renderer(ru_synth)
    r.check_tools()
    folder = out / split
    dst = {it["id"]: str(folder / it["rel"]) for it in items}
    todo = [it for it in items if not Path(dst[it["id"]]).exists()]
    print(f"{split}: {len(todo)} of {len(items)} clips to render", flush=True)
    esp = [it for it in todo if it["engine"] == "espeak-ng"]
    fest = [it for it in todo if it["engine"] == "festival"]
    r.run_pool(r.render_espeak, [(it, dst[it["id"]]) for it in esp], jobs, "espeak-ng")
    if fest:
        with tempfile.TemporaryDirectory(prefix="ru-synth-extra-") as tmp:
            r.render_festival(fest, [dst[it["id"]] for it in fest], jobs, tmp)
    r.write_manifests(str(out), split, items)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--ru_synth",
        type=Path,
        default=ROOT.parent / "shared/data/ru-synth",
        help="the ru-synth recipe folder: plan.jsonl, lm.txt, render.py (default: ../shared/data/ru-synth)",
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
        plan = read_plan(args.ru_synth / "plan.jsonl")
        exclude = {it["text"] for path in args.exclude for it in read_plan(path)}
        lm_path = args.ru_synth / "lm.txt"
        try:
            lm_lines = lm_path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise PlanError(f"{lm_path}: {e}") from None
        items = make_plan(plan, lm_lines, args.clips, args.seed, args.split, exclude)
    except (PlanError, KeyError) as e:
        print(f"render_extra: {e}", file=sys.stderr)
        return 1
    text = "".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items)
    atomic_write(plan_path, text)
    print(f"{args.split}: {len(items)} clips planned -> {plan_path}", flush=True)
    if not args.plan_only:
        render(items[: args.limit] if args.limit else items, args.out, args.split, args.ru_synth, args.jobs)
        print(f"done in {(time.time() - t0) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
