"""The streaming layer: the event contract, Kafka I/O, replay sources and the Bytewax flows.

Every flow starts with the one ingest step (`streams.ingest`: decode -> dead letters -> late
filter -> shard) and takes its I/O as arguments, so it runs the same on Kafka and in tests::

    from bytewax.testing import TestingSink, TestingSource, run_main
    from streams import StatsConfig, build_stats_flow

    run_main(build_stats_flow(TestingSource(raw_batches), sink, dlq, StatsConfig()))

Deployed, the flows run as `streamrec run validate | stats | exposure | samples | experiments`
(`infra.jobs`); `experiment_report` computes an experiment's statistics from its log.
Events: `Event`, `decode_event`, `encode_event`, dead letters `DeadLetter`. Replays:
`replay(source, bootstrap, topic)` with `SyntheticSource`, `MovieLensSource`,
`KuaiRandSource`, `ListSource`. The plain-pandas oracle of the stats job is
`streams.reference.expected_features`. Every error raised here is a `StreamsError`.
"""

from __future__ import annotations

from features.lazy import lazy_exports

_EXPORTS = {
    "Event": "streams.events",
    "DeadLetter": "streams.events",
    "decode_event": "streams.events",
    "encode_event": "streams.events",
    "decode_dead_letter": "streams.events",
    "EVENT_TYPES": "streams.events",
    "EventLimits": "streams.config",
    "StatsConfig": "streams.config",
    "SamplesConfig": "streams.config",
    "KafkaSecurity": "streams.config",
    "KafkaConnection": "streams.config",
    "KafkaBatchSource": "streams.kafka_io",
    "RawBatch": "streams.kafka_io",
    "make_producer": "streams.kafka_io",
    "read_to_end": "streams.kafka_io",
    "ingest_flow": "streams.ingest",
    "RunConfig": "streams.runner",
    "run_here": "streams.runner",
    "replay": "streams.replay",
    "ListSource": "streams.sources",
    "SyntheticSource": "streams.sources.synthetic",
    "MovieLensSource": "streams.sources.movielens",
    "KuaiRandSource": "streams.sources.kuairand",
    "expected_features": "streams.reference",
    "StreamsError": "streams.errors",
    "EventError": "streams.errors",
    "build_validate_flow": "streams.validate:build_flow",
    "build_stats_flow": "streams.stats:build_flow",
    "build_exposure_flow": "streams.exposure:build_flow",
    "build_samples_flow": "streams.samples:build_flow",
    "build_experiments_flow": "streams.experiments:build_flow",
    "ExperimentFlowConfig": "streams.config",
    "experiment_report": "streams.experiment_stats:report",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
