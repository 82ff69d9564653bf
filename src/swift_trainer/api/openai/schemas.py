"""The OpenAI API's shapes, as the official ``openai`` Python client validates them.

Every field the client's models require is always present (``None`` is written as
``null``, never left out), so ``_strict_response_validation=True`` passes. Requests are
decoded strictly: an unknown field is a 400 with the field named, not silently dropped.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from ...core.spec import FileId, MetadataKey, MetadataValue

Auto = Literal["auto"]
#: The client's ``FineTuningJob.status`` plus ``paused``, which this API returns for a
#: paused job (the client's Literal does not list it yet).
FineTuningStatus = Literal["queued", "running", "succeeded", "failed", "cancelled", "paused"]
OpenAIMetadata = dict[MetadataKey, MetadataValue]


# --- errors ----------------------------------------------------------------------------------


class OpenAIErrorBody(msgspec.Struct, frozen=True):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(msgspec.Struct, frozen=True):
    """``{"error": {"message", "type", "param", "code"}}``, the shape every /v1 error has."""

    error: OpenAIErrorBody


# --- files -----------------------------------------------------------------------------------


class FileObject(msgspec.Struct, frozen=True):
    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"]
    status_details: str | None
    expires_at: int | None = None
    object: Literal["file"] = "file"


class FileList(msgspec.Struct, frozen=True):
    data: list[FileObject]
    has_more: bool
    first_id: str | None
    last_id: str | None
    object: Literal["list"] = "list"


class FileDeleted(msgspec.Struct, frozen=True):
    id: str
    deleted: bool
    object: Literal["file"] = "file"


# --- fine-tuning jobs: requests --------------------------------------------------------------

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]


class Hyperparameters(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``auto`` (or absent) means the native default: 1 epoch, batch size 1, lr 1e-4."""

    batch_size: Auto | PositiveInt | None = None
    learning_rate_multiplier: Auto | PositiveFloat | None = None
    n_epochs: Auto | PositiveInt | None = None


class DpoHyperparameters(Hyperparameters, frozen=True, forbid_unknown_fields=True):
    beta: Auto | Annotated[float, msgspec.Meta(gt=0, le=10)] | None = None


class SupervisedMethod(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    hyperparameters: Hyperparameters | None = None


class DpoMethod(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    hyperparameters: DpoHyperparameters | None = None


class Method(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    type: Literal["supervised", "dpo"]
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None


class CreateFineTuningJob(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST /v1/fine_tuning/jobs``: the client's ``JobCreateParams``."""

    model: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
    training_file: FileId
    validation_file: FileId | None = None
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    suffix: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    seed: Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)] | None = None
    metadata: OpenAIMetadata | None = None
    integrations: list[Any] | None = None


# --- fine-tuning jobs: responses -------------------------------------------------------------


class JobError(msgspec.Struct, frozen=True):
    code: str
    message: str
    param: str | None = None


class HyperparametersOut(msgspec.Struct, frozen=True):
    batch_size: Auto | int
    learning_rate_multiplier: Auto | float
    n_epochs: Auto | int


class DpoHyperparametersOut(HyperparametersOut, frozen=True):
    beta: Auto | float


class SupervisedOut(msgspec.Struct, frozen=True):
    hyperparameters: HyperparametersOut


class DpoOut(msgspec.Struct, frozen=True):
    hyperparameters: DpoHyperparametersOut


class MethodOut(msgspec.Struct, frozen=True, omit_defaults=True):
    type: Literal["supervised", "dpo"]
    supervised: SupervisedOut | None = None
    dpo: DpoOut | None = None


class FineTuningJob(msgspec.Struct, frozen=True):
    id: str
    created_at: int
    error: JobError | None
    fine_tuned_model: str | None
    finished_at: int | None
    hyperparameters: HyperparametersOut
    model: str
    organization_id: str
    result_files: list[str]
    seed: int
    status: FineTuningStatus
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    estimated_finish: int | None
    integrations: list[Any] | None
    metadata: dict[str, str] | None
    method: MethodOut
    user_provided_suffix: str | None
    object: Literal["fine_tuning.job"] = "fine_tuning.job"


class FineTuningJobList(msgspec.Struct, frozen=True):
    data: list[FineTuningJob]
    has_more: bool
    object: Literal["list"] = "list"


class FineTuningJobEvent(msgspec.Struct, frozen=True):
    id: str
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    #: For ``metrics``: step, total_steps, train_loss, learning_rate, epoch, grad_norm,
    #: valid_loss (those known); empty for a message.
    data: dict[str, float]
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"


class FineTuningJobEventList(msgspec.Struct, frozen=True):
    data: list[FineTuningJobEvent]
    has_more: bool
    object: Literal["list"] = "list"


class CheckpointMetrics(msgspec.Struct, frozen=True, omit_defaults=True):
    step: float | None = None
    train_loss: float | None = None
    valid_loss: float | None = None
    full_valid_loss: float | None = None


class FineTuningJobCheckpoint(msgspec.Struct, frozen=True):
    id: str
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    step_number: int
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"


class FineTuningJobCheckpointList(msgspec.Struct, frozen=True):
    data: list[FineTuningJobCheckpoint]
    has_more: bool
    first_id: str | None
    last_id: str | None
    object: Literal["list"] = "list"
