"""``python -m swift_trainer.cli``: the same as the ``swift-trainer`` command."""

from .entry import main

raise SystemExit(main())
