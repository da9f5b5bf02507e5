"""tools/render_extra.py: the plan of new sentences and voices, and its hand-off to ru-synth's render.py."""

import json
import random

import pytest

from tools import render_extra

VARIANTS = ["m1", "f2", "Boris", "klatt3"]


def fake_ru_synth(tmp_path, lm_sentences=400, more=200):
    """A ru-synth recipe folder in miniature: plan.jsonl with train/valid/more rows, lm.txt holding the more
    split's sentences plus unused ones, and a render.py that records what it is asked to do."""
    folder = tmp_path / "ru-synth"
    folder.mkdir()
    rng = random.Random(1)
    plan = []
    for split, n in (("train", 30), ("valid", 10), ("more", more)):
        for i in range(n):
            row = {"id": f"{split}_{i:05d}", "split": split, "text": f"{split} фраза {i}", "source": "x"}
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
    (folder / "plan.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in plan), "utf-8")
    more_texts = [r["text"] for r in plan if r["split"] == "more"]
    lm = more_texts + [f"новая фраза номер {i}" for i in range(lm_sentences)] + ["новая фраза номер 3"]
    (folder / "lm.txt").write_text("\n".join(lm) + "\n", "utf-8")
    (folder / "render.py").write_text(
        "import json, os\n"
        "CALLS = []\n"
        "def check_tools():\n    CALLS.append(('check',))\n"
        "def render_espeak(job):\n    pass\n"
        "def run_pool(fn, jobs, n, label):\n"
        "    CALLS.append((label, [it['id'] for it, _ in jobs]))\n"
        "    for it, dst in jobs:\n"
        "        os.makedirs(os.path.dirname(dst), exist_ok=True)\n"
        "        open(dst, 'wb').close()\n"
        "def render_festival(items, dsts, n, tmp):\n"
        "    CALLS.append(('festival', [it['id'] for it in items]))\n"
        "    for d in dsts:\n"
        "        os.makedirs(os.path.dirname(d), exist_ok=True)\n"
        "        open(d, 'wb').close()\n"
        "def write_manifests(out, split, items):\n"
        "    CALLS.append(('manifest', split, len(items)))\n",
        "utf-8",
    )
    return folder, plan


def test_plan_reads_only_unused_sentences_with_the_more_splits_voices(tmp_path):
    folder, plan = fake_ru_synth(tmp_path)
    lm = (folder / "lm.txt").read_text("utf-8").splitlines()
    rows = render_extra.make_plan(plan, lm, 300, seed=0)
    texts = [r["text"] for r in rows]
    assert len(set(texts)) == 300, "a sentence drawn twice"
    assert not set(texts) & {r["text"] for r in plan}, "a sentence some clip already reads"
    assert set(texts) <= {f"новая фраза номер {i}" for i in range(400)}
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
    folder, plan = fake_ru_synth(tmp_path)
    lm = (folder / "lm.txt").read_text("utf-8").splitlines()
    a = render_extra.make_plan(plan, lm, 50, seed=0)
    assert a == render_extra.make_plan(plan, lm, 50, seed=0)
    assert a != render_extra.make_plan(plan, lm, 50, seed=1)


def test_plan_refuses_more_clips_than_unused_sentences(tmp_path):
    folder, plan = fake_ru_synth(tmp_path, lm_sentences=40)
    lm = (folder / "lm.txt").read_text("utf-8").splitlines()
    assert len(render_extra.make_plan(plan, lm, 40, seed=0)) == 40  # the duplicate lm line counts once
    with pytest.raises(render_extra.PlanError, match="only 40 sentences"):
        render_extra.make_plan(plan, lm, 41, seed=0)
    with pytest.raises(render_extra.PlanError, match="no `more` clips"):
        render_extra.make_plan([r for r in plan if r["split"] != "more"], lm, 5, seed=0)


def test_cli_plans_renders_the_missing_clips_and_resumes(tmp_path, capsys):
    folder, _ = fake_ru_synth(tmp_path)
    out = tmp_path / "corpus"
    args = ["--ru_synth", str(folder), "--out", str(out), "--clips", "60", "--jobs", "1"]
    assert render_extra.main([*args, "--limit", "20"]) == 0
    calls = list(render_extra.sys.modules["ru_synth_render"].CALLS)
    planned = [json.loads(line) for line in (out / "extra" / "plan.jsonl").read_text("utf-8").splitlines()]
    assert len(planned) == 60
    rendered = [c for c in calls if c[0] in ("espeak-ng", "festival")]
    assert sorted(i for c in rendered for i in c[1]) == [f"extra_{i:05d}" for i in range(20)]
    assert calls[-1] == ("manifest", "extra", 20)
    assert len(list((out / "extra").rglob("*.opus"))) == 20

    assert render_extra.main(args) == 0  # again, all of it: only the 40 not yet rendered are asked for
    calls = render_extra.sys.modules["ru_synth_render"].CALLS
    rendered = [c for c in calls if c[0] in ("espeak-ng", "festival")]
    assert sorted(i for c in rendered for i in c[1]) == [f"extra_{i:05d}" for i in range(20, 60)]
    assert calls[-1] == ("manifest", "extra", 60)
    assert "40 of 60 clips to render" in capsys.readouterr().out


def test_cli_one_line_errors_and_no_plan_on_failure(tmp_path, capsys):
    folder, _ = fake_ru_synth(tmp_path, lm_sentences=10)
    out = tmp_path / "corpus"
    assert render_extra.main(["--ru_synth", str(folder), "--out", str(out), "--clips", "11", "--plan_only"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("render_extra:") and "only 10 sentences" in err and "\n" not in err
    assert render_extra.main(["--ru_synth", str(tmp_path / "nowhere"), "--out", str(out), "--plan_only"]) == 1
    err = capsys.readouterr().err.strip()
    assert "nowhere" in err and "plan.jsonl" in err and "\n" not in err
    (folder / "plan.jsonl").write_text('{"id": 1\n', "utf-8")
    assert render_extra.main(["--ru_synth", str(folder), "--out", str(out), "--plan_only"]) == 1
    assert "plan.jsonl" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SystemExit):
        render_extra.main(["--clips", "0"])


def test_a_second_split_draws_none_of_the_first_splits_sentences(tmp_path, capsys):
    folder, _ = fake_ru_synth(tmp_path, lm_sentences=120)
    out = tmp_path / "corpus"
    base = ["--ru_synth", str(folder), "--out", str(out), "--plan_only"]
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
    folder, _ = fake_ru_synth(tmp_path)
    out = tmp_path / "corpus"
    args = [a.replace("CORPUS", str(out)) for a in args]
    with pytest.raises(SystemExit) as e:
        render_extra.main(["--ru_synth", str(folder), "--out", str(out), "--plan_only", *args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and args[0] in err.splitlines()[-1]
    assert not out.exists()


def test_cli_names_an_unreadable_exclude_plan(tmp_path, capsys):
    folder, _ = fake_ru_synth(tmp_path)
    out = tmp_path / "corpus"
    missing = tmp_path / "old" / "plan.jsonl"
    assert (
        render_extra.main(["--ru_synth", str(folder), "--out", str(out), "--plan_only", "--exclude", str(missing)]) == 1
    )
    err = capsys.readouterr().err.strip()
    assert str(missing) in err and "\n" not in err and not out.exists()
