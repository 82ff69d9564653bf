"""The read-model contract against the in-memory backend (embedded mode)."""

from __future__ import annotations

from swift_trainer.projections.read_models import Limits, MemoryReadModel, ReadModel

from .contract import ReadModelContract


class TestMemoryReadModel(ReadModelContract):
    survives_restart = False

    async def create_read_model(self, limits: Limits | None = None) -> ReadModel:
        return MemoryReadModel(limits=limits)
