"""The stored formats of streamrec, each with its reader and writer: the bottom layer.

- Feature store (Feast repo in this directory, Redis online store): read it with
  `FeatureClient` (`FeatureClient.from_url(redis_url, "streamrec").get("user", ["u1"])`);
  the Feast SDK (`feature_store(...).get_online_features(...)`) returns the same values.
- Window and metric names: `WINDOWS`, `METRICS`, `feature_types(view)`.
- Exposure filters (per-user time-sliced Bloom filters in Redis): `ExposureFilter` reads,
  `ExposureWriter` writes, `ExposureConfig` sizes them.
- Training samples: `Sample`, `SampleBatch` (the `training-samples` codec) and the parquet
  log (`read_sample_log`).
- Click history (view `user_history`, each user's last clicked notes, newest first): the sample
  joiner writes it with `HistoryWriter`, `FeatureClient.history` reads it.
- Redis connections: `connect(url)` makes every client of the system from one URL (password,
  ACL user, `rediss://` and its certificates, `?cluster=true` for a Redis Cluster).
- Experiments (A/B): `read_experiments(path)` validates the layered bucket config,
  `assign(config, user_id)` gives a user's arms; the experiments job's per-arm counts are read
  with `read_experiment_log`.
- Paths: `DataPaths(data_dir)` derives every file location from one data directory.

Names are loaded on first use, so `import features` stays cheap for the streaming jobs.
"""

from __future__ import annotations

from features.lazy import lazy_exports

_EXPORTS = {
    "FeatureClient": "features.client",
    "mark_key": "features.client",
    "DataPaths": "features.paths",
    "default_data_dir": "features.paths",
    "object_store": "features.paths",
    "FeatureConfig": "features.schema",
    "ENTITY_KEY": "features.schema",
    "VIEWS": "features.schema",
    "feature_types": "features.schema",
    "derive": "features.schema",
    "METRICS": "features.windows",
    "WINDOWS": "features.windows",
    "Window": "features.windows",
    "ExposureConfig": "features.exposure",
    "ExposureFilter": "features.exposure",
    "ExposureWriter": "features.exposure",
    "Sample": "features.samples",
    "SampleBatch": "features.samples",
    "STAT_FEATURES": "features.samples",
    "LABELS": "features.samples",
    "encode_batch": "features.samples",
    "decode_batch": "features.samples",
    "read_sample_log": "features.samples",
    "OnlineWriter": "features.online_writer",
    "feature_store": "features.store",
    "apply_definitions": "features.store",
    "FeaturesError": "features.errors",
    "HISTORY_VIEW": "features.history",
    "HistoryWriter": "features.history",
    "connect": "features.redis_conn",
    "ExperimentsConfig": "features.experiments",
    "read_experiments": "features.experiments",
    "assign": "features.experiments",
    "read_experiment_log": "features.experiment_log",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
