"""qcat's contracts: events on the wire, topic names, the taxonomy, and the prompt format. Pure pydantic, no torch or
faust."""

from qcat.schemas.events import (
    CONTRACTS,
    MAX_TEXT_CHARS,
    SCHEMA_VERSION,
    VERSION_PATTERN,
    AdapterAnnouncement,
    CategorizedEvent,
    CorrectionEvent,
    DeadLetter,
    DeadLetterReason,
    LabelScore,
    QuestionEvent,
    ShadowAnswer,
    ShadowRecord,
    json_schemas,
)
from qcat.schemas.prompt import PROMPT_FORMAT_VERSION, PromptFormat, PromptStyle, prompt_format
from qcat.schemas.taxonomy import MAX_LABELS, Label, Taxonomy
from qcat.schemas.topics import Topics, topic_safe

__all__ = [
    "CONTRACTS",
    "MAX_LABELS",
    "MAX_TEXT_CHARS",
    "PROMPT_FORMAT_VERSION",
    "SCHEMA_VERSION",
    "VERSION_PATTERN",
    "AdapterAnnouncement",
    "CategorizedEvent",
    "CorrectionEvent",
    "DeadLetter",
    "DeadLetterReason",
    "Label",
    "LabelScore",
    "PromptFormat",
    "PromptStyle",
    "QuestionEvent",
    "ShadowAnswer",
    "ShadowRecord",
    "Taxonomy",
    "Topics",
    "json_schemas",
    "prompt_format",
    "topic_safe",
]
