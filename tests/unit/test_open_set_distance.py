"""The open-set distance: fitted on training features, computed in the same pass as the labels (padded and packed
alike), saved with the adapter and checked when it loads; the boundary chosen from held-out distances; the reason an
answer goes to review."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from qcat.engine import EngineSpec
from qcat.errors import AdapterError
from qcat.lora import LoraSpec
from qcat.manifest import AdapterManifest, read_manifest
from qcat.pytorch.engine import TorchScorer, build_engine, load_engine
from qcat.pytorch.model import HEAD, LoadedModel, attach_label_head, label_features, right_pad
from qcat.pytorch.open_set import STATS, Distance, OpenSetHead, OpenSetStats
from qcat.pytorch.packed import PackedScorer
from qcat.routing import RoutingPolicy
from qcat.schemas.prompt import prompt_format
from qcat.schemas.taxonomy import Taxonomy
from qcat.settings import EngineSettings
from qcat.training.config import Recipe, RoutingGoal, TrainConfig
from qcat.training.data import Scored
from qcat.training.open_set import choose_boundary, choose_policy, with_unknown_label
from qcat.training.run import TrainRequest, read_training_set, train
from tests.helpers.plans import plan
from tests.unit.test_training_cli import write_learnable

TAXONOMY = Taxonomy.from_names(["A", "B", "C"])
ROWS = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16], [17]]


@pytest.fixture(scope="module")
def trained_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of `train` on learnable rows: an adapter with open-set statistics, as `qcat train` makes it."""
    folder = tmp_path_factory.mktemp("open-set")
    data = write_learnable(folder / "learn.jsonl")
    recipe = Recipe(config=TrainConfig(epochs=1, batch_size=16), lora=LoraSpec(rank=8))
    settings = EngineSettings(base_model="tiny-qwen3", dtype="float32", device="cpu")
    directory, _ = train(read_training_set(data, recipe), TrainRequest(folder / "adapter", recipe), settings)
    return directory


def clusters(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[4.0, 0.0, 0.0, 0.0], [0.0, 4.0, 0.0, 0.0], [0.0, 0.0, 4.0, 0.0]])
    labels = torch.arange(3).repeat(200)
    return centres[labels] + 0.5 * torch.randn(600, 4, generator=generator), labels


def test_distances_are_small_near_a_label_and_large_far_from_all() -> None:
    """Questions of a label lie near its mean; a point between none of them lies far; a label without training
    questions is never the nearest."""
    features, labels = clusters()
    stats = OpenSetStats.fit(features, labels, classes=4)
    assert torch.isnan(stats.means[3]).all()
    distance = Distance(stats)
    near = distance(torch.tensor([[4.0, 0.0, 0.0, 0.0], [0.0, 4.1, 0.1, 0.0]]))
    far = distance(torch.tensor([[0.0, 0.0, 0.0, 6.0], [-4.0, -4.0, 0.0, 0.0]]))
    assert near.max() < 1.0
    assert far.min() > 5.0
    assert math.isfinite(float(distance(torch.zeros(1, 4))[0]))


def open_set_model(tiny: LoadedModel) -> tuple[LoadedModel, OpenSetStats]:
    attach_label_head(tiny, TAXONOMY)
    batch, last = right_pad(ROWS * 5, 0)
    with torch.inference_mode():
        features = label_features(tiny.lm, batch, last)
    stats = OpenSetStats.fit(features, torch.arange(3).repeat(7)[: len(features)], classes=3)
    setattr(tiny.lm, HEAD, OpenSetHead(getattr(tiny.lm, HEAD), stats))
    return tiny, stats


def test_the_head_adds_the_distance_in_the_same_pass_padded_and_packed(tiny: LoadedModel) -> None:
    """Padded and packed passes both return the labels' logits plus the distance, equal to what `Distance` gives on
    the same features (the training side's computation)."""
    base, stats = open_set_model(tiny)
    padded = TorchScorer(base, plan(base, packed=False))(ROWS)
    packed = PackedScorer(base, plan(base, packed=True))(ROWS)
    assert padded.shape == (len(ROWS), len(TAXONOMY.labels) + 1)
    np.testing.assert_allclose(packed, padded, atol=1e-4, rtol=1e-4)
    batch, last = right_pad(ROWS, 0)
    with torch.inference_mode():
        expected = Distance(stats)(label_features(base.lm, batch, last)).numpy()
    np.testing.assert_allclose(padded[:, -1], expected, atol=1e-4, rtol=1e-4)
    engine = build_engine(base, EngineSpec(TAXONOMY, prompt_format(TAXONOMY, "compact"), 16), EngineSettings())
    [prediction] = engine.classify(["Who is there ?"])
    assert prediction.distance is not None
    assert prediction.label in TAXONOMY.names


def test_the_statistics_travel_with_the_adapter_and_are_checked(trained_adapter: Path, tmp_path: Path) -> None:
    """`qcat train` saves qcat-open-set.safetensors and names its SHA-256 in the manifest; a served answer carries
    its distance; a replaced statistics file is refused when the adapter loads."""
    manifest = read_manifest(trained_adapter)
    assert manifest.open_set is not None
    assert (trained_adapter / STATS).is_file()
    assert manifest.routing.outside_distance is not None
    settings = EngineSettings(base_model="tiny-qwen3", adapter=trained_adapter, dtype="float32", device="cpu")
    [prediction] = load_engine(settings).classify(["Where is the river ?"])
    assert prediction.distance is not None
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in trained_adapter.iterdir():
        if path.is_file():
            (copy / path.name).write_bytes(path.read_bytes())
    stats = OpenSetStats.load(copy)
    OpenSetStats(stats.means + 1, stats.whitening).save(copy)
    with pytest.raises(AdapterError, match="SHA-256"):
        load_engine(settings.model_copy(update={"adapter": copy}))


def scored(distances: list[float], golds: list[str], predicted: list[str] | None = None) -> list[Scored]:
    predicted = predicted or golds
    return [Scored("q", g, p, 0.9, d) for d, g, p in zip(distances, golds, predicted, strict=True)]


def test_the_boundary_keeps_a_share_of_known_questions_inside() -> None:
    """Without a 'none of these' label the boundary is the held-out known distance at the coverage asked for."""
    answers = scored([float(i) for i in range(1, 101)], ["A"] * 100)
    boundary = choose_boundary(answers, TAXONOMY, RoutingGoal(known_coverage=0.97))
    assert boundary == {"outside_distance": 97.0, "outside_goal": "known_coverage", "outside_target": 0.97}
    assert choose_boundary(scored([1.0], ["A"])[:0], TAXONOMY, RoutingGoal()) == {}


def test_held_out_none_of_these_questions_place_the_boundary() -> None:
    """With held-out 'none of these' questions, the boundary separates them from the known ones, whatever their
    numbers (10 against 90)."""
    taxonomy = Taxonomy.from_names(["A", "B", "oos"])
    known = scored([1.0 + i / 10 for i in range(90)], ["A"] * 90)
    none = scored([20.0 + i for i in range(10)], ["oos"] * 10, ["A"] * 10)
    goal = with_unknown_label(RoutingGoal(), taxonomy)
    assert goal.unknown_label == "oos"
    boundary = choose_boundary(known + none, taxonomy, goal)
    assert boundary["outside_goal"] == "balanced"
    assert 9.9 <= boundary["outside_distance"] < 20.0
    policy = choose_policy(known + none, taxonomy, goal)
    assert policy.expected["unknown_recall"] == 1.0


def test_review_says_why() -> None:
    """Outside the boundary comes first, then the 'none of these' label, then low confidence; routed: no reason."""
    policy = RoutingPolicy(review_threshold=0.5, unknown_label="oos", outside_distance=10.0)
    assert policy.review_reason("A", 0.9, 11.0) == "outside"
    assert policy.review_reason("oos", 0.9, 5.0) == "none_of_these"
    assert policy.review_reason("A", 0.4, 5.0) == "low_confidence"
    assert policy.review_reason("A", 0.9, 5.0) is None
    assert policy.review_reason("A", 0.9, float("nan")) == "outside"
    assert policy.routes("A", 0.9, distance=None)  # an answer without a distance: the other rules only


def test_manifests_refuse_what_would_break_the_gate_or_the_wire(trained_adapter: Path) -> None:
    """Non-finite metrics, a temperature that turns logits into NaN, a 'none of these' label outside the taxonomy and
    a non-finite boundary are refused when a manifest is read."""
    raw = json.loads((trained_adapter / "qcat-manifest.json").read_text())
    for path, value in (
        (("metrics", "accuracy"), float("nan")),
        (("metrics", "accuracy"), float("inf")),
        (("temperature",), 5e-324),
        (("routing", "unknown_label"), "NOT-A-LABEL"),
        (("routing", "outside_distance"), float("inf")),
    ):
        changed = json.loads(json.dumps(raw))
        target = changed
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        with pytest.raises(ValidationError):
            AdapterManifest.model_validate_json(json.dumps(changed))
