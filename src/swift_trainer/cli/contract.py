"""``swift-trainer contract``: write the AsyncAPI document and message schemas, or check them.

``--check`` exits 1 when the committed files differ from what the code generates, so CI
(and ``tests/bus/test_contract.py``) catch a message change that forgot the contract.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..bus.event_contract import stale_files, write_contract
from ..core.settings import Settings

DEFAULT_FOLDER = Path("docs/contract")


def add_contract_arguments(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    contract = sub.add_parser(
        "contract", help="generate the AsyncAPI 3.0 document and JSON Schemas of the messages"
    )
    contract.add_argument("--out", type=Path, default=DEFAULT_FOLDER, help="folder to write")
    contract.add_argument(
        "--check", action="store_true", help="only compare; exit 1 when a file is stale"
    )


async def run_contract(_settings: Settings, args: argparse.Namespace) -> int:
    if args.check:
        stale = stale_files(args.out)
        for path in stale:
            sys.stderr.write(f"stale: {path} (run 'swift-trainer contract' and commit)\n")
        return 1 if stale else 0
    for path in write_contract(args.out):
        sys.stdout.write(f"wrote {path}\n")
    return 0
