"""The stored formats of streamrec, each with its reader and writer: the bottom layer.

- Feature store (Feast repo in this directory, Redis online store): read it with
  `FeatureClient` (`FeatureClient.from_url(redis_url, "streamrec").get("user", ["u1"])`);
  the Feast SDK (`feature_store(...).get_online_features(...)`) returns the same values.
- Window and metric names: `WINDOWS`, `METRICS`, `feature_types(view)`.
- Exposure filters (per-user time-sliced Bloom filters in Redis): `ExposureFilter` reads,
  `ExposureWriter` writes, `ExposureConfig` sizes them.
- Training samples: `Sample`, `SampleBatch` (the `training-samples` codec) and the parquet
  log (`read_sample_log`).
- Paths: `DataPaths(data_dir)` derives every file location from one data directory.

Names are loaded on first use, so `import features` stays cheap for the streaming jobs.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "features.client": ("FeatureClient", "mark_key"),
    "features.paths": ("DataPaths", "default_data_dir"),
    "features.schema": ("FeatureConfig", "ENTITY_KEY", "VIEWS", "feature_types", "derive"),
    "features.windows": ("METRICS", "WINDOWS", "Window"),
    "features.exposure": ("ExposureConfig", "ExposureFilter", "ExposureWriter"),
    "features.samples": (
        "Sample",
        "SampleBatch",
        "STAT_FEATURES",
        "LABELS",
        "encode_batch",
        "decode_batch",
        "read_sample_log",
    ),
    "features.online_writer": ("OnlineWriter",),
    "features.store": ("feature_store", "apply_definitions"),
    "features.errors": ("FeaturesError",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "ENTITY_KEY",
    "LABELS",
    "METRICS",
    "STAT_FEATURES",
    "VIEWS",
    "WINDOWS",
    "DataPaths",
    "ExposureConfig",
    "ExposureFilter",
    "ExposureWriter",
    "FeatureClient",
    "FeatureConfig",
    "FeaturesError",
    "OnlineWriter",
    "Sample",
    "SampleBatch",
    "Window",
    "apply_definitions",
    "decode_batch",
    "default_data_dir",
    "derive",
    "encode_batch",
    "feature_store",
    "feature_types",
    "mark_key",
    "read_sample_log",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'features' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
