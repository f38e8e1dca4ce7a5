"""A/B experiments: the layered bucket configuration and the pure assignment of users to arms.

Seeds 002, Part 1, sections 5-6: a user's bucket in a layer is hash(user_id, layer salt) mod B
(murmur3, the same in every process and language: never Python's `hash`, which is salted per
process); experiments of one layer own disjoint bucket ranges (a user is in at most one of them:
mutually exclusive), layers have different salts (a user's buckets in two layers are independent:
orthogonal); a layer's holdback range is never given to an experiment (the reverse bucket that
keeps the old system to measure lagging effects). An experiment splits its range among its arms
by weight, in contiguous sub-ranges.

The configuration is YAML (`read_experiments`), validated by the frozen models below; an arm's
`overrides` are kept as given here and validated by the serving layer (`serving.experiments`),
which knows what they may change. Both the stream flow and serving use `assign`.

    buckets: 100
    layers:
      - name: ranking
        holdback: [95, 100]
        experiments:
          - name: fusion-weights
            buckets: [0, 20]
            arms:
              - {name: control}
              - {name: treatment, overrides: {fusion: {weights: {like: 4.0}}}}
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import mmh3
import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from features.errors import ExperimentConfigError

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
Name = Annotated[str, Field(pattern=NAME)]
HOLDBACK_ARM, LAUNCHED_ARM = "holdback", "launched"
"""Arms of a layer's holdback pseudo-experiment `holdback.<layer>`: users in the holdback range,
and users of the layer in no experiment (they get the launched system)."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


Range = tuple[int, int]


def _range(value: Any) -> Any:
    if isinstance(value, list | tuple) and len(value) == 2 and value[0] >= value[1]:
        raise ValueError(f"bucket range [{value[0]}, {value[1]}) is empty: write [start, end)")
    return value


def _show(r: Range) -> str:
    return f"[{r[0]}, {r[1]})"


def _overlap(a: Range, b: Range) -> bool:
    return a[0] < b[1] and b[0] < a[1]


class ArmSpec(_Frozen):
    """One arm of an experiment."""

    name: Name
    """The arm's id (what impressions carry, what the report shows)."""
    weight: int = Field(default=1, ge=1)
    """Share of the experiment's buckets (in proportion to the arms' weights)."""
    overrides: dict[str, Any] = {}
    """What the arm changes in serving (`serving.config.ArmOverrides`: pinned snapshot
    versions or model names, fusion, channel settings, retrieve_k / rank_k); {} = the system as
    configured (a control arm)."""


class ExperimentSpec(_Frozen):
    """One experiment: a bucket range of its layer split among its arms."""

    name: Name
    """Unique over all layers; impressions carry it (`arms: {name: arm}`)."""
    buckets: Range
    """Its bucket range [start, end) in the layer."""
    arms: list[ArmSpec] = Field(min_length=2)
    """At least two arms; the range is split among them by weight, in this order."""
    control: Name | None = None
    """The arm lifts are measured against; None = the first arm."""
    enabled: bool = True
    """A disabled experiment keeps its range (nobody else takes it) but assigns no one."""
    description: str = ""
    """What the experiment tests (shown in the report)."""

    _check_range = field_validator("buckets", mode="before")(_range)

    @model_validator(mode="after")
    def _check(self) -> ExperimentSpec:
        names = [a.name for a in self.arms]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"experiment {self.name!r}: arm names repeat: {dupes}")
        if self.control is not None and self.control not in names:
            raise ValueError(
                f"experiment {self.name!r}: control arm {self.control!r} is not one of its arms "
                f"{names}"
            )
        size, total = self.buckets[1] - self.buckets[0], sum(a.weight for a in self.arms)
        if size % total:
            raise ValueError(
                f"experiment {self.name!r}: its {size} buckets {_show(self.buckets)} cannot be "
                f"split by the arms' weights (sum {total}); make the range a multiple of {total}"
            )
        return self

    @property
    def control_arm(self) -> str:
        """The arm lifts are measured against."""
        return self.control or self.arms[0].name

    def arm_ranges(self) -> dict[str, Range]:
        """Arm -> its bucket range [start, end), contiguous, in the arms' order."""
        size, total = self.buckets[1] - self.buckets[0], sum(a.weight for a in self.arms)
        out, start = {}, self.buckets[0]
        for arm in self.arms:
            end = start + size * arm.weight // total
            out[arm.name] = (start, end)
            start = end
        return out

    def arm(self, name: str) -> ArmSpec:
        """The arm called `name`.

        Raises:
            ExperimentConfigError: it has no such arm.
        """
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise ExperimentConfigError(
            f"experiment {self.name!r} has no arm {name!r}; its arms: {[a.name for a in self.arms]}"
        )


class LayerSpec(_Frozen):
    """One layer: its salt, its holdback and its mutually exclusive experiments."""

    name: Name
    """The layer's name (e.g. retrieval, ranking, fusion)."""
    salt: str | None = None
    """Hash salt; None = the layer's name. Change it to reshuffle the layer's users."""
    holdback: Range | None = None
    """Buckets no experiment of this layer may take: they keep `holdback_overrides` (the old
    system) and are compared with the launched system as experiment `holdback.<layer>`."""
    holdback_overrides: dict[str, Any] = {}
    """What the holdback users get instead of the launched system (`ArmOverrides`)."""
    experiments: list[ExperimentSpec] = []
    """The layer's experiments (disjoint bucket ranges)."""

    _check_range = field_validator("holdback", mode="before")(_range)

    @property
    def hash_salt(self) -> str:
        """The salt in use."""
        return self.salt if self.salt is not None else self.name

    @model_validator(mode="after")
    def _check(self) -> LayerSpec:
        taken: list[tuple[str, Range]] = []
        if self.holdback is not None:
            taken.append(("the holdback", self.holdback))
        for exp in self.experiments:
            for what, r in taken:
                if _overlap(r, exp.buckets):
                    raise ValueError(
                        f"layer {self.name!r}: experiment {exp.name!r} {_show(exp.buckets)} "
                        f"overlaps {what} {_show(r)}; experiments of one layer take disjoint "
                        "ranges and never the holdback"
                    )
            taken.append((f"experiment {exp.name!r}", exp.buckets))
        return self

    @property
    def holdback_name(self) -> str:
        """The name of the layer's holdback pseudo-experiment."""
        return f"holdback.{self.name}"


class ExperimentsConfig(_Frozen):
    """Every layer and experiment (the experiments YAML file)."""

    buckets: int = Field(default=100, ge=2, le=1_000_000)
    """B: buckets per layer (a user's bucket is hash(user_id, salt) mod B)."""
    layers: list[LayerSpec] = []
    """Orthogonal layers (different salts)."""

    @model_validator(mode="after")
    def _check(self) -> ExperimentsConfig:
        layers = [layer.name for layer in self.layers]
        salts = [layer.hash_salt for layer in self.layers]
        if len(set(layers)) < len(layers):
            raise ValueError(f"layer names repeat: {layers}")
        if len(set(salts)) < len(salts):
            raise ValueError(f"layers share a salt, so they would not be orthogonal: {salts}")
        seen: dict[str, str] = {}
        for layer in self.layers:
            ranges = [(e.name, e.buckets) for e in layer.experiments]
            if layer.holdback is not None:
                ranges.append((layer.holdback_name, layer.holdback))
            for name, r in ranges:
                if r[0] < 0 or r[1] > self.buckets:
                    raise ValueError(
                        f"layer {layer.name!r}: {name!r} range {_show(r)} is outside the "
                        f"buckets [0, {self.buckets})"
                    )
                if name in seen:
                    raise ValueError(
                        f"experiment name {name!r} is used in layers {seen[name]!r} and "
                        f"{layer.name!r}; names are unique over all layers"
                    )
                seen[name] = layer.name
        return self

    def experiment(self, name: str) -> tuple[LayerSpec, ExperimentSpec]:
        """The layer and spec of experiment `name` (a holdback's as a two-arm experiment).

        Raises:
            ExperimentConfigError: no experiment has that name (the message lists them).
        """
        for layer in self.layers:
            for exp in layer.experiments:
                if exp.name == name:
                    return layer, exp
            if layer.holdback is not None and name == layer.holdback_name:
                return layer, _holdback_spec(layer)
        names = [e.name for layer in self.layers for e in layer.experiments]
        names += [layer.holdback_name for layer in self.layers if layer.holdback is not None]
        raise ExperimentConfigError(f"no experiment {name!r}; configured: {names}")

    def expected_shares(self, name: str) -> dict[str, float]:
        """Arm -> the share of the experiment's users it should get (its buckets' share)."""
        layer, exp = self.experiment(name)
        if exp.name == layer.holdback_name:
            held = layer.holdback[1] - layer.holdback[0]
            taken = sum(e.buckets[1] - e.buckets[0] for e in layer.experiments)
            launched = self.buckets - taken - held
            total = held + launched
            return {LAUNCHED_ARM: launched / total, HOLDBACK_ARM: held / total}
        ranges = exp.arm_ranges()
        size = exp.buckets[1] - exp.buckets[0]
        return {arm: (r[1] - r[0]) / size for arm, r in ranges.items()}


def _holdback_spec(layer: LayerSpec) -> ExperimentSpec:
    """A layer's holdback as an experiment: arms `launched` (control) and `holdback`."""
    return ExperimentSpec.model_construct(
        name=layer.holdback_name,
        buckets=layer.holdback,
        arms=[
            ArmSpec(name=LAUNCHED_ARM),
            ArmSpec(name=HOLDBACK_ARM, overrides=layer.holdback_overrides),
        ],
        control=LAUNCHED_ARM,
        enabled=True,
        description=f"the holdback of layer {layer.name!r} against its launched system",
    )


def bucket_of(user_id: str, salt: str, buckets: int) -> int:
    """The user's bucket in a layer: murmur3_32(salt + NUL + user_id) mod `buckets`."""
    return mmh3.hash(f"{salt}\x00{user_id}", 0, signed=False) % buckets


def buckets_of(user_ids: list[str], salt: str, buckets: int) -> np.ndarray:
    """(n,) buckets of many users in one layer."""
    h = mmh3.hash
    return np.fromiter(
        (h(f"{salt}\x00{u}", 0, signed=False) % buckets for u in user_ids),
        dtype=np.int64,
        count=len(user_ids),
    )


def assign(config: ExperimentsConfig, user_id: str) -> dict[str, str]:
    """The user's arms: experiment -> arm, one entry per layer at most (plus none for layers
    where the user is in no experiment and the layer has no holdback)."""
    arms: dict[str, str] = {}
    for layer in config.layers:
        b = bucket_of(user_id, layer.hash_salt, config.buckets)
        if layer.holdback is not None and layer.holdback[0] <= b < layer.holdback[1]:
            arms[layer.holdback_name] = HOLDBACK_ARM
            continue
        placed = False
        for exp in layer.experiments:
            if exp.buckets[0] <= b < exp.buckets[1]:
                placed = True
                if exp.enabled:
                    for arm, r in exp.arm_ranges().items():
                        if r[0] <= b < r[1]:
                            arms[exp.name] = arm
                break
        if not placed and layer.holdback is not None:
            arms[layer.holdback_name] = LAUNCHED_ARM
    return arms


def arm_overrides(config: ExperimentsConfig, arms: dict[str, str]) -> list[tuple[str, dict]]:
    """(layer, overrides) of the given arms, in layer order (what serving applies)."""
    out = []
    for layer in config.layers:
        for exp in layer.experiments:
            if exp.name in arms:
                out.append((layer.name, exp.arm(arms[exp.name]).overrides))
        if arms.get(layer.holdback_name) == HOLDBACK_ARM:
            out.append((layer.name, layer.holdback_overrides))
    return [(layer, o) for layer, o in out if o]


def parse_experiments(data: Any, where: str = "experiments config") -> ExperimentsConfig:
    """Validate a parsed YAML document.

    Raises:
        ExperimentConfigError: what is wrong and where.
    """
    try:
        return ExperimentsConfig.model_validate(data or {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'top level'}: "
            f"{re.sub(r'^Value error, ', '', e['msg'])}"
            for e in exc.errors()
        )
        raise ExperimentConfigError(f"invalid {where}: {problems}") from None


def read_experiments(path: Path) -> ExperimentsConfig:
    """Read and validate the experiments YAML file at `path`.

    Raises:
        ExperimentConfigError: it cannot be read or is invalid (the message says what and where).
    """
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ExperimentConfigError(f"cannot read experiments config {path}: {exc}") from exc
    return parse_experiments(data, f"experiments config {path}")
