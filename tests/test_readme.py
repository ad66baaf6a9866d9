"""The README says what the code does: its multi-process section is scripts/walkthrough.sh's
marked section verbatim, and every command its command table names exists."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from chainfl.cli import main

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SCRIPT = ROOT / "scripts" / "walkthrough.sh"
START, END = "# --8<-- [start:walkthrough]", "# --8<-- [end:walkthrough]"
#: the comment that introduces the quoted block in the README
QUOTE_MARKER = "<!-- --8<-- scripts/walkthrough.sh"


def script_section() -> str:
    """The lines between the script's start and end markers (markers excluded, nothing else stripped)."""
    lines = SCRIPT.read_text(encoding="utf-8").splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.rstrip("\n") == START]
    ends = [i for i, line in enumerate(lines) if line.rstrip("\n") == END]
    assert len(starts) == 1 and len(ends) == 1 and starts[0] < ends[0], \
        f"{SCRIPT} needs exactly one {START!r} line followed by one {END!r} line"
    return "".join(lines[starts[0] + 1:ends[0]])


def readme_quote() -> str:
    """The content of the ```bash fence right after the README's quote marker."""
    text = README.read_text(encoding="utf-8")
    assert text.count(QUOTE_MARKER) == 1, f"README.md needs exactly one {QUOTE_MARKER!r} comment"
    after = text[text.index(QUOTE_MARKER):]
    after = after[after.index("\n") + 1:]
    assert after.startswith("```bash\n"), "the quote marker must be followed directly by a ```bash fence"
    body = after[len("```bash\n"):]
    end = body.find("\n```\n")
    assert end >= 0, "the README's walkthrough fence is not closed"
    return body[:end + 1]


def test_readme_quotes_the_walkthrough_verbatim():
    section = script_section()
    assert section.count("chainfl ") >= 10, "the marked section lost its commands"
    assert readme_quote() == section


def commands_section() -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"^## Commands\n(.*?)^## ", text, flags=re.S | re.M)
    assert match, "README.md has no '## Commands' section"
    return match.group(1)


def named_commands() -> list[tuple[str, ...]]:
    """Each `chainfl …` code span in the command table, as the command path it names: the words
    after `chainfl` while they can be subcommand names (lowercase words, not options or placeholders)."""
    table = "\n".join(line for line in commands_section().splitlines() if line.startswith("| `chainfl "))
    paths = []
    for span in re.findall(r"`(chainfl [^`]*)`", table):
        words = []
        for token in span.replace("\\|", " ").split()[1:]:
            if not re.fullmatch(r"[a-z][a-z0-9-]*", token):
                break
            words.append(token)
        paths.append(tuple(words))
    return paths


def resolve(path: tuple[str, ...]) -> tuple[str, ...]:
    """The command path up to its leaf; a word that is no subcommand of a group fails."""
    ctx = click.Context(main)
    cmd, resolved = main, []
    for word in path:
        if not isinstance(cmd, click.Group):
            break                                   # the rest are arguments of the leaf command
        sub = cmd.get_command(ctx, word)
        assert sub is not None, f"README names `chainfl {' '.join(path)}`, but `{' '.join(['chainfl', *resolved])}` " \
                                f"has no subcommand {word!r}"
        cmd, resolved = sub, [*resolved, word]
    return tuple(resolved)


def test_command_table_names_enough_commands():
    paths = {resolve(p) for p in named_commands()}
    assert len(paths) >= 20, sorted(paths)          # the table lists every leaf command


@pytest.mark.parametrize("path", sorted({p for p in named_commands()}), ids=" ".join)
def test_each_command_in_the_readme_exists(path):
    resolved = resolve(path)
    assert resolved, "a `chainfl …` entry without a command"
    result = CliRunner().invoke(main, [*resolved, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.output
