"""The prompt and label format: the single definition training and serving share (no train/serve skew).

A prompt is `prefix + " " + question + suffix`; the model reads the hidden state of the last prompt token and a
label head (one row per taxonomy label) scores it. Keeping prefix and suffix as separate strings lets the
engine tokenize them once and truncate only the question to its token budget.

Two styles, recorded in every adapter manifest as `PROMPT_FORMAT_VERSION` + style:
- `instruct`: lists the categories, for the base model's zero-shot baseline (the head is built from the
  language-model rows of each label's words, see `verbalize`).
- `compact`: just the question, for fine-tuned adapters: the head already knows the labels, and a short
  prompt is several times cheaper per question than one that lists 77 categories.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from qcat.schemas.taxonomy import Taxonomy

PROMPT_FORMAT_VERSION = 1
PromptStyle = Literal["instruct", "compact"]
TRAINED_PROMPT_STYLE: PromptStyle = "compact"
"""The style adapters are trained (and so served) with."""
ZERO_SHOT_PROMPT_STYLE: PromptStyle = "instruct"
"""The style the base model is asked with when no adapter is given."""
MAX_QUESTION_TOKENS = 64
"""Tokens of a question a prompt keeps by default; the rest is cut (and the prediction flagged `truncated`)."""


@dataclass(frozen=True)
class PromptFormat:
    style: PromptStyle
    prefix: str
    suffix: str

    def render(self, question: str) -> str:
        """The whole prompt as one string (for generation baselines and for reading; the engine uses parts)."""
        return f"{self.prefix} {clean_question(question)}{self.suffix}"


def clean_question(text: str) -> str:
    """Collapse whitespace so that stray newlines cannot break the prompt's structure."""
    return " ".join(text.split())


def verbalize(label: str) -> str:
    """The words the zero-shot head scores for a label: the name as the model would write it after 'Category:'."""
    return f" {label}"


def prompt_format(taxonomy: Taxonomy, style: PromptStyle) -> PromptFormat:
    if style == "compact":
        return PromptFormat(style=style, prefix="Question:", suffix="\nCategory:")
    listed = ", ".join(
        f"{label.name} ({label.description})" if label.description else label.name for label in taxonomy.labels
    )
    return PromptFormat(
        style=style,
        prefix=f"Classify the following question into one of these categories: [{listed}].\nQuestion:",
        suffix="\nCategory:",
    )
