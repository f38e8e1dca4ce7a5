"""Monitoring: the rules (promtool check / test rules), the Grafana dashboard (every expression
parses and reads series that exist), and the jobs' endpoints run through the CLI: one per
process, text promtool accepts, offsets committed to the job's consumer group."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import urllib.request

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from infra.processes import free_port
from serving.app import Metrics
from streams import metrics
from streams.kafka_io import group_id, make_producer
from streams.replay import replay
from streams.sources import ListSource
from tests.infra.promtool import MONITORING, check_metrics, promtool
from tests.streams.helpers import (
    create_topics,
    job_config,
    job_env,
    job_output,
    make_event,
    run_to_end,
    start_job,
    wait_for,
)
from tests.streams.test_metrics import committed

RULES = MONITORING / "rules.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
}
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "by", "without", "on", "ignoring", "and", "or",
    "unless", "rate", "irate", "increase", "delta", "deriv", "time", "histogram_quantile",
    "le", "offset", "bool", "label_values",
}  # fmt: skip


def known_series() -> set[str]:
    """Every series name the jobs, the API and the recording rules define."""
    names = {"up"}  # Prometheus's own, per scrape target
    for registry in (metrics.REGISTRY, Metrics().registry):
        for family in registry.collect():
            names |= {family.name + s for s in SUFFIXES.get(family.type, ("",))}
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        names |= {rule["record"] for rule in group["rules"] if "record" in rule}
    return names


def series_in(expr: str) -> set[str]:
    """The series names an expression reads (identifiers outside strings and label matchers)."""
    bare = re.sub(r'"[^"]*"', '""', expr)
    bare = re.sub(r"\{[^}]*\}", "{}", bare)
    bare = re.sub(r"\[[^\]]*\]", "[]", bare)
    bare = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", bare)
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", bare))
    return {w for w in words - PROMQL_WORDS if not re.fullmatch(r"[0-9.e]+", w)}


def test_rules_pass_promtool_check_and_their_unit_tests():
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, (checked.stdout + checked.stderr).decode()
    assert b"SUCCESS" in checked.stdout
    tested = promtool("test", "rules", "rules_test.yml")
    said = (tested.stdout + tested.stderr).decode()
    assert tested.returncode == 0 and "SUCCESS" in said, said
    alerts = {
        rule["alert"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    unit = (MONITORING / "rules_test.yml").read_text()
    assert all(f"alertname: {a}" in unit for a in alerts), "an alert without a unit test"


def test_rules_read_only_series_that_exist():
    known = known_series()
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            unknown = series_in(rule["expr"]) - known
            assert not unknown, f"{rule.get('record') or rule.get('alert')} reads {unknown}"


def test_every_dashboard_panel_parses_and_reads_series_that_exist(tmp_path):
    dashboard = json.loads(DASHBOARD.read_text())
    known = known_series()
    exprs = []
    for panel in dashboard["panels"]:
        targets = [t["expr"] for t in panel["targets"]]
        assert targets, f"panel {panel['title']!r} has no query"
        for expr in targets:
            unknown = series_in(expr) - known
            assert not unknown, f"panel {panel['title']!r} reads {unknown}: {expr}"
            exprs.append(expr.replace("$flow", ".*"))
    assert {"streamrec_job_consumer_lag", "streamrec_job_dead_letters_total"} <= {
        s for e in exprs for s in series_in(e)
    }
    # promtool parses each expression as a recording rule's
    rules = [{"record": f"panel:expr_{i}", "expr": e} for i, e in enumerate(exprs)]
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, (checked.stdout + checked.stderr).decode()


def _ports() -> int:
    """A base port whose next port is free too (a job of 2 processes takes both)."""
    for _ in range(50):
        base = free_port()
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", base + 1))
            except OSError:
                continue
        return base
    raise AssertionError("no two consecutive free ports")


def _scrape(port: int) -> dict[tuple[str, tuple], float]:
    """The samples an endpoint serves, by (name, sorted labels); {} while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _sum(samples: dict, name: str, **labels: str) -> float:
    return sum(
        v
        for (n, ls), v in samples.items()
        if n == name and all(dict(ls).get(k) == w for k, w in labels.items())
    )


@pytest.fixture
def validate_job(tmp_path, bootstrap, redis_url, topic_name):
    """A topic of 400 valid events and 1 malformed one, and the settings of a job reading it."""
    create_topics(bootstrap, topic_name)
    replay(ListSource([make_event("click", i) for i in range(400)], 100), bootstrap, topic_name)
    producer = make_producer(bootstrap)
    producer.produce(topic_name, b"not json", b"u1")
    assert producer.flush(10) == 0
    config, _ = job_config(tmp_path, topic_name)
    return config, job_env(tmp_path / "data", bootstrap, redis_url)


def test_each_process_of_a_job_serves_its_metrics_and_commits_its_offsets(
    validate_job, bootstrap, topic_name
):
    config, env = validate_job
    base = _ports()
    args = ["run", "validate", "--config", str(config), "--processes", "2"]
    proc = start_job([*args, "--metrics-port", str(base), "--snapshot-interval", "0.5"], env)
    try:
        # every event read, and every partition's offset committed, across the two processes
        def caught_up() -> bool:
            both = [_scrape(base), _scrape(base + 1)]
            read = sum(_sum(s, "streamrec_job_events_in_total", flow="validate") for s in both)
            done = sum(_sum(s, "streamrec_job_committed_offset", flow="validate") for s in both)
            return read == 401 and done == 401

        wait_for(caught_up, timeout=120, what="both processes to read and commit every event")
        texts = []
        for port in (base, base + 1):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                texts.append(r.read())
        for text in texts:
            check_metrics(text)
        scraped = [_scrape(base), _scrape(base + 1)]
        owned = [
            {dict(ls)["partition"] for (n, ls) in s if n == "streamrec_job_consumer_position"}
            for s in scraped
        ]
        assert owned[0] and owned[1] and not owned[0] & owned[1]
        assert owned[0] | owned[1] == {"0", "1", "2", "3"}
        positions = {
            int(dict(ls)["partition"]): int(v)
            for s in scraped
            for (n, ls), v in s.items()
            if n == "streamrec_job_consumer_position" and dict(ls)["topic"] == topic_name
        }
        assert committed(bootstrap, group_id("validate"), topic_name) == positions
        assert sum(_sum(s, "streamrec_job_dead_letters_total", reason="not_json") for s in scraped)
        wait_for(
            lambda: all(
                _sum(_scrape(p), "streamrec_job_consumer_lag") == 0 for p in (base, base + 1)
            ),
            timeout=30,
            what="the lag to be 0 once everything is read",
        )
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # SIGINT is ignored under a background shell
        out = job_output(proc, timeout=60)
    assert f"metrics at http://127.0.0.1:{base}/metrics" in out, out
    assert f"metrics at http://127.0.0.1:{base + 1}/metrics" in out, out


def test_a_bounded_run_commits_every_partition_to_its_end(validate_job, bootstrap, topic_name):
    config, env = validate_job
    done = run_to_end(["run", "validate", "--config", str(config)], env)
    assert "401 events read" in done.stdout, done.stdout
    offsets = committed(bootstrap, group_id("validate"), topic_name)
    assert sum(offsets.values()) == 401 and min(offsets.values()) >= 0, offsets


def test_a_busy_metrics_port_fails_in_one_line(validate_job):
    config, env = validate_job
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = start_job(
            ["run", "validate", "--config", str(config), "--metrics-port", str(port)], env
        )
        out = job_output(proc, timeout=60)
    assert proc.returncode == 2, out
    assert f"error: cannot serve the job's metrics at 127.0.0.1:{port}" in out, out
