"""The README stays true: its "Audit your own model in 5 minutes" script writes a registry that `featureaudit run`
audits, and every link in the README and docs/ reaches a file and a heading that exist."""

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def _quickstart() -> tuple[str, str]:
    section = README[README.index("## Audit your own model in 5 minutes"):]
    section = section[:section.index("\n## ", 1)]
    python = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    shell = re.search(r"```sh\n(.*?)```", section, re.S).group(1).strip()
    return python, shell


def test_the_quickstart_writes_a_registry_that_run_audits(tmp_path, monkeypatch, capsys):
    from flows.cli import main

    python, shell = _quickstart()
    assert shell == ".venv/bin/featureaudit run --registry registry --model credit"
    monkeypatch.chdir(tmp_path)
    exec(compile(python, "README.md", "exec"), {})
    # as the README says, but two methods, to keep the suite short
    code = main(["run", "--registry", "registry", "--model", "credit", "--methods", "weights,permutation"])
    printed = capsys.readouterr().out.split()
    assert code == 0
    assert sorted(Path(p).name for p in printed) == ["report.html", "report.pdf", "results.json"]
    assert all(Path(p).resolve().is_relative_to(tmp_path / "reports" / "credit" / "v1") for p in printed)
    results = json.loads(next(Path(p) for p in printed if p.endswith("results.json")).read_text())
    assert results["methods"]["permutation"]["status"] == "ok"


def _slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", ["README.md", *sorted(p.name for p in (REPO / "docs").glob("*.md"))])
def test_every_link_reaches_a_file_and_heading(page):
    path = REPO / page if page == "README.md" else REPO / "docs" / page
    text = path.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        assert linked.exists(), f"{page}: {target} names no file"
        if anchor and linked.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", linked.read_text(encoding="utf-8"), re.M)
            assert anchor in {_slug(h) for h in headings}, f"{page}: {target} names no heading"
