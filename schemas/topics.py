"""Topic names, part of the wire contract: the worker, the CLI, the demo and `qcat send` all name topics here.

Kafka allows `[A-Za-z0-9._-]` in topic names, at most 249 characters. A label's route is
`<prefix>.route.<label>` with every other character replaced by `_` (TREC's `HUM:ind` routes to
`questions.route.HUM_ind`). Two labels that would share a route are refused at start-up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from qcat.errors import ContractError
from qcat.schemas.taxonomy import Taxonomy

ILLEGAL = re.compile(r"[^A-Za-z0-9._-]")
MAX_TOPIC_LENGTH = 249


def topic_safe(label: str) -> str:
    return ILLEGAL.sub("_", label)


@dataclass(frozen=True)
class Topics:
    incoming: str
    categorized: str
    review: str
    dlq: str
    corrections: str
    adapters: str
    shadow: str
    routes: dict[str, str]

    @classmethod
    def build(cls, prefix: str, taxonomy: Taxonomy | None = None) -> Topics:
        """The topics of `prefix`; with a taxonomy, its labels' routes too."""
        routes = {label: f"{prefix}.route.{topic_safe(label)}" for label in taxonomy.names} if taxonomy else {}
        clashes = sorted({route for route in routes.values() if list(routes.values()).count(route) > 1})
        if clashes:
            labels = [label for label, route in routes.items() if route in clashes]
            raise ContractError(
                f"labels {labels} map to the same routing topics {clashes}; rename them to differ in [A-Za-z0-9._-]"
            )
        too_long = [label for label, route in routes.items() if len(route) > MAX_TOPIC_LENGTH]
        if too_long:
            raise ContractError(f"routing topics of these labels pass {MAX_TOPIC_LENGTH} characters: {too_long}")
        return cls(
            incoming=f"{prefix}.incoming",
            categorized=f"{prefix}.categorized",
            review=f"{prefix}.review",
            dlq=f"{prefix}.dlq",
            corrections=f"{prefix}.corrections",
            adapters=f"{prefix}.adapters",
            shadow=f"{prefix}.shadow",
            routes=routes,
        )

    def all_outputs(self) -> list[str]:
        """Topics the worker writes to (the control topic `adapters` has one partition and is declared apart)."""
        return [self.categorized, self.review, self.dlq, self.shadow, *self.routes.values()]
