"""No project history where a user or reader looks.

The README, the docs site, the source (comments, docstrings, error texts, the dashboard's
assets), the OpenAPI document and the command line's help speak about the product. Words
that only make sense to someone who followed its development (issue numbers, commit
hashes, "the seed", "not yet", remarks about machines and colleagues) fail this test.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Final, cast

import pytest

from swift_trainer.api import ApiDeps, create_app
from swift_trainer.api.deps import CommandSender
from swift_trainer.cli.entry import COMMAND_GROUPS
from swift_trainer.projections.read_models import MemoryReadModel

ROOT: Final = Path(__file__).resolve().parent.parent

#: What a reader cannot look up, each with a name for the failure message.
FORBIDDEN: Final[dict[str, re.Pattern[str]]] = {
    "the seed (the project's starting point)": re.compile(
        r"\b[Tt]he seed\b(?! (?:of|for|value|number))|\bseed's\b|\bSEED\.md\b"
    ),
    "an issue number": re.compile(r"(?i)\bissues? ?#?\d+\b|\bissues \d+(?:/\d+)+"),
    "a pull request or issue reference": re.compile(
        r"(?i)\b(?:PR|pull request|fixe[sd]|close[sd]|see|in) #\d+\b"
    ),
    "a commit hash": re.compile(r"(?i)\bcommits? `?[0-9a-f]{7,40}\b"),
    "a promise about the future": re.compile(
        r"(?i)\bnot (?:built )?yet\b|\buntil (?:that|it) is merged\b|\bnew in this round\b"
    ),
    "the development machine or its people": re.compile(
        r"(?i)\b(?:other )?engineers?\b|\bcolleagues?\b|\bthis (?:2-core )?(?:VM|machine|box)\b"
        r"|\bload average\b"
    ),
}

#: Phrases a page may use because it is about exactly that: the performance page notes the
#: load each figure was measured under, as its method says.
ALLOWED_IN: Final[dict[str, tuple[str, ...]]] = {
    "docs/performance.md": ("load average",),
}

_TEXT_SUFFIXES: Final = {".py", ".md", ".js", ".html", ".css", ".json", ".yml", ".yaml", ".txt"}


def hits(text: str, allowed: tuple[str, ...] = ()) -> list[str]:
    """Each forbidden phrase in ``text``, with its kind."""
    for phrase in allowed:
        text = re.sub(re.escape(phrase), "", text, flags=re.IGNORECASE)
    return [
        f"{kind}: {match.group(0)!r}"
        for kind, pattern in FORBIDDEN.items()
        for match in pattern.finditer(text)
    ]


def reader_files() -> Iterator[Path]:
    yield ROOT / "README.md"
    yield ROOT / "mkdocs.yml"
    for folder in (ROOT / "docs", ROOT / "src"):
        for path in sorted(folder.rglob("*")):
            if path.suffix in _TEXT_SUFFIXES and "vendor" not in path.parts:
                yield path


def test_no_history_words_in_readme_docs_and_source() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{number}: {hit}"
        for path in reader_files()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        for hit in hits(line, ALLOWED_IN.get(path.relative_to(ROOT).as_posix(), ()))
    ]
    assert not found, "history words:\n" + "\n".join(found)


def test_no_history_words_in_the_openapi_document() -> None:
    deps = ApiDeps(commands=cast(CommandSender, object()), read_model=MemoryReadModel())
    schema: Any = create_app(deps).openapi_schema.to_schema()
    found = hits(json.dumps(schema, ensure_ascii=False, default=str))
    assert not found, found


def _help(argv: list[str]) -> str:
    main = entry_points(group="console_scripts", name="swift-trainer")
    (entry,) = tuple(main)
    run = entry.load()
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        run([*argv, "--help"])
    return out.getvalue()


def _subcommands(help_text: str) -> list[str]:
    match = re.search(r"\{([\w,-]+)\}", help_text)
    return match.group(1).split(",") if match else []


def test_no_history_words_in_the_command_line_help() -> None:
    seen: dict[str, str] = {}
    # The top level lists its commands in groups; below it, argparse's ``{a,b}`` lists.
    todo: list[list[str]] = [[]] + [[name] for names in COMMAND_GROUPS.values() for name in names]
    while todo:
        argv = todo.pop()
        text = _help(argv)
        seen[" ".join(argv) or "(top)"] = text
        if argv:
            todo.extend([*argv, name] for name in _subcommands(text) if len(argv) < 2)
    assert len(seen) > 10, "the walk found the subcommands"
    found = {command: hits(text) for command, text in seen.items() if hits(text)}
    assert not found, found


@pytest.mark.parametrize(
    "text",
    [
        "the seed's defaults",
        "see issue 12",
        "issues 6/9/12",
        "fixed in #123",
        "commit `4057064`",
        "API keys are not yet built",
        "shared with other engineers",
        "on this 2-core machine",
    ],
)
def test_each_kind_of_history_word_is_caught(text: str) -> None:
    assert hits(text)


@pytest.mark.parametrize(
    "text",
    ["--seed 11", "`seed` (one is picked from the id)", "color: #333;", "sha256 digest"],
)
def test_product_words_pass(text: str) -> None:
    assert not hits(text)
