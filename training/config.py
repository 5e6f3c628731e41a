"""What a training run is asked to do: the recipe's numbers and switches, each default written once here.
Torch-free, so the training CLI shows these defaults without loading torch."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

from qcat.errors import UsageError
from qcat.lora import LoraSpec
from qcat.routing import DEFAULT_KNOWN_COVERAGE, DEFAULT_REVIEW_PRECISION
from qcat.schemas.prompt import MAX_QUESTION_TOKENS
from qcat.training.data import ConflictPolicy

if TYPE_CHECKING:
    import torch

Batching = Literal["length", "random"]
"""How training rows become batches: `length` groups similar lengths (transformers' length grouping: little
padding); `random` pads random rows to their longest (the plain recipe's order). Both reach the same accuracy
(docs/training.md), so `length` is the default."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 5
    batch_size: int = 32
    learning_rate: float = 2e-4
    patience: int = 2
    seed: int = 0
    warmup_ratio: float = 0.06
    batching: Batching = "length"
    label_smoothing: float = 0.1
    """Spread this much of each training target over the other labels: a regulariser (docs/training.md)."""
    compactness: float = 0.0
    """Weight of a term that draws each label's questions together around its head row in angle
    (`training.loop.angular_spread`), so that questions of no label lie apart from all (docs/training.md)."""
    compile: bool | None = None
    """Compile the decoder layers (torch.compile): faster steps after a one-off compile. None: the device's default."""
    cuda_graphs: bool | None = None
    """Replay full training batches' decoder as CUDA graphs (`graphed_decoder`): the host stops bounding a step."""
    autocast: bool | None = None
    """Run the decoder's and LoRA's matmuls in bf16 under torch.autocast (CUDA); LoRA's weights stay float32."""
    graph_widths: int = 4
    """With CUDA graphs, pad batches to this many widths chosen from the data (`padded_widths`): one capture each."""
    report_to: tuple[str, ...] = ()

    def on(self, device: torch.device) -> TrainConfig:
        """The switches left at None set for `device`: the fast path on CUDA (`CUDA_SPEED`), plain elsewhere."""
        fast = device.type == "cuda"
        return replace(
            self,
            compile=self.compile if self.compile is not None else fast and CUDA_SPEED["compile"],
            cuda_graphs=self.cuda_graphs if self.cuda_graphs is not None else fast and CUDA_SPEED["cuda_graphs"],
            autocast=self.autocast if self.autocast is not None else fast and CUDA_SPEED["autocast"],
        )


@dataclass(frozen=True)
class RoutingGoal:
    """What the adapter's review threshold is chosen for on held-out rows (`training.open_set.choose_policy`)."""

    review_precision: float = DEFAULT_REVIEW_PRECISION
    """The lowest threshold at which this share of routed answers is right."""
    unknown_recall: float | None = None
    """Instead: the lowest threshold that sends this share of held-out unknown questions to review."""
    review_coverage: float | None = None
    """Instead: the highest threshold that still routes this share of the held-out answers (the rest go to review):
    for streams that hold questions outside the taxonomy when none are labelled (docs/training.md)."""
    unknown_label: str | None = None
    """A trained 'none of these' label: its answers always go to review, its held-out rows count as unknown. Unset, a
    label named by the convention (`training.open_set.NONE_OF_THESE`) is taken for it."""
    known_coverage: float = DEFAULT_KNOWN_COVERAGE
    """The open-set boundary keeps this share of held-out questions of known labels inside (the rest of every
    label's, and whatever lies farther, goes to review) when the data has no 'none of these' label to steer it."""


@dataclass(frozen=True)
class Recipe:
    """Everything `train` and `retrain` are told about how to make an adapter, beyond what to learn from and where
    to put it: one option set, declared once for both commands (training/options.py)."""

    config: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraSpec = field(default_factory=LoraSpec)
    routing: RoutingGoal = field(default_factory=RoutingGoal)
    conflicts: ConflictPolicy = "error"
    """Texts that carry different labels: stop, drop them, or keep the majority's (`training.data`)."""
    max_question_tokens: int = MAX_QUESTION_TOKENS
    eval_fraction: float = 0.1
    """The held-out share of the data (stratified) that selects the epoch, temperature and review threshold."""
    seeds: int = 1
    """More than one: train seeds seed .. seed+N-1 on one split and save their average (`training.soup`)."""
    open_set: bool = True
    """Fit open-set statistics and a boundary: questions far from every label go to review (`training.boundary`)."""


CUDA_SPEED = {"compile": False, "cuda_graphs": True, "autocast": True}
"""What `qcat train` uses on a GPU unless told otherwise: CUDA graphs and bf16 autocast. Compiling is left off: its
one-off cost is larger than what it saves on a data set of ordinary size (docs/training.md)."""


def check_device(config: TrainConfig, device: torch.device) -> None:
    """Fail before any model loads when a CUDA-only option meets another device."""
    if (config.cuda_graphs or config.autocast) and device.type != "cuda":  # only an explicit True, not None
        raise UsageError(
            f"--cuda-graphs and --autocast need a CUDA device, and training would run on {device}: "
            "pass --device cuda on a machine with a GPU, or leave these options off"
        )
