"""Serving passes as CUDA graphs (`QCAT_CUDA_GRAPHS`): the padding a graph shape adds changes no score, the engine
refuses graphs where they cannot run, and on a GPU the replayed pass scores as the eager one does."""

from __future__ import annotations

import pytest
import torch

from qcat.engine import EngineSpec
from qcat.errors import UsageError
from qcat.pytorch.cuda_graphs import ROW_STEP, WIDTH_STEP, GraphedScorer, padded_shape
from qcat.pytorch.engine import TorchScorer, build_engine
from qcat.pytorch.model import LoadedModel, attach_label_head, label_logits, private_copy, right_pad
from qcat.schemas.prompt import prompt_format
from qcat.schemas.taxonomy import Taxonomy
from qcat.settings import EngineSettings
from tests.helpers.plans import plan

TAXONOMY = Taxonomy.from_names(["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"])
ROWS = [[5, 9, 2, 7], [3, 3], [11, 4, 8, 6, 1, 2, 9], [10]]


@pytest.mark.parametrize(("rows", "width", "shape"), [(1, 1, (32, 8)), (32, 8, (32, 8)), (33, 9, (64, 16))])
def test_padded_shape_rounds_up_to_the_steps(rows: int, width: int, shape: tuple[int, int]) -> None:
    assert padded_shape(rows, width) == shape
    assert shape[0] % ROW_STEP == 0
    assert shape[1] % WIDTH_STEP == 0


def test_padding_to_a_graph_shape_changes_no_score(tiny: LoadedModel) -> None:
    """Rows of padding only, and padding after each row's last token, leave the real rows' logits as they were."""
    attach_label_head(tiny, TAXONOMY)
    exact_ids, exact_last = right_pad(ROWS, 0)
    shape = padded_shape(len(ROWS), exact_ids.shape[1])
    padded_ids, padded_last = right_pad(ROWS, 0, shape)
    assert tuple(padded_ids.shape) == shape
    assert padded_last[len(ROWS) :].eq(0).all()
    with torch.inference_mode():
        exact = label_logits(tiny.lm, exact_ids, exact_last)
        padded = label_logits(tiny.lm, padded_ids, padded_last, attention_mask={"full_attention": None})
    torch.testing.assert_close(padded[: len(ROWS)], exact, atol=1e-4, rtol=1e-4)


def test_graphs_are_refused_where_they_cannot_run(tiny: LoadedModel) -> None:
    attach_label_head(tiny, TAXONOMY)
    prompt = prompt_format(TAXONOMY, "compact")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA device"):
            build_engine(
                tiny, EngineSpec(TAXONOMY, prompt, 16), EngineSettings(batch_size=8, cuda_graphs=True, packed=False)
            )
    with pytest.raises(UsageError, match="exclude each other"):
        build_engine(
            tiny,
            EngineSpec(TAXONOMY, prompt, 16),
            EngineSettings(batch_size=8, compile=True, cuda_graphs=True, packed=False),
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_replayed_passes_score_as_eager_ones(tiny: LoadedModel) -> None:
    """Each shape is captured once and replayed with new rows; the logits match the eager pass's to rounding."""
    base = private_copy(tiny)
    base.lm.to("cuda")  # type: ignore[arg-type]
    attach_label_head(base, TAXONOMY)
    graphed = GraphedScorer(base, plan(base, packed=False, cuda_graphs=True))
    eager = TorchScorer(base, plan(base, packed=False))
    for rows in (ROWS, ROWS[::-1], ROWS[:1], [row * 3 for row in ROWS]):
        assert abs(graphed(rows) - eager(rows)).max() < 1e-3
    assert len(graphed.graphs) == 2  # (32, 8) for the first three, (32, 24) for the longer rows
