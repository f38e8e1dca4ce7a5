"""Hyperparameters of the models (frozen dataclasses) and settings of the learning jobs."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar, get_type_hints

from pydantic import BaseModel, ConfigDict, Field

from features.schema import FeatureConfig
from learners.errors import ModelConfigError

RANKER_TASKS = ("click", "like", "collect", "share", "comment", "follow", "completion")
"""Binary tasks of the ranker (cross-entropy); `watch` (watch time) is added as a regression."""
ID_TABLES = ("user", "note", "author", "category")
"""The ID embedding tables of both models."""
ADMIT_AFTER = 2
"""Sightings before an ID gets its own embedding row: the one default of
`LearnConfig.admit_after`, which `LearnConfig.embedding` passes down to every table."""


@dataclass(frozen=True)
class EmbeddingConfig:
    """One collisionless ID table: admission, expiry, capacity, row-wise Adagrad."""

    dim: int = 16
    """Embedding dimension."""
    admit_after: int = ADMIT_AFTER
    """An ID gets its own row after being seen this many times; before, the default row."""
    ttl_ms: int = 30 * 86_400_000
    """An ID not seen for this long (event time) is expired and its row freed."""
    max_rows: int = 1_000_000
    """Most rows held (besides the default row); the least recently seen are evicted."""
    lr: float = 0.05
    """Adagrad learning rate."""
    init_std: float = 0.01
    """Standard deviation of new rows."""
    initial_accumulator: float = 0.1
    """Adagrad accumulator of a new row."""


@dataclass(frozen=True)
class RankerConfig:
    """Architecture of the ranker (MMoE, PLE or shared-bottom) on the streamrec sample features."""

    kind: str = "mmoe"
    """"mmoe", "ple" (progressive layered extraction) or "shared_bottom"."""
    tasks: tuple[str, ...] = RANKER_TASKS
    """Binary tasks; watch time is always added as task "watch"."""
    id_dims: dict[str, int] = field(
        default_factory=lambda: {"user": 16, "note": 16, "author": 8, "category": 8}
    )
    """Embedding dimension per ID table."""
    stat_buckets: int = 16
    """Log2 buckets per window count (bucket b holds 2^(b-1) <= 1 + x < 2^b, capped)."""
    stat_dim: int = 2
    """Embedding dimension per (statistic, bucket)."""
    positions: int = 16
    """Position buckets (positions >= this share the last bucket; unknown has its own)."""
    position_dim: int = 4
    """Position embedding dimension."""
    duration_buckets: int = 12
    """Log2 buckets of the note's duration known at impression time (`Sample.item_duration_ms`;
    bucket 0 = unknown); 0: no duration input."""
    duration_dim: int = 4
    """Duration bucket embedding dimension."""
    history: int = 0
    """Most recent clicked notes of the user (`Sample.history`) the ranker attends to with the
    target note (DIN, `modules.TargetAttention`); 0: no history input. Off by default: on the
    warm-up validation tails it did not help (docs/learning.md "Choices")."""
    attention_hidden: tuple[int, ...] = (32,)
    """Hidden widths of the attention unit."""
    rate_prior_strength: float = 2.0
    """Pseudo-counts smoothing the window rates fed to the MLP (`learners.inputs.rate_tensor`)
    towards the feature store's priors; lighter than the store's 20 on purpose
    (`priors.prior_strength` is not used here), since the bucketised counts beside them say how
    much evidence a rate has (bench.quality: KuaiRand click AUC 0.795 at 2, 0.775 at 5, 0.770
    at 20)."""
    base_tasks: tuple[str, ...] = ("click", "like")
    """Tasks whose logit also gets a logistic regression on the window rates
    (`RankerInputs.rates`), fitted on the full-training log after the core has trained on it
    (`mmoe.BaseLogits`): an ensemble of the two, in eval mode only (serving, online). Chosen on
    the warm-up's validation tails, where it raised click and like AUC (docs/learning.md)."""
    priors: FeatureConfig = field(default_factory=FeatureConfig)
    """The feature store's priors the window rates are smoothed towards (its ctr, engagement
    and completion priors; `Settings.features`, handed in by `learners.full.load_or_create`).
    Kept in the snapshot with the other hyperparameters, so a model is always served with the
    priors it was trained on; snapshots from before this field get the default."""
    experts: int = 4
    """MMoE experts (for "ple" and "shared_bottom" the width they are sized to match)."""
    expert_hidden: tuple[int, ...] = (64,)
    """Hidden and output widths of each expert (and of the shared bottom; for "ple" scaled so
    that each level's experts are together as wide as `experts` of these, `mmoe.make_core`)."""
    shared_experts: int = 2
    """"ple" only: experts shared by all tasks in each extraction level."""
    task_experts: int = 1
    """"ple" only: experts of each task in each extraction level."""
    levels: int = 2
    """"ple" only: extraction levels (CGC layers); 1 is CGC alone."""
    tower_hidden: tuple[int, ...] = (16,)
    """Hidden widths of each task tower."""
    gate_dropout: float = 0.1
    """Probability of dropping a gate output in training (the rest renormalised)."""
    dropout: float = 0.0
    """Dropout in experts and towers."""
    esmm: bool = False
    """ESMM: every non-click task predicts pCTCVR = pCTR x p(task | click)."""
    watch_unit_ms: float = 60_000.0
    """Watch time t is in this unit for y = t / (1 + t)."""
    calibrated: tuple[str, ...] = ("click",)
    """Tasks trained on the down-sampled data as it comes and calibrated; the others are
    importance weighted (1 / keep_rate) in the loss, so they need no calibration."""

    LEGACY: ClassVar[dict[str, object]] = {"duration_buckets": 0, "history": 0, "base_tasks": ()}
    """Values of fields a snapshot written before they existed implies (`config_from_dict`)."""

    def __post_init__(self) -> None:
        if self.kind not in ("mmoe", "ple", "shared_bottom"):
            raise ModelConfigError(
                f"ranker kind must be 'mmoe', 'ple' or 'shared_bottom', not {self.kind!r}"
            )
        small = [
            n
            for n in ("experts", "shared_experts", "task_experts", "levels")
            if getattr(self, n) < 1
        ]
        if small:
            raise ModelConfigError(f"ranker {small} must be at least 1")
        unknown = [t for t in self.base_tasks if t not in self.tasks]
        if unknown:
            raise ModelConfigError(f"ranker base_tasks {unknown} are not among its tasks")
        missing = [t for t in ID_TABLES if t not in self.id_dims]
        if missing:
            raise ModelConfigError(
                f"ranker id_dims lacks table(s) {missing}; give a dimension each"
            )


@dataclass(frozen=True)
class RetrieverConfig:
    """Architecture and loss of the two-tower retriever."""

    id_dims: dict[str, int] = field(
        default_factory=lambda: {"user": 32, "note": 32, "author": 16, "category": 8}
    )
    """Embedding dimension per ID table."""
    stat_buckets: int = 16
    """Log2 buckets of the user statistics."""
    stat_dim: int = 2
    """Embedding dimension per (statistic, bucket)."""
    hidden: tuple[int, ...] = (64,)
    """Hidden widths of each tower."""
    history: int = 0
    """Most recent clicked notes of the user (`Sample.history`) whose note embeddings the user
    tower averages (`modules.HistoryPooling`), so an unseen user is personalised from history;
    0: no history input. Off by default: on the warm-up validation tails it lowered Recall@50
    (docs/learning.md "Choices")."""
    out_dim: int = 32
    """Dimension of the normalised user and item vectors."""
    temperature: float = 0.05
    """Cosine similarity is divided by this."""
    extra_negatives: int = 64
    """Negatives per batch sampled in proportion to clicks^`neg_power` (shared by the batch)."""
    neg_power: float = 0.75
    """Exponent of the click counts of the negative sampler."""
    freq_buckets: int = 1 << 18
    """Hash buckets of the streaming item-frequency estimate (Yi et al. 2019, algorithm 2)."""
    freq_alpha: float = 0.01
    """Learning rate of the streaming frequency estimate."""

    LEGACY: ClassVar[dict[str, object]] = {"history": 0}
    """Values of fields a snapshot written before they existed implies (`config_from_dict`)."""


def _jsonable(value: object) -> object:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return dict(value)
    return value


def config_to_dict(config: object) -> dict:
    """JSON-able dict of a config dataclass (tuples as lists, pydantic models as dicts)."""
    return {f.name: _jsonable(getattr(config, f.name)) for f in fields(config)}


def config_from_dict(cls: type, data: dict) -> object:
    """Rebuild a config dataclass from `config_to_dict` output (lists back to tuples).

    A field the data lacks (written before the field existed) takes the class's `LEGACY` value
    for it when there is one (the behaviour before the field), else its default.
    """
    names = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(names)
    if unknown:
        raise ModelConfigError(
            f"{cls.__name__} has no field(s) {sorted(unknown)}: the snapshot was written by a "
            "different streamrec version; run `streamrec learn full` to publish a compatible one"
        )
    hints = get_type_hints(cls)

    def value(name: str, v: object) -> object:
        hint = hints.get(name)
        if isinstance(hint, type) and issubclass(hint, BaseModel):
            return hint.model_validate(v)
        return tuple(v) if isinstance(v, list) else v

    legacy = {k: v for k, v in getattr(cls, "LEGACY", {}).items() if k not in data}
    return cls(**legacy, **{k: value(k, v) for k, v in data.items()})


class LearnConfig(BaseModel):
    """Settings of `streamrec learn online` and `streamrec learn full`."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    ranker_model: str = "ranker"
    """Snapshot model name of the ranker."""
    retriever_model: str = "retriever"
    """Snapshot model name of the retriever."""
    preranker_model: str | None = "preranker"
    """Snapshot model name of the three-tower pre-ranker (`learners.preranker`), trained and
    published by `learn full` beside the two others and updated online once it has a
    snapshot; None: no pre-ranker."""
    batch_size: int = Field(default=1024, ge=1)
    """Samples per training step (online: Kafka messages are merged up to this size)."""
    dense_lr: float = Field(default=2e-3, gt=0)
    """Adam learning rate of the dense parameters (full training)."""
    emb_lr: float = Field(default=0.05, gt=0)
    """Row-wise Adagrad learning rate of the ID embeddings in full training."""
    online_emb_lr: float = Field(default=0.01, gt=0)
    """Row-wise Adagrad learning rate of the ID embeddings in online mode. Lower than
    `emb_lr`: with the dense layers frozen, large row steps leave the region the layers were
    trained on (bench.quality: KuaiRand like AUC +0.017 over frozen at 0.01, -0.022 at 0.05)."""
    id_dropout: float = Field(default=0.3, ge=0, lt=1)
    """Full training: probability that a sample reads the shared default ID row instead of its
    own, per table (`learners.embeddings.IdEmbedding`), so the default row that unseen IDs read
    stays trained and the model does not lean on memorised rows (chosen on the warm-up
    validation tails, docs/learning.md "Choices")."""
    calibration_window: int = Field(default=0, ge=0)
    """Online: refit the ranker's logit offsets after every step on its predictions for the
    newest this-many samples, each made before it learnt from them (held-out, following the
    stream; `learners.calibration.OffsetTracker`); 0 keeps the offsets full training fitted on
    its own log. Off by default: on the warm-up validation tails 1,000 keeps every task within
    0.950-1.056 of the observed rate per fifth (0.958-1.224 off) but moves the offsets batch to
    batch, which costs the stream's pooled AUC (MovieLens like -0.011; damped or longer windows
    cost less and calibrate less); docs/learning.md "Choices"."""
    auc_window: int = Field(default=10_000, ge=0)
    """Online: the ranker's AUC per task is measured on its predictions for the newest
    this-many samples, each made before it learnt from them (`streamrec_learner_auc`, the API's
    /dashboard); 0 measures none."""
    admit_after: int = Field(default=ADMIT_AFTER, ge=1)
    """Times an ID must be seen before it gets its own embedding row (passed down to every
    table by `embedding`)."""
    ttl_days: float = Field(default=30.0, gt=0)
    """IDs not seen for this many days (event time) are expired."""
    max_rows: int = Field(default=1_000_000, ge=1)
    """Most rows per ID table."""
    ranker_history: int = Field(default=RankerConfig().history, ge=0, le=200)
    """Clicked notes a fresh ranker attends to (`RankerConfig.history`; a warm-started one keeps
    its snapshot's). At most the joiner's `samples.history_len`, which is what samples carry."""
    retriever_history: int = Field(default=RetrieverConfig().history, ge=0, le=200)
    """Clicked notes a fresh retriever's user tower pools (`RetrieverConfig.history`)."""
    seed: int = 7
    """Seed of initialisation and of the shuffle of full training."""
    poll_timeout_s: float = Field(default=0.2, gt=0)
    """Online: longest wait for new samples before checking the publishing clocks."""
    threads: int = Field(default=1, ge=1)
    """torch intra-op threads. 1 by default: on this 2-core machine, with the broker and the
    jobs busy, two threads made a (600, 200) x (200, 64) linear layer 100x slower (15.8 ms vs
    0.15 ms) from spinning threads."""

    def embedding(self, dim: int) -> EmbeddingConfig:
        """The `EmbeddingConfig` of a table of dimension `dim` under these settings."""
        return EmbeddingConfig(
            dim=dim,
            admit_after=self.admit_after,
            ttl_ms=int(self.ttl_days * 86_400_000),
            max_rows=self.max_rows,
            lr=self.emb_lr,
        )
