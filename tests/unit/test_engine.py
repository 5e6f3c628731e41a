"""The engine on the built-in tiny Qwen3: valid labels, one pass per batch, batch-invariance, truncation, errors."""

from __future__ import annotations

import pytest
import torch

from qcat.engine import Engine, EngineSpec
from qcat.errors import InferenceError
from qcat.pytorch.engine import build_engine
from qcat.pytorch.model import HEAD, LoadedModel, attach_label_head
from qcat.schemas.prompt import prompt_format, verbalize
from qcat.schemas.taxonomy import Taxonomy
from qcat.settings import EngineSettings

TAXONOMY = Taxonomy.from_names(["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"])
QUESTIONS = [
    "How far is it from Denver to Aspen ?",
    "Who was Galileo ?",
    "What does NASA stand for ?",
    "Why is the sky blue ?",
    "What county is Modesto , California in ?",
    "How many people live in Tokyo , the largest city in the world by most measures ?",
    "Name a flying mammal .",
]


def zero_shot(base: LoadedModel, *, batch_size: int = 64, max_question_tokens: int = 64) -> Engine:
    attach_label_head(base, TAXONOMY)
    return build_engine(
        base,
        EngineSpec(TAXONOMY, prompt_format(TAXONOMY, "instruct"), max_question_tokens),
        EngineSettings(batch_size=batch_size),
    )


def test_predictions_are_taxonomy_labels_with_distributions(tiny: LoadedModel) -> None:
    """Every prediction is a taxonomy label whose confidence is the top of a distribution summing to one."""
    predictions = zero_shot(tiny).classify(QUESTIONS)
    assert len(predictions) == len(QUESTIONS)
    for prediction in predictions:
        assert prediction.label in TAXONOMY.names
        assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert prediction.confidence == max(prediction.probabilities.values())
        assert set(prediction.probabilities) == set(TAXONOMY.names)


def test_same_answer_alone_or_in_any_batch(tiny: LoadedModel) -> None:
    """Right padding + causal attention: a question's distribution does not depend on its batch-mates."""
    engine = zero_shot(tiny, batch_size=3)
    batched = engine.classify(QUESTIONS)
    for question, together in zip(QUESTIONS, batched, strict=True):
        (alone,) = engine.classify([question])
        assert alone.label == together.label
        for label in TAXONOMY.names:
            assert alone.probabilities[label] == pytest.approx(together.probabilities[label], abs=1e-5)


def test_zero_shot_head_equals_language_model_scores(tiny: LoadedModel) -> None:
    """For single-token labels the head's logits are exactly the LM's next-token logits of those tokens."""
    taxonomy = Taxonomy.from_names(["what", "who", "how"])
    ids = [tiny.tokenizer(verbalize(name), add_special_tokens=False)["input_ids"] for name in taxonomy.names]
    assert all(len(i) == 1 for i in ids), ids
    attach_label_head(tiny, taxonomy)
    engine = build_engine(
        tiny, EngineSpec(taxonomy, prompt_format(taxonomy, "instruct"), 64), EngineSettings(batch_size=8)
    )
    encoded = engine.encode(QUESTIONS[:2])
    ours = torch.from_numpy(engine.logits(encoded.ids))
    for row, prompt in enumerate(encoded.ids):
        full = tiny.lm(input_ids=torch.tensor([prompt])).logits[0, -1]
        expected = full[[i[0] for i in ids]]
        torch.testing.assert_close(ours[row], expected.float(), rtol=1e-4, atol=1e-4)


def test_encode_matches_rendered_prompt(tiny: LoadedModel) -> None:
    """The engine's token assembly reads the same text as the prompt format's rendering."""
    engine = zero_shot(tiny)
    (ids,) = engine.encode(["  Who   was\nGalileo ?"]).ids
    assert tiny.tokenizer.decode(ids) == engine.prompt.render("Who was Galileo ?")


def test_truncation_to_token_budget(tiny: LoadedModel) -> None:
    """Questions over the budget are cut to it and flagged; shorter ones are not."""
    engine = zero_shot(tiny, max_question_tokens=6)
    long_question = "What is the name of the longest river that flows through the middle of Europe ?"
    encoded = engine.encode([long_question, "Who ?"])
    assert encoded.truncated == [True, False]
    overhead = len(engine._prefix) + len(engine._suffix)
    assert len(encoded.ids[0]) == overhead + 6
    predictions = engine.classify([long_question, "Who ?"])
    assert [p.truncated for p in predictions] == [True, False]


def test_non_finite_logits_raise_instead_of_labelling(tiny: LoadedModel) -> None:
    """A NaN in the head surfaces as InferenceError naming the bad rows, never as a label."""
    engine = zero_shot(tiny)
    with torch.no_grad():
        getattr(tiny.lm, HEAD).weight[2, 0] = float("nan")
    with pytest.raises(InferenceError, match="non-finite") as caught:
        engine.classify(QUESTIONS[:3])
    assert caught.value.bad_indices == (0, 1, 2)


def test_empty_input_is_empty_output(tiny: LoadedModel) -> None:
    """Classifying nothing returns nothing without touching the model."""
    assert zero_shot(tiny).classify([]) == []


@pytest.mark.parametrize(("batch_size", "batch_tokens"), [(64, 512), (4, 10_000), (64, 40), (1, 16)])
def test_chunks_cover_every_row_once_within_limits(tiny: LoadedModel, batch_size: int, batch_tokens: int) -> None:
    """Forward passes hold each question once, at most batch_size rows and batch_tokens padded tokens (or 1 row)."""
    engine = zero_shot(tiny, batch_size=batch_size)
    engine.batch_tokens = batch_tokens
    lengths = [7, 30, 3, 12, 12, 50, 1, 9, 22, 5] * 7
    chunks = engine.chunks(lengths)
    assert sorted(i for chunk in chunks for i in chunk) == list(range(len(lengths)))
    for chunk in chunks:
        width = max(lengths[i] for i in chunk)
        assert len(chunk) <= batch_size
        assert len(chunk) == 1 or len(chunk) * width <= batch_tokens
