"""The README's quick start and .ci/run cannot drift apart: CI runs the quick start's commands, in order."""

import re

from conftest import ROOT


def quick_start_steps() -> list[str]:
    """The commands of the README's quick-start block, each `a && b` split into its steps."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README.md: no ```bash block in the Quick start section"
    lines = [line.strip() for line in block.group(1).splitlines()]
    return [step.strip() for line in lines if line and not line.startswith("#") for step in line.split("&&")]


def ci_commands() -> list[str]:
    lines = [line.strip() for line in (ROOT / ".ci/run").read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def in_order(wanted: list[str], have: list[str]) -> str | None:
    """The first of `wanted` that `have` lacks after the ones before it, or None when all are there in order."""
    rest = iter(have)
    for step in wanted:
        if step not in rest:  # consumes `rest` up to the match, so the order counts
            return step
    return None


def test_quick_start_is_what_ci_runs():
    steps = quick_start_steps()
    assert len(steps) == 6, steps  # venv, activate, install, transcribe; install, tests
    assert steps[0].startswith("python3 -m venv ") and steps[1].startswith(". ") and steps[1].endswith("/bin/activate")
    assert steps[-1] == "python -m pytest -q"
    missing = in_order(steps, ci_commands())
    assert missing is None, f".ci/run does not run the README's `{missing}` (in the README's order)"


def test_in_order_can_fail():
    assert in_order(["a", "b"], ["x", "a", "y", "b"]) is None
    assert in_order(["a", "b"], ["b", "a"]) == "b"  # both there, in the wrong order
    assert in_order(["a", "b"], ["a"]) == "b"


def test_quick_start_names_files_that_exist_and_a_git_ignored_venv():
    steps = quick_start_steps()
    venv = steps[0].split()[-1]
    named = [word for step in steps for word in step.split()[1:] if re.search(r"\.(txt|py|opus)$", word)]
    assert "requirements-inference.txt" in named and "requirements.txt" in named and "transcribe.py" in named
    for name in named:
        assert (ROOT / name).is_file(), f"README's quick start names {name}, which is not in the repository"
    ignored = (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert f"/{venv}/" in ignored or f"{venv}/" in ignored, f"{venv}/ is not in .gitignore"
