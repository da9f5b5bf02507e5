"""tools/render_extra.py: the plan of new sentences and voices, and its hand-off to tools/render_corpus.py."""

import json
import lzma
import random

import pytest

from tools import render_corpus, render_extra

VARIANTS = ["m1", "f2", "Boris", "klatt3"]
LETTERS = "абвгдежзиклмнопрстуфхцчшщэюя"
SPLIT_WORD = {"train": "учебная", "valid": "проверочная", "more": "добавочная"}


def word(i: int) -> str:
    """i spelled in Cyrillic letters (the recipe's texts have no digits): 0 -> а, 29 -> бб."""
    out = ""
    while True:
        out = LETTERS[i % len(LETTERS)] + out
        i //= len(LETTERS)
        if not i:
            return out


def fake_recipe(tmp_path, lm_sentences=400, more=200):
    """The ru-synth recipe folder in miniature: plan.jsonl.xz with train/valid/more rows, lm.txt.xz holding the
    more split's sentences plus unused ones."""
    folder = tmp_path / "ru-synth"
    folder.mkdir()
    rng = random.Random(1)
    plan = []
    for split, n in (("train", 30), ("valid", 10), ("more", more)):
        for i in range(n):
            row = {"id": f"{split}_{i:05d}", "split": split, "text": f"{SPLIT_WORD[split]} фраза {word(i)}"}
            row["source"] = "x"
            if i % 4 == 0:  # a quarter festival
                row.update(
                    engine="festival",
                    voice="msu_ru_nsh_clunits",
                    variant=None,
                    speed=None,
                    pitch=None,
                    duration_stretch=round(rng.uniform(0.85, 1.25), 3),
                    pitch_shift_cents=rng.randint(-300, 300),
                )
            else:
                v = VARIANTS[(i // 4) % len(VARIANTS)]
                row.update(
                    engine="espeak-ng",
                    voice=f"ru+{v}",
                    variant=v,
                    speed=rng.randint(110, 200),
                    pitch=rng.randint(20, 80),
                    duration_stretch=None,
                    pitch_shift_cents=None,
                )
            row["rel"] = f"000/{row['id']}.opus"
            plan.append(row)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in plan)
    (folder / "plan.jsonl.xz").write_bytes(lzma.compress(text.encode("utf-8")))
    more_texts = [r["text"] for r in plan if r["split"] == "more"]
    lm = more_texts + [f"новая фраза номер {word(i)}" for i in range(lm_sentences)] + ["новая фраза номер г"]
    (folder / "lm.txt.xz").write_bytes(lzma.compress(("\n".join(lm) + "\n").encode("utf-8")))
    return folder, plan


def lm_lines(folder) -> list[str]:
    return lzma.decompress((folder / "lm.txt.xz").read_bytes()).decode("utf-8").splitlines()


@pytest.fixture
def renders(monkeypatch):
    """render_corpus's renderer, recorded: which clips each batch asks for, and which manifests get written."""
    calls = []

    def render_batch(batch):
        engine, rows, dsts = batch
        calls.append((engine, [r["id"] for r in rows]))
        for dst in dsts:
            render_corpus.Path(dst).parent.mkdir(parents=True, exist_ok=True)
            open(dst, "wb").close()
        return len(rows)

    def write_manifests(folder, rows):
        calls.append(("manifest", folder.name, len(rows)))
        return len(rows), 0.0

    monkeypatch.setattr(render_corpus, "render_batch", render_batch)
    monkeypatch.setattr(render_corpus, "write_manifests", write_manifests)
    monkeypatch.setattr(render_corpus, "missing_packages", lambda engines: None)
    return calls


def test_plan_reads_only_unused_sentences_with_the_more_splits_voices(tmp_path):
    folder, plan = fake_recipe(tmp_path)
    lm = lm_lines(folder)
    rows = render_extra.make_plan(plan, lm, 300, seed=0)
    texts = [r["text"] for r in rows]
    assert len(set(texts)) == 300, "a sentence drawn twice"
    assert not set(texts) & {r["text"] for r in plan}, "a sentence some clip already reads"
    assert set(texts) <= {f"новая фраза номер {word(i)}" for i in range(400)}
    esp = [r for r in rows if r["engine"] == "espeak-ng"]
    fest = [r for r in rows if r["engine"] == "festival"]
    assert {r["variant"] for r in esp} == set(VARIANTS)
    assert all(r["voice"] == f"ru+{r['variant']}" for r in esp)
    more = [r for r in plan if r["split"] == "more"]
    for key in ("speed", "pitch"):
        vals = [r[key] for r in more if r["engine"] == "espeak-ng"]
        assert all(min(vals) <= r[key] <= max(vals) for r in esp)
    for key in ("duration_stretch", "pitch_shift_cents"):
        vals = [r[key] for r in more if r["engine"] == "festival"]
        assert all(min(vals) <= r[key] <= max(vals) for r in fest)
    assert all(r["voice"] == "msu_ru_nsh_clunits" and r["speed"] is None for r in fest)
    assert 0.15 < len(fest) / len(rows) < 0.35  # the more split's share is 0.25
    assert [r["id"] for r in rows[:2]] == ["extra_00000", "extra_00001"]
    assert rows[0]["rel"] == "000/extra_00000.opus" and all(r["split"] == "extra" for r in rows)


def test_plan_is_the_same_for_the_same_seed_only(tmp_path):
    folder, plan = fake_recipe(tmp_path)
    lm = lm_lines(folder)
    a = render_extra.make_plan(plan, lm, 50, seed=0)
    assert a == render_extra.make_plan(plan, lm, 50, seed=0)
    assert a != render_extra.make_plan(plan, lm, 50, seed=1)


def test_plan_refuses_more_clips_than_unused_sentences(tmp_path):
    folder, plan = fake_recipe(tmp_path, lm_sentences=40)
    lm = lm_lines(folder)
    assert len(render_extra.make_plan(plan, lm, 40, seed=0)) == 40  # the duplicate lm line counts once
    with pytest.raises(render_extra.PlanError, match="only 40 sentences"):
        render_extra.make_plan(plan, lm, 41, seed=0)
    with pytest.raises(render_extra.PlanError, match="no `more` clips"):
        render_extra.make_plan([r for r in plan if r["split"] != "more"], lm, 5, seed=0)


def test_cli_plans_renders_the_missing_clips_and_resumes(tmp_path, capsys, renders):
    folder, _ = fake_recipe(tmp_path)
    out = tmp_path / "corpus"
    args = ["--recipe", str(folder), "--out", str(out), "--clips", "60", "--jobs", "1"]
    assert render_extra.main([*args, "--limit", "20"]) == 0
    planned = [json.loads(line) for line in (out / "extra" / "plan.jsonl").read_text("utf-8").splitlines()]
    assert len(planned) == 60
    rendered = [c for c in renders if c[0] in ("espeak-ng", "festival")]
    assert sorted(i for c in rendered for i in c[1]) == [f"extra_{i:05d}" for i in range(20)]
    by_id = {r["id"]: r for r in planned}
    assert all(by_id[i]["engine"] == engine for engine, ids in rendered for i in ids)
    assert renders[-1] == ("manifest", "extra", 20)
    assert len(list((out / "extra").rglob("*.opus"))) == 20

    renders.clear()
    assert render_extra.main(args) == 0  # again, all of it: only the 40 not yet rendered are asked for
    rendered = [c for c in renders if c[0] in ("espeak-ng", "festival")]
    assert sorted(i for c in rendered for i in c[1]) == [f"extra_{i:05d}" for i in range(20, 60)]
    assert renders[-1] == ("manifest", "extra", 60)
    assert "40 of 60 clips to render" in capsys.readouterr().out


def test_cli_names_missing_synthesizers_before_writing_the_plan(tmp_path, monkeypatch, capsys):
    folder, _ = fake_recipe(tmp_path)
    out = tmp_path / "corpus"
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no espeak-ng, no festival
    assert render_extra.main(["--recipe", str(folder), "--out", str(out), "--clips", "60"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "render_extra: missing espeak-ng, festival, festvox-ru: apt-get install -y espeak-ng festival festvox-ru\n"
    )
    assert not out.exists()
    assert render_extra.main(["--recipe", str(folder), "--out", str(out), "--clips", "60", "--plan_only"]) == 0


def test_cli_one_line_errors_and_no_plan_on_failure(tmp_path, capsys):
    folder, _ = fake_recipe(tmp_path, lm_sentences=10)
    out = tmp_path / "corpus"
    assert render_extra.main(["--recipe", str(folder), "--out", str(out), "--clips", "11", "--plan_only"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("render_extra:") and "only 10 sentences" in err and "\n" not in err
    assert render_extra.main(["--recipe", str(tmp_path / "nowhere"), "--out", str(out), "--plan_only"]) == 1
    err = capsys.readouterr().err.strip()
    assert "nowhere" in err and "plan.jsonl" in err and "\n" not in err
    (folder / "plan.jsonl.xz").write_bytes(lzma.compress(b'{"id": 1\n'))
    assert render_extra.main(["--recipe", str(folder), "--out", str(out), "--plan_only"]) == 1
    assert capsys.readouterr().err.startswith(f"render_extra: {folder / 'plan.jsonl.xz'}:1: not a JSON row")
    assert not out.exists()
    with pytest.raises(SystemExit):
        render_extra.main(["--clips", "0"])


def test_a_second_split_draws_none_of_the_first_splits_sentences(tmp_path, capsys):
    folder, _ = fake_recipe(tmp_path, lm_sentences=120)
    out = tmp_path / "corpus"
    base = ["--recipe", str(folder), "--out", str(out), "--plan_only"]
    assert render_extra.main([*base, "--clips", "70"]) == 0
    first = {json.loads(line)["text"] for line in (out / "extra" / "plan.jsonl").read_text("utf-8").splitlines()}
    second = ["--split", "extra2", "--seed", "1", "--exclude", str(out / "extra" / "plan.jsonl")]
    assert render_extra.main([*base, *second, "--clips", "50"]) == 0  # 120 unused - 70 drawn = all 50 left
    rows = [json.loads(line) for line in (out / "extra2" / "plan.jsonl").read_text("utf-8").splitlines()]
    assert len(rows) == 50 and not first & {r["text"] for r in rows}
    assert rows[0]["id"] == "extra2_00000" and rows[0]["rel"] == "000/extra2_00000.opus"
    assert {r["split"] for r in rows} == {"extra2"}
    capsys.readouterr()
    assert render_extra.main([*base, *second, "--clips", "51"]) == 1
    assert "only 50 sentences" in capsys.readouterr().err
    # without --exclude the same seed may draw the first split's sentences again
    assert render_extra.main([*base, "--split", "extra2", "--seed", "1", "--clips", "50"]) == 0
    again = {json.loads(line)["text"] for line in (out / "extra2" / "plan.jsonl").read_text("utf-8").splitlines()}
    assert first & again


@pytest.mark.parametrize(
    "args",
    [["--split", "more"], ["--split", "train"], ["--split", "../x"], ["--exclude", "CORPUS/extra/plan.jsonl"]],
)
def test_cli_refuses_a_split_that_would_write_over_a_plan(tmp_path, args, capsys):
    folder, _ = fake_recipe(tmp_path)
    out = tmp_path / "corpus"
    args = [a.replace("CORPUS", str(out)) for a in args]
    with pytest.raises(SystemExit) as e:
        render_extra.main(["--recipe", str(folder), "--out", str(out), "--plan_only", *args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and args[0] in err.splitlines()[-1]
    assert not out.exists()


def test_cli_names_an_unreadable_exclude_plan(tmp_path, capsys):
    folder, _ = fake_recipe(tmp_path)
    out = tmp_path / "corpus"
    missing = tmp_path / "old" / "plan.jsonl"
    assert (
        render_extra.main(["--recipe", str(folder), "--out", str(out), "--plan_only", "--exclude", str(missing)]) == 1
    )
    err = capsys.readouterr().err.strip()
    assert str(missing) in err and "\n" not in err and not out.exists()
