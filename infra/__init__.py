"""The top layer: settings, the local stack, the process launcher, the job registry, the CLI.

Settings are read here and only here (`load_settings`: the YAML file of `--config` or
`STREAMREC_CONFIG`, then `KAFKA_BOOTSTRAP`, `REDIS_URL`, `STREAMREC_DATA_DIR`)::

    from infra import JOBS, RunConfig, load_settings, run_job

    settings = load_settings()
    run_job(JOBS["stats"], settings, RunConfig(), until_end=True)  # streamrec run stats --until-end

The command line is `streamrec` (`infra.cli:main`); the whole loop, measured, is
`infra.demo.run_demo` (`streamrec demo`). Every error raised here is an `InfraError`.
"""

from __future__ import annotations

from features.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "Settings": "infra.config",
        "load_settings": "infra.config",
        "JOBS": "infra.jobs",
        "JobSpec": "infra.jobs",
        "run_job": "infra.jobs",
        "RunConfig": "streams.runner",
        "ProcessGroup": "infra.processes",
        "InfraError": "infra.errors",
    },
)
