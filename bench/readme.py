"""The README's benchmarks block, generated from BENCHMARKS.md: a link to every section and
every target verdict a section states, quoted as the section's script wrote it.

    python -m bench.readme            # rewrite the block between the README's markers
    python -m bench.readme --check    # exit 1 when the block differs from BENCHMARKS.md's

``bench.report.write_section`` calls :func:`refresh` after writing a section, so a benchmark
run updates the README too; a test fails when the block drifts from BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.report import BENCHMARKS, README

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
_SECTION = re.compile(r"<!-- bench:([\w-]+) -->\n(.*?)\n<!-- /bench:\1 -->", re.S)
_VERDICT = re.compile(r"\*\*(met|not met)\*\*", re.I)  # a sentence's verdict, in bold
_ROW = re.compile(r"^\|(.+)\|\s*(?:\*\*)?(met|not met)(?:\*\*)?\s*\|$", re.I)  # a table's
# last column, bold or not


@dataclass
class Section:
    """One BENCHMARKS.md section: its title and the verdicts it states, in order."""

    name: str
    title: str
    verdicts: list[tuple[bool, str]] = field(default_factory=list)  # (met, the claim)


def anchor(title: str) -> str:
    """The fragment GitHub gives a heading: lower case, punctuation dropped, spaces as '-'."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def _claim(text: str) -> str:
    """A verdict's sentence up to its verdict, list marker dropped, parentheses closed."""
    text = text.strip().removeprefix("- ").strip()
    return text + ")" * max(text.count("(") - text.count(")"), 0)


def sections(text: str) -> list[Section]:
    """The sections of a BENCHMARKS.md text and their verdicts: every bold **met** / **not
    met** in a line (the line up to it quoted, under its ### heading), and every table row
    whose last column is met / not met (its cells joined)."""
    out = []
    for name, body in _SECTION.findall(text):
        title, sub = name, ""
        section = Section(name, title)
        for line in body.splitlines():
            if line.startswith("## ") and section.title == name:
                section.title = line[3:].strip()
            elif line.startswith("### "):
                sub = line[4:].strip()
            elif row := _ROW.match(line.strip()):
                cells = [c.strip() for c in row.group(1).split("|")]
                if cells[0] == "target" or set(cells[0]) <= {"-", ":"}:
                    continue
                claim = f"{cells[0]}: " + "; ".join(cells[1:]) + f" (**{row.group(2)}**)"
                section.verdicts.append((row.group(2).lower() == "met", claim))
            else:
                for m in _VERDICT.finditer(line):
                    claim = _claim(line[:m.end()])
                    section.verdicts.append((m.group(1).lower() == "met",
                                             f"{sub}: {claim}" if sub else claim))
        out.append(section)
    return out


def render(text: str, target: str = "BENCHMARKS.md") -> str:
    """The README block (markers included) for a BENCHMARKS.md text linked as ``target``."""
    found = sections(text)
    met = sum(ok for s in found for ok, _ in s.verdicts)
    missed = sum(not ok for s in found for ok, _ in s.verdicts)
    lines = [BEGIN,
             "<!-- generated from BENCHMARKS.md by `python -m bench.readme`; do not edit -->",
             f"Every figure and verdict in [{target}]({target}) is computed by the run that its "
             f"section names. Its targets as the scripts judged them: {met} met, {missed} not "
             "met.", ""]
    for s in found:
        judged = (f"{sum(ok for ok, _ in s.verdicts)} met, "
                  f"{sum(not ok for ok, _ in s.verdicts)} not met" if s.verdicts
                  else "no target judged")
        lines.append(f"- [{s.title}]({target}#{anchor(s.title)}): {judged}")
        lines += [f"  - {claim}" for _, claim in s.verdicts]
    lines.append(END)
    return "\n".join(lines)


def block(readme: str) -> str | None:
    """The generated block of a README text (markers included), None without markers."""
    m = re.search(re.escape(BEGIN) + r".*?" + re.escape(END), readme, re.S)
    return m.group(0) if m else None


def refresh(benchmarks: Path = BENCHMARKS, readme: Path = README) -> bool:
    """Rewrite the README's block from ``benchmarks``; whether it changed. A README without
    the markers is left alone."""
    text = readme.read_text()
    old = block(text)
    new = render(benchmarks.read_text())
    if old is None or old == new:
        return False
    readme.write_text(text.replace(old, new))
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.readme", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true",
                   help="only compare: exit 1 when the README's block is out of date")
    args = p.parse_args(argv)
    current = block(README.read_text())
    if current is None:
        print(f"{README}: no {BEGIN} ... {END} block", file=sys.stderr)
        return 1
    if args.check:
        stale = current != render(BENCHMARKS.read_text())
        print("README benchmarks block out of date: run python -m bench.readme" if stale
              else "README benchmarks block up to date")
        return int(stale)
    print("README benchmarks block rewritten" if refresh() else
          "README benchmarks block already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
