"""The README keeps its promises: every `siamstream` command it shows exists with the options it shows (and its
`--help` works), every relative link in it and in docs/ points at a file that exists, and it stays short."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from pipeline.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").rglob("*.md"))


def shown_commands(text: str) -> list[list[str]]:
    """Every `siamstream ...` command in the README's bash blocks and inline code, as tokens (alternatives
    written ``a\\|b`` give one command each; ``[--opt X]`` counts as shown)."""
    found: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            found += [part.strip() for part in line.split("&&") if part.strip().startswith("siamstream ")]
    for code in re.findall(r"`(siamstream [^`]+)`", text):
        first, *alternatives = code.split("\\|")  # `siamstream bench encoder\|oneshot`: one command each
        found.append(first)
        found += [f"{first.rsplit(' ', 1)[0]} {alt}" for alt in alternatives]
    commands = []
    for line in found:
        tokens = shlex.split(line.replace("[", " ").replace("]", " "), comments=True)
        commands.append(tokens[1:])
    return commands


def resolve(parser: argparse.ArgumentParser, tokens: list[str]) -> tuple[list[str], argparse.ArgumentParser]:
    """The subcommand path of ``tokens`` and the parser that takes the rest."""
    path = []
    for token in tokens:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or token not in subs[0].choices:
            break
        path.append(token)
        parser = subs[0].choices[token]
    return path, parser


def test_every_command_shown_exists_with_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    commands = shown_commands(README.read_text())
    assert len(commands) >= 25  # the commands table, the quick start and the recipes
    seen_paths = set()
    for tokens in commands:
        path, sub = resolve(build_parser(), tokens)
        assert path, f"`siamstream {' '.join(tokens)}` names no siamstream command"
        options = {t.split("=")[0] for t in tokens if t.startswith("--")}
        known = set(sub._option_string_actions)
        assert options <= known, f"`siamstream {' '.join(tokens)}`: {sorted(options - known)} not in its --help"
        seen_paths.add(tuple(path))
    for path in sorted(seen_paths):
        with pytest.raises(SystemExit) as done:
            build_parser().parse_args([*path, "--help"])
        assert done.value.code == 0 and "usage: siamstream" in capsys.readouterr().out
    assert {("demo",), ("run",), ("bank", "build"), ("eval", "mot"), ("bench", "soak")} <= seen_paths
    path, sub = resolve(build_parser(), ["eval", "mot", "--seq", "X"])  # the check itself tells options apart
    assert path == ["eval", "mot"] and "--seq" in sub._option_string_actions
    assert "--sequence" not in sub._option_string_actions


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_points_at_a_file(doc: Path) -> None:
    links = re.findall(r"\]\(([^)\s]+)\)", doc.read_text())
    for link in links:
        if re.match(r"[a-z]+://|mailto:|#", link):
            continue
        target = (doc.parent / link.split("#")[0]).resolve()
        assert target.exists(), f"{doc.relative_to(REPO)} links to {link}, which does not exist"


def test_the_readme_stays_short_and_shows_its_picture() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert pictures and all((REPO / p).stat().st_size > 10_000 for p in pictures)
