"""The experiments of serving: a user's arms and the serving settings they make, per request.

`ExperimentRouter` reads the experiments YAML (`features.experiments`), validates every arm's
overrides as `ArmOverrides` against the serving settings (a bad arm is an error naming the
experiment, the arm and the field), and re-reads the file when its modification time changes
(checked at most every `check_every_s`): an edit is live without a restart. An edit that does not
validate keeps the previous experiments running and is reported in `last_error` (and the log).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from features.errors import ExperimentConfigError
from features.experiments import ExperimentsConfig, arm_overrides, assign, read_experiments
from serving.config import ArmOverrides, ServingConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Routed:
    """What one request gets: its arms, the settings they make and the models they pin."""

    arms: dict[str, str]
    config: ServingConfig
    pins: dict[str, tuple[str | None, int | None]] = field(default_factory=dict)
    """Model role -> (model name or None = the configured one, version or None = newest)."""


def _merge(base: dict, patch: dict) -> dict:
    out = dict(base)
    for k, v in patch.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@dataclass(frozen=True)
class _Compiled:
    config: ExperimentsConfig
    routes: dict[tuple[tuple[str, str], ...], Routed]


def compile_experiments(config: ExperimentsConfig, base: ServingConfig) -> _Compiled:
    """Validate every arm's overrides against `base` and check that layers stay orthogonal.

    Raises:
        ExperimentConfigError: an arm's overrides are invalid, or two layers change the same
            setting (the message names them).
    """
    touched: dict[str, str] = {}
    for layer in config.layers:
        specs = [(e.name, a.name, a.overrides) for e in layer.experiments for a in e.arms]
        if layer.holdback is not None:
            specs.append((layer.holdback_name, "holdback", layer.holdback_overrides))
        for exp, arm, raw in specs:
            try:
                overrides = ArmOverrides.model_validate(raw)
                ServingConfig.model_validate(_merge(base.model_dump(), overrides.settings_patch()))
            except ValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
                )
                raise ExperimentConfigError(
                    f"experiment {exp!r} arm {arm!r}: invalid overrides: {problems}"
                ) from None
            for key in raw:
                other = touched.setdefault(key, layer.name)
                if other != layer.name:
                    raise ExperimentConfigError(
                        f"layers {other!r} and {layer.name!r} both change {key!r} (experiment "
                        f"{exp!r}); layers must change different settings to stay orthogonal"
                    )
    return _Compiled(config, {})


class ExperimentRouter:
    """Per user: the arms (`features.experiments.assign`) and the serving settings they make.

    Args:
        path: the experiments YAML file.
        base: the serving settings every arm starts from.
        check_every_s: how often (at most) the file's modification time is checked.

    Raises:
        ExperimentConfigError: the file is missing or invalid at start.
    """

    def __init__(self, path: Path, base: ServingConfig, check_every_s: float = 1.0) -> None:
        self.path, self.base, self.check_every_s = Path(path), base, check_every_s
        self._lock = threading.Lock()
        self._mtime = self.path.stat().st_mtime_ns if self.path.exists() else None
        self._compiled = compile_experiments(read_experiments(self.path), base)
        self._checked = time.monotonic()
        self.last_error: str | None = None
        self.reloads = 0

    @property
    def config(self) -> ExperimentsConfig:
        """The experiments in force."""
        return self._compiled.config

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.check_every_s:
            return
        with self._lock:
            if now - self._checked < self.check_every_s:
                return
            self._checked = now
            try:
                mtime = self.path.stat().st_mtime_ns
            except OSError as exc:
                self.last_error = f"cannot stat {self.path}: {exc}; keeping the experiments"
                return
            if mtime == self._mtime:
                return
            self._mtime = mtime
            try:
                self._compiled = compile_experiments(read_experiments(self.path), self.base)
            except ExperimentConfigError as exc:
                self.last_error = f"{exc}; keeping the previous experiments"
                logger.warning("experiments not reloaded: %s", self.last_error)
                return
            self.last_error = None
            self.reloads += 1
            logger.info("experiments reloaded from %s", self.path)

    def route(self, user_id: str) -> Routed:
        """The user's arms and the settings and models they make."""
        self._maybe_reload()
        compiled = self._compiled
        arms = assign(compiled.config, user_id)
        key = tuple(sorted(arms.items()))
        routed = compiled.routes.get(key)
        if routed is None:
            patch: dict = {}
            pins: dict[str, tuple[str | None, int | None]] = {}
            for _, raw in arm_overrides(compiled.config, arms):
                overrides = ArmOverrides.model_validate(raw)
                patch = _merge(patch, overrides.settings_patch())
                pins.update(overrides.pins)
            config = (
                ServingConfig.model_validate(_merge(self.base.model_dump(), patch))
                if patch
                else self.base
            )
            routed = Routed(arms, config, pins)
            compiled.routes[key] = routed  # a few arm combinations: bounded
        return routed
