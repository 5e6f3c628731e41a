"""Prometheus metrics of one worker, in a registry of its own (served at /metrics on the worker's web port).

Labels are topics, reasons and taxonomy labels only: never event ids or text.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from qcat.classifier import Classifier

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events_in = Counter("qcat_events_in", "Records consumed.", ["topic"], registry=r)
        self.events_out = Counter("qcat_events_out", "Records published and acknowledged.", ["topic"], registry=r)
        self.dead_letters = Counter("qcat_dead_letters", "Records dead-lettered, by reason.", ["reason"], registry=r)
        self.labels = Counter("qcat_labels", "Categorized events, by label.", ["label"], registry=r)
        self.batch_size = Histogram(
            "qcat_batch_size",
            "Records per micro-batch.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=r,
        )
        self.inference_seconds = Histogram(
            "qcat_inference_seconds", "Model time per micro-batch.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.end_to_end_seconds = Histogram(
            "qcat_end_to_end_seconds",
            "From a question's created_at to its categorization.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.publish_retries = Counter("qcat_publish_retries", "Batches whose publishing was retried.", registry=r)
        self.publish_stalled_seconds = Gauge(
            "qcat_publish_stalled_seconds", "How long the oldest unfinished publish has waited (0: none).", registry=r
        )
        self.refused_records = Counter(
            "qcat_refused_records",
            "Records the broker refused for good, by topic and what became of them: dead_lettered, written_to_disk.",
            ["topic", "outcome"],
            registry=r,
        )
        self.rebalances = Counter(
            "qcat_rebalances", "Partition assignments this worker received (1 = the initial join only).", registry=r
        )
        self.corrections = Counter(
            "qcat_corrections_stored", "Corrections stored (redeliveries not counted).", registry=r
        )
        self.corrections_failed = Counter(
            "qcat_corrections_store_failures",
            "Attempts to store a batch of corrections that failed (a full disk, a lost volume); each is retried.",
            registry=r,
        )
        self.adapter_swaps = Counter(
            "qcat_adapter_swaps",
            "Adapter announcements by outcome: swapped, failed, refused, invalid.",
            ["result"],
            registry=r,
        )
        self.adapter_behind = Gauge(
            "qcat_adapter_behind", "1 while the last announced adapter could not be loaded.", registry=r
        )
        self.model = Info("qcat_model", "The base model and adapter serving.", registry=r)
        self.review_threshold = Gauge(
            "qcat_review_threshold",
            "Answers under this confidence go to review (the adapter's own, or the setting).",
            registry=r,
        )
        self.ready = Gauge("qcat_ready", "1 once the model is loaded and the worker consumes.", registry=r)
        self.shadow = Gauge("qcat_shadow", "1 while a candidate adapter scores events in shadow.", registry=r)
        self.shadow_scored = Counter("qcat_shadow_scored", "Events the candidate in shadow scored.", registry=r)
        self.shadow_agreed = Counter(
            "qcat_shadow_agreed",
            "Events the candidate in shadow labelled and routed as the serving adapter did.",
            registry=r,
        )

    def serving(self, classifier: Classifier, threshold: float | None) -> None:
        """What serves now: the model and adapter, and the review threshold in force (`threshold` overrides)."""
        self.model.info({"base_model": classifier.model_name, "adapter": classifier.adapter_version or "zero-shot"})
        self.review_threshold.set(classifier.routing.review_threshold if threshold is None else threshold)
