"""Every command a component sends is one its NATS user may publish under the shipped
auth.conf: a new command that nobody added there would work in the embedded service and
be refused, silently, in a compose deployment."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from swift_trainer.bus.event_contract import COMMAND_TYPES

from .compose_file import DEPLOY

SRC = Path(__file__).resolve().parents[2] / "src" / "swift_trainer"

# The source folders each compose service runs, by the NATS user it connects as.
SENDERS: dict[str, tuple[str, ...]] = {
    "runner": ("runner",),
    "scheduler": ("projections/scheduler", "projections/experiments"),
    "api": ("api",),
}
# Commands only the operator (the CLI with its own credentials) sends.
OPERATOR_ONLY = {"IssueKey", "RevokeKey", "SetQuota"}


def _user_blocks() -> dict[str, str]:
    text = (DEPLOY / "nats" / "auth.conf").read_text()
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    blocks: dict[str, str] = {}
    for match in re.finditer(r"user:\s*(\w+)", body):
        rest = body[match.end() :]
        following = re.search(r"user:\s*\w+", rest)
        blocks[match.group(1)] = rest[: following.start()] if following else rest
    return blocks


def _published(user: str) -> set[str]:
    block = _user_blocks()[user]
    publish = re.search(r"publish:\s*\{\s*allow:\s*\[(.*?)\]", block, re.S)
    assert publish is not None, f"no publish allow list for {user}"
    return set(re.findall(r'"st\.commands\.(\w+)"', publish.group(1)))


def _sent_by(folders: tuple[str, ...]) -> set[str]:
    sent: set[str] = set()
    for folder in folders:
        for path in (SRC / folder).rglob("*.py"):
            text = path.read_text()
            sent |= {name for name in COMMAND_TYPES if re.search(rf"\b{name}\(", text)}
    return sent


@pytest.mark.parametrize("user", sorted(SENDERS))
def test_each_component_may_publish_the_commands_it_sends(user: str) -> None:
    sent = _sent_by(SENDERS[user])
    assert sent, f"found no commands under {SENDERS[user]}: the scan is broken"
    assert sent - _published(user) == set()


def test_every_command_has_a_sender_or_is_the_operators() -> None:
    granted = set().union(*(_published(user) for user in SENDERS))
    assert set(COMMAND_TYPES) - granted == OPERATOR_ONLY


def test_the_operator_may_publish_anything() -> None:
    assert re.search(r'publish:\s*">"', _user_blocks()["operator"])
