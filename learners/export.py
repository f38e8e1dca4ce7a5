"""What a full snapshot carries for consumers outside Python: ONNX towers and a tensor schema.

The retriever's user and item towers are exported as ONNX graphs of their dense layers only
(`user_tower.onnx`, `item_tower.onnx`): the ID embeddings stay in `tables.safetensors`, where
deltas update them, so a consumer looks the rows up itself (ids.json, unknown id -> row 0) and
feeds the vectors in. Dense parameters only change with a full snapshot (online training
freezes them), so the graphs of the newest full hold for every delta on it. The schema (the
manifest's `schema`) names every tensor, the architecture, the graphs' inputs and outputs, the
bucketing of the statistics and row 0. Layout: docs/snapshots.md.

Used by the learners when they publish a full (`learners.full`, `learners.online`); serving
never imports this module.
"""

from __future__ import annotations

import io
import warnings

import torch
import torch.nn.functional as fn
from torch import nn

from features.samples import STAT_FEATURES
from learners.models import ITEM_TABLE, RankerModelState, RetrieverModelState
from learners.modules import masked_mean
from learners.preranker import PreRankerModelState
from learners.snapshots import Exports
from learners.two_tower import ItemTower, UserTower

USER_TOWER = "user_tower.onnx"
ITEM_TOWER = "item_tower.onnx"
OPSET = 17

ROW0 = (
    'Row 0 of every ID table has the id "" and is the shared default row: every id the table '
    "does not hold (never seen, not yet admitted, expired) reads it, and a padded history slot "
    "is masked out. Look ids up in ids.json; an id that is absent reads row 0."
)
BUCKETING = (
    "Statistic inputs are log-bucketed raw window counts: for feature f (STAT_FEATURES order) "
    "with count x, bucket = min(floor(log2(1 + max(x, 0))), stat_buckets - 1), where a missing "
    "or non-finite count counts as 0; the graph adds f * stat_buckets itself."
)

TENSOR_DOCS = {
    "user": "user ID embeddings (rows, id_dims.user) float32; row ids in ids.json, row 0 = id ''",
    "note": "note ID embeddings (rows, id_dims.note); row 0 = id '' (unknown notes)",
    "author": "author ID embeddings (rows, id_dims.author); row 0 = id '' (unknown authors)",
    "category": "category ID embeddings (rows, id_dims.category); row 0 = id ''",
    ITEM_TABLE: "retriever item-tower output per known note (rows, out_dim), unit length",
    "dense.*": "dense model parameter (torch state_dict name after 'dense.'); frozen between fulls",
    "side.notes": "JSON (uint8 bytes): note -> [author, category, last seen ms, duration ms]",
    "side.clicks": "JSON (uint8 bytes): note -> clicked samples counted by the negative sampler",
    "accum.*": "training state: row-wise Adagrad accumulator per row of the table, aligned rows",
    "last_seen.*": "training state: last event time (epoch ms) per row of the table, for expiry",
    "freq.*": "training state: the retriever's streaming item-frequency estimate (log-Q)",
}


class _UserTowerGraph(nn.Module):
    """The user tower from looked-up vectors: what `UserTower.forward` computes after its ID
    lookups (same modules, so the same weights)."""

    def __init__(self, tower: UserTower, buckets: int) -> None:
        super().__init__()
        self.stats = tower.stats
        self.mlp = tower.mlp
        self.history = tower.history is not None
        self.register_buffer(
            "offsets", torch.arange(len(STAT_FEATURES), dtype=torch.int64) * buckets
        )  # (F,)

    def forward(
        self,
        user_embedding: torch.Tensor,
        stat_buckets: torch.Tensor,
        history_embeddings: torch.Tensor | None = None,
        history_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, d_u), (B, F) buckets, (B, N, d_n), (B, N) float 1/0 -> (B, d) unit vectors."""
        parts = [user_embedding, self.stats(stat_buckets + self.offsets)]  # (B, d_u), (B, F s)
        if self.history:
            parts.append(masked_mean(history_embeddings, history_mask > 0.5))  # (B, d_n)
        return fn.normalize(self.mlp(torch.cat(parts, dim=1)), dim=1)  # (B, d)


class _ItemTowerGraph(nn.Module):
    """The item tower from looked-up note, author and category vectors."""

    def __init__(self, tower: ItemTower) -> None:
        super().__init__()
        self.mlp = tower.mlp

    def forward(
        self, note_embedding: torch.Tensor, author_embedding: torch.Tensor, category: torch.Tensor
    ) -> torch.Tensor:
        """(N, d_n), (N, d_a), (N, d_c) -> (N, d) unit vectors."""
        x = torch.cat([note_embedding, author_embedding, category], dim=1)  # (N, d_n+d_a+d_c)
        return fn.normalize(self.mlp(x), dim=1)  # (N, d)


def _onnx(
    module: nn.Module, args: tuple[torch.Tensor, ...], inputs: list[str], output: str
) -> bytes:
    """ONNX bytes of `module` on example `args`, batch (and history) axes dynamic."""
    axes = {name: {0: "batch"} for name in [*inputs, output]}
    if "history_embeddings" in inputs:
        axes["history_embeddings"] = {0: "batch", 1: "history"}
        axes["history_mask"] = {0: "batch", 1: "history"}
    buf = io.BytesIO()
    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            module,
            args,
            buf,
            input_names=inputs,
            output_names=[output],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    return buf.getvalue()


def _io(name: str, dtype: str, shape: list[str | int], doc: str) -> dict:
    return {"name": name, "dtype": dtype, "shape": shape, "doc": doc}


def retriever_exports(state: RetrieverModelState) -> Exports:
    """The ONNX user and item towers of `state` and the schema describing them."""
    cfg, model = state.config, state.model
    dims = cfg.id_dims
    f = len(STAT_FEATURES)
    user_inputs = [
        _io("user_embedding", "float32", ["batch", dims["user"]],
            "the user's row of table 'user' (row 0 for an unknown user)"),
        _io("stat_buckets", "int64", ["batch", f],
            "bucket 0..stat_buckets-1 of each user statistic, STAT_FEATURES order (bucketing)"),
    ]  # fmt: skip
    args: list[torch.Tensor] = [
        torch.zeros(2, dims["user"]),
        torch.zeros(2, f, dtype=torch.int64),
    ]
    if cfg.history:
        user_inputs += [
            _io("history_embeddings", "float32", ["batch", "history", dims["note"]],
                f"rows of table 'note' of the user's last clicked notes, newest first, at most "
                f"{cfg.history} (unknown notes read row 0); padding is any value"),
            _io("history_mask", "float32", ["batch", "history"],
                "1 for a history slot holding a note (known or not), 0 for padding"),
        ]  # fmt: skip
        args += [torch.zeros(2, cfg.history, dims["note"]), torch.ones(2, cfg.history)]
    names = [i["name"] for i in user_inputs]
    user = _onnx(_UserTowerGraph(model.user_tower, cfg.stat_buckets), tuple(args), names, "user")
    item_inputs = [
        _io("note_embedding", "float32", ["batch", dims["note"]], "the note's row of 'note'"),
        _io("author_embedding", "float32", ["batch", dims["author"]],
            "the row of 'author' of the note's author (side.notes) or row 0"),
        _io("category_embedding", "float32", ["batch", dims["category"]],
            "the row of 'category' of the note's category (side.notes) or row 0"),
    ]  # fmt: skip
    item = _onnx(
        _ItemTowerGraph(model.item_tower),
        tuple(torch.zeros(2, dims[t]) for t in ("note", "author", "category")),
        [i["name"] for i in item_inputs],
        "item",
    )
    out = ["batch", cfg.out_dim]
    pooled = ", mean of history note embeddings" if cfg.history else ""
    schema = {
        "architecture": (
            "two-tower retriever (Yi et al. 2019): user tower = concat(user embedding, "
            f"stat bucket embeddings (F x {cfg.stat_dim}){pooled}) "
            f"-> MLP {list(cfg.hidden)} ReLU -> linear {cfg.out_dim} -> L2 normalise; item tower "
            "= concat(note, author, category embeddings) -> same MLP shape -> L2 normalise; "
            "score = dot product (cosine)"
        ),
        "row0": ROW0,
        "bucketing": BUCKETING,
        "stat_features": list(STAT_FEATURES),
        "stat_buckets": cfg.stat_buckets,
        "history_length": cfg.history,
        "onnx": {
            USER_TOWER: {
                "opset": OPSET,
                "inputs": user_inputs,
                "outputs": [_io("user", "float32", out, "unit user vector")],
            },
            ITEM_TOWER: {
                "opset": OPSET,
                "inputs": item_inputs,
                "outputs": [_io("item", "float32", out, "unit item vector (as table 'item')")],
            },
        },
        "tensor_docs": TENSOR_DOCS,
    }  # fmt: skip
    return Exports(files={USER_TOWER: user, ITEM_TOWER: item}, schema=schema)


def ranker_exports(state: RankerModelState) -> Exports:
    """The ranker's schema (architecture, tensors, row 0); no ONNX graph (see docs/snapshots.md)."""
    return _schema_only(
        f"MMoE ranker (Ma et al. 2018), tasks {list(state.config.tasks)}; rebuild it with "
        "learners.models.RankerModelState.from_snapshot (no ONNX export yet)",
        state.config.stat_buckets,
    )


def preranker_exports(state: PreRankerModelState) -> Exports:
    """The three-tower pre-ranker's schema (as the ranker's: no ONNX graph)."""
    return _schema_only(
        f"three-tower pre-ranker (user, item, cross towers; docs/funnel.md), tasks "
        f"{list(state.config.tasks)}; rebuild it with learners.preranker.PreRankerModelState"
        ".from_snapshot (no ONNX export yet)",
        state.config.stat_buckets,
    )


def _schema_only(architecture: str, stat_buckets: int) -> Exports:
    """A model's schema without an ONNX graph: its architecture and the shared input rules."""
    schema = {
        "architecture": architecture,
        "row0": ROW0,
        "bucketing": BUCKETING,
        "stat_features": list(STAT_FEATURES),
        "stat_buckets": stat_buckets,
        "tensor_docs": TENSOR_DOCS,
    }
    return Exports(files={}, schema=schema)


def snapshot_exports(
    state: RankerModelState | RetrieverModelState | PreRankerModelState,
) -> Exports:
    """What a full snapshot of `state` carries beyond its tables and dense parameters."""
    if isinstance(state, RetrieverModelState):
        return retriever_exports(state)
    if isinstance(state, PreRankerModelState):
        return preranker_exports(state)
    return ranker_exports(state)


__all__ = ["ITEM_TOWER", "USER_TOWER", "ranker_exports", "retriever_exports", "snapshot_exports"]
