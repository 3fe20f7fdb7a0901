"""The messages that cross process boundaries, as JSON validated by pydantic.

Every message is checked on both ends: `encode` validates and refuses a
message over `MAX_MESSAGE_BYTES`; `decode` turns any bytes into a message or
raises `MessageRejected` naming the problem, and nothing else, whatever the
bytes are (truncated, binary, deeply nested, oversized). Never pickle.

Pure: no Redis import here.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal, Optional, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kubenas.errors import KubenasError, describe_validation_error
from kubenas.spec import TrainingSpec

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 64 * 1024
MAX_ERROR_CHARS = 2000
MAX_CURVE = 1000
TRIAL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"

TrialId = Annotated[str, Field(pattern=TRIAL_ID_PATTERN)]
Name = Annotated[str, Field(min_length=1, max_length=253)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Seconds = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
Timestamp = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
ErrorText = Annotated[str, Field(max_length=MAX_ERROR_CHARS)]


class MessageRejected(KubenasError, ValueError):
    """Bytes that are not a valid message; the reason names what is wrong."""


def clip_error(text: str) -> str:
    """An error text cut to what a message may carry (the end is usually the useful part)."""
    text = str(text)
    if len(text) <= MAX_ERROR_CHARS:
        return text
    return text[: MAX_ERROR_CHARS // 4] + " ... " + text[-(MAX_ERROR_CHARS * 3 // 4 - 10):]


class Message(BaseModel):
    # Unknown fields are ignored so that a newer peer's additions do not stall a
    # search during a rolling upgrade; `v` changes when a change is incompatible.
    model_config = ConfigDict(extra="ignore", frozen=True)
    max_bytes: ClassVar[int] = MAX_MESSAGE_BYTES

    v: Literal[1] = PROTOCOL_VERSION

    def encode(self) -> bytes:
        data = self.model_dump_json(by_alias=True).encode()
        if len(data) > self.max_bytes:
            raise MessageRejected(f"{type(self).__name__} of {len(data)} bytes is over the limit of {self.max_bytes}")
        return data


class TrialMessage(Message):
    """Controller -> trainers: one child network to train."""

    kind: Literal["trial"] = "trial"
    search: Name
    trial_id: TrialId
    genotype: dict[str, Any]
    epochs: int = Field(ge=1, le=1000, description="The most epochs this trial may train.")
    fidelity: Optional[int] = Field(default=None, ge=1, le=1000,
                                    description="Epochs after which the trainer waits for a decision (early stopping).")
    scheduled: bool = Field(default=False, description="Ask the controller after every epoch whether to go on.")
    training: TrainingSpec
    measure_latency: bool = False
    max_attempts: int = Field(default=3, ge=1, le=100)
    decision_timeout: Seconds = 60.0
    created: Timestamp = 0.0
    parent_trial_id: Optional[TrialId] = Field(
        default=None, description="The trial whose checkpoint this one starts from (see warm_start).")
    warm_start: Optional[Literal["inherit", "resume"]] = Field(
        default=None, description="inherit: copy the parent's matching weights into a fresh network; "
                                  "resume: the parent's architecture, all its weights, training on.")
    final: bool = Field(default=False, description="A final-stage trial: after training, the trainer tests the "
                                                   "network once and exports it with its weights.")

    schedule_epochs: Optional[int] = Field(
        default=None, ge=1, le=1000, description="The learning-rate schedule's length when the trial is part of a "
                                                 "longer one (PBT: the member's epochs); None: `epochs`.")
    schedule_start: int = Field(default=0, ge=0, le=1000,
                                description="The epoch of that schedule the trial starts at.")

    @model_validator(mode="after")
    def _warm_start_needs_a_parent(self) -> "TrialMessage":
        if self.warm_start is not None and self.parent_trial_id is None:
            raise ValueError("warm_start needs parent_trial_id")
        if self.schedule_start and (self.schedule_epochs is None or self.schedule_start >= self.schedule_epochs):
            raise ValueError(f"schedule_start {self.schedule_start} must be below schedule_epochs "
                             f"{self.schedule_epochs}")
        return self


TrainerStatus = Literal["succeeded", "diverged", "stopped", "failed"]


class ResultMessage(Message):
    """Trainer -> controller: how a trial ended."""

    kind: Literal["result"] = "result"
    search: Name
    trial_id: TrialId
    trainer: Name
    attempt: int = Field(ge=1, le=10_000)
    status: TrainerStatus
    reward: Optional[Fraction] = None
    curve: list[Fraction] = Field(default_factory=list, max_length=MAX_CURVE)
    cost: dict[Annotated[str, Field(max_length=64)], Finite] = Field(default_factory=dict, max_length=16)
    epochs: int = Field(default=0, ge=0, le=1000)
    error: Optional[ErrorText] = None
    started: Timestamp = 0.0
    finished: Timestamp = 0.0
    device: Annotated[str, Field(max_length=64)] = "cpu"
    resumed_from_epoch: Optional[int] = Field(
        default=None, ge=0, le=1000, description="The checkpoint's epoch this run continued from (None: from scratch).")
    attempts: int = Field(default=1, ge=1, le=10_000,
                          description="Runs the trial took: handed back, taken over or retried, plus the last.")
    test_accuracy: Optional[Fraction] = Field(default=None, description="A final trial's accuracy on the test split.")
    test_images: Optional[int] = Field(default=None, ge=0)
    export_path: Optional[Annotated[str, Field(max_length=4096)]] = Field(
        default=None, description="A final trial's exported model (a directory in the artifact store).")

    @model_validator(mode="after")
    def _reward_unless_failed(self) -> "ResultMessage":
        if self.status != "failed" and self.reward is None:
            raise ValueError(f"status {self.status} needs a reward")
        if self.status == "failed" and not self.error:
            raise ValueError("status failed needs an error")
        return self


class ProgressMessage(Message):
    """Trainer -> controller: a trial started (epoch 0) or finished an epoch."""

    kind: Literal["progress"] = "progress"
    search: Name
    trial_id: TrialId
    trainer: Name
    attempt: int = Field(ge=1, le=10_000)
    epoch: int = Field(ge=0, le=1000)
    val_acc: Optional[Fraction] = None
    train_loss: Optional[Finite] = None
    train_acc: Optional[Fraction] = None
    seconds: Seconds = 0.0
    images_per_second: Seconds = 0.0
    time: Timestamp = 0.0


class ControlMessage(Message):
    """Controller -> one trial (a hash field, not a stream): stop, or train on to `epochs`."""

    kind: Literal["control"] = "control"
    action: Literal["stop", "continue"]
    epoch: Optional[int] = Field(default=None, ge=0, le=1000, description="The reported epoch this answers.")
    epochs: Optional[int] = Field(default=None, ge=1, le=1000, description="continue: train up to this many epochs.")
    reason: Annotated[str, Field(max_length=500)] = ""


class DeadLetterMessage(Message):
    """A trial failed past the retry limit, kept for inspection."""

    max_bytes: ClassVar[int] = 2 * MAX_MESSAGE_BYTES
    kind: Literal["deadletter"] = "deadletter"
    search: Name
    trial_id: TrialId
    attempts: int = Field(ge=1)
    error: ErrorText
    trial: TrialMessage
    time: Timestamp = 0.0


M = TypeVar("M", bound=Message)


def decode(data: Any, model: type[M]) -> M:
    """`data` (bytes) as a `model`, or MessageRejected; never any other exception."""
    try:
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogatepass")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise MessageRejected(f"expected bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) > model.max_bytes:
            raise MessageRejected(f"{len(data)} bytes is over the limit of {model.max_bytes}")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MessageRejected(f"not UTF-8 (byte {exc.start})") from None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MessageRejected(f"not JSON: {exc.msg} at character {exc.pos}") from None
        except RecursionError:
            raise MessageRejected("not JSON this program accepts: nested too deeply") from None
        if not isinstance(obj, dict):
            raise MessageRejected(f"expected a JSON object, got {type(obj).__name__}")
        try:
            return model.model_validate(obj)
        except ValidationError as exc:
            raise MessageRejected(f"not a {model.__name__}: {describe_validation_error(exc)}") from None
    except MessageRejected:
        raise
    except Exception as exc:  # noqa: BLE001 - the promise: a caller only ever sees MessageRejected
        raise MessageRejected(f"unreadable {model.__name__}: {type(exc).__name__}: {exc}"[:500]) from None


def decode_entry(fields: Any, model: type[M]) -> M:
    """A stream entry's fields (`{b"m": json}`, nothing else) as a `model`, or MessageRejected."""
    if fields is None:
        raise MessageRejected("the entry was deleted")
    if not isinstance(fields, dict):
        raise MessageRejected(f"expected stream fields, got {type(fields).__name__}")
    keys = [k if isinstance(k, bytes) else str(k).encode() for k in fields]
    if keys != [b"m"]:
        shown = [k[:20] for k in keys[:4]]
        raise MessageRejected(f"expected exactly one field 'm', got {shown}{' ...' if len(keys) > 4 else ''}")
    return decode(next(iter(fields.values())), model)
