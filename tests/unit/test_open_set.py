"""Questions outside the taxonomy: the routing policy's decisions, the open-set metrics against hand counts, and the
review threshold chosen for each goal."""

from __future__ import annotations

import json
import random

import pytest

from qcat.manifest import AdapterManifest, model_card, parse_manifest
from qcat.routing import DEFAULT_REVIEW_THRESHOLD, RoutingPolicy
from qcat.schemas.taxonomy import Taxonomy
from qcat.training.config import RoutingGoal
from qcat.training.data import Scored
from qcat.training.open_set import choose_policy, goal_of, open_set_metrics, routing_figures

TAXONOMY = Taxonomy.from_names(["HUM", "LOC", "NONE"])
SCORED = [
    Scored("Who ?", "HUM", "HUM", 0.9),  # routed, right
    Scored("Who else ?", "HUM", "LOC", 0.6),  # routed, wrong
    Scored("Where ?", "LOC", "LOC", 0.4),  # review: a right answer lost
    Scored("How many ?", "NUM", "HUM", 0.3),  # unknown (outside the taxonomy), sent to review
    Scored("Why ?", "WHY", "LOC", 0.7),  # unknown, routed: the costly mistake
    Scored("Pizza ?", "NONE", "NONE", 0.99),  # the trained 'none of these' label: always review
]
POLICY = RoutingPolicy(review_threshold=0.5, unknown_label="NONE")


def test_the_policy_routes_confident_answers_of_known_labels_only() -> None:
    assert POLICY.routes("HUM", 0.5)
    assert not POLICY.routes("HUM", 0.49)
    assert not POLICY.routes("NONE", 1.0)
    assert POLICY.routes("HUM", 0.3, threshold=0.2)  # the setting overrides the adapter's threshold
    assert not RoutingPolicy().routes("HUM", DEFAULT_REVIEW_THRESHOLD - 0.01)


def test_routing_figures_match_hand_counts() -> None:
    """Routed: 3 of 6 (Who, Who else, Why), 1 right; unknown: How many, Why, Pizza, of which 2 go to review."""
    figures = routing_figures(SCORED, TAXONOMY, POLICY)
    assert figures == pytest.approx(
        {"review_threshold": 0.5, "coverage": 0.5, "precision": 1 / 3, "unknown_recall": 2 / 3}
    )
    known_only = routing_figures(SCORED[:3], TAXONOMY, POLICY)
    assert "unknown_recall" not in known_only


def test_open_set_metrics_match_hand_counts() -> None:
    """Open gold: HUM HUM LOC ? ? ?; open predictions: HUM LOC ? ? LOC ?. Right: 1st, 4th, 6th."""
    metrics = open_set_metrics(SCORED, TAXONOMY, POLICY)
    assert metrics is not None
    assert metrics["accuracy"] == pytest.approx(3 / 6)
    assert metrics["known_accuracy"] == pytest.approx(1 / 3)
    assert metrics["unknown_recall"] == pytest.approx(2 / 3)
    assert metrics["unknown_precision"] == pytest.approx(2 / 3)  # review holds LOC, How many, Pizza
    f1 = {"HUM": 2 / 3, "LOC": 0.0, "unknown": 2 / 3}  # HUM: p 1, r 1/2; LOC: p 0 (2 predicted, 0 right)
    assert metrics["macro_f1"] == pytest.approx(sum(f1.values()) / 3)
    assert open_set_metrics(SCORED[:3], TAXONOMY, POLICY) is None


def test_the_precision_goal_takes_the_lowest_threshold_that_reaches_it() -> None:
    generator = random.Random(0)
    scored = []
    for i in range(400):
        confidence = generator.random()
        right = generator.random() < confidence  # calibrated: confident answers are right more often
        scored.append(Scored(f"q{i}", "HUM", "HUM" if right else "LOC", confidence))
    policy = choose_policy(scored, TAXONOMY, RoutingGoal(review_precision=0.9))
    assert (policy.goal, policy.target) == ("precision", 0.9)
    at = routing_figures(scored, TAXONOMY, policy)
    assert at["precision"] >= 0.9
    assert policy.expected == pytest.approx({k: v for k, v in at.items() if k != "review_threshold"})
    lower = max(s.confidence for s in scored if s.confidence < policy.review_threshold)
    assert routing_figures(scored, TAXONOMY, policy, threshold=lower)["precision"] < 0.9


def test_an_unreachable_precision_keeps_the_default_threshold() -> None:
    wrong = [Scored(f"q{i}", "HUM", "LOC", 0.9) for i in range(10)]
    policy = choose_policy(wrong, TAXONOMY, RoutingGoal(review_precision=0.95))
    assert (policy.review_threshold, policy.goal) == (DEFAULT_REVIEW_THRESHOLD, "fixed")
    assert policy.expected["precision"] == 0.0


@pytest.mark.parametrize("target", [0.25, 0.5, 0.8, 1.0])
def test_the_unknown_recall_goal_sends_that_share_of_unknown_questions_to_review(target: float) -> None:
    generator = random.Random(1)
    scored = [Scored(f"u{i}", "NONE", generator.choice(["HUM", "NONE"]), generator.random()) for i in range(50)]
    scored += [Scored(f"k{i}", "HUM", "HUM", generator.random()) for i in range(50)]
    goal = RoutingGoal(unknown_recall=target, unknown_label="NONE")
    policy = choose_policy(scored, TAXONOMY, goal)
    assert (policy.goal, policy.unknown_label) == ("unknown_recall", "NONE")
    recall = routing_figures(scored, TAXONOMY, policy)["unknown_recall"]
    assert recall >= target
    below = [s.confidence for s in scored if s.confidence < policy.review_threshold]
    if below:  # and no lower threshold would do
        assert routing_figures(scored, TAXONOMY, policy, threshold=max(below))["unknown_recall"] < target
    assert goal_of(policy) == goal


@pytest.mark.parametrize("target", [0.5, 0.9, 0.95, 1.0])
def test_the_coverage_goal_takes_the_highest_threshold_still_routing_that_share(target: float) -> None:
    """No unknown question is labelled: the threshold keeps `target` of the held-out questions routed (an answer
    naming the 'none of these' label counts as not routed), the least confident of the rest going to review."""
    generator = random.Random(2)
    scored = [Scored(f"q{i}", "HUM", generator.choice(["HUM", "LOC"]), generator.random()) for i in range(200)]
    scored += [Scored("Pizza ?", "NONE", "NONE", 0.99)]
    goal = RoutingGoal(review_coverage=target, unknown_label="NONE")
    policy = choose_policy(scored, TAXONOMY, goal)
    assert (policy.goal, policy.target) == ("coverage", target)
    answers = [s for s in scored if s.predicted != "NONE"]
    wanted = target * len(scored)
    routed = sum(POLICY.routes(s.predicted, s.confidence, policy.review_threshold) for s in answers)
    if wanted > len(answers):  # out of reach: every answer is routed, the most there is
        assert policy.review_threshold == 0.0
        assert routed == len(answers)
    else:
        assert routed >= wanted
        above = [s.confidence for s in answers if s.confidence > policy.review_threshold]
        assert sum(POLICY.routes(s.predicted, s.confidence, min(above)) for s in answers) < wanted
    assert goal_of(policy) == goal


@pytest.mark.parametrize(
    "policy",
    [
        RoutingPolicy(),
        RoutingPolicy(review_threshold=0.5, goal="coverage", target=0.95, expected={"coverage": 0.95}),
        RoutingPolicy(review_threshold=0.7, goal="precision", target=0.95, expected={"coverage": 0.8}),
        RoutingPolicy(review_threshold=0.6, goal="unknown_recall", target=0.9, unknown_label="NONE"),
    ],
)
def test_the_model_card_says_how_the_adapter_routes(policy: RoutingPolicy) -> None:
    manifest = AdapterManifest(
        version="v1", taxonomy=TAXONOMY, base_model="m", base_fingerprint="f", max_question_tokens=64, routing=policy
    )
    line = next(line for line in model_card(manifest).splitlines() if line.startswith("- Routing:"))
    assert f"{policy.review_threshold:.3f}" in line
    assert ("`NONE` always go to review" in line) == (policy.unknown_label == "NONE")


def test_manifests_written_before_routing_policies_still_load() -> None:
    """Adapters trained before they chose a threshold keep loading, with the default policy."""
    manifest = AdapterManifest(
        version="v1", taxonomy=TAXONOMY, base_model="m", base_fingerprint="f", max_question_tokens=64
    )
    old = manifest.model_dump(mode="json")
    del old["routing"]
    assert parse_manifest(json.dumps(old).encode(), "old").routing == RoutingPolicy()
