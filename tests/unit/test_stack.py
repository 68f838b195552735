"""The local stack runner's bookkeeping, without starting any server."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from infra.local import stack
from infra.local.stack import ProcessRecord, StackState


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A `sleep` in its own session, like the processes `up` starts."""
    process = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield process
    process.kill()
    process.wait()


def record_of(pid: int, name: str = "registry") -> ProcessRecord:
    start_time = stack.process_start_time(pid)
    assert start_time is not None
    return ProcessRecord(name, pid, start_time, ["sleep", "60"], {"grpc": 50051})


def test_state_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "run" / "stack.json"
    state = StackState(
        [
            ProcessRecord("postgres", 101, 5000, ["pg_ctl", "start"], {"postgres": 55432}),
            ProcessRecord("triton", 202, 6000, ["tritonserver"], dict(stack.TRITON_PORTS)),
        ]
    )
    stack.save_state(path, state)
    assert stack.load_state(path) == state


def test_state_file_is_removed_when_nothing_is_recorded(tmp_path: Path) -> None:
    path = tmp_path / "stack.json"
    stack.save_state(path, StackState([ProcessRecord("triton", 1, 2, ["x"], {})]))
    stack.save_state(path, StackState())
    assert not path.exists()
    assert stack.load_state(path) == StackState()


def test_put_replaces_in_place_keeping_start_order() -> None:
    state = StackState([ProcessRecord(n, i, i, [], {}) for i, n in enumerate(["a", "b", "c"])])
    state.put(ProcessRecord("b", 99, 99, [], {}))
    assert [(r.name, r.pid) for r in state.processes] == [("a", 0), ("b", 99), ("c", 2)]


def test_identity_holds_for_a_live_process() -> None:
    assert stack.is_ours(record_of(os.getpid()))


def test_identity_refuses_a_pid_with_another_start_time() -> None:
    record = record_of(os.getpid())
    record.start_time -= 1
    assert not stack.is_ours(record)
    assert not stack.owns_group(record)


def test_recycled_pid_is_never_signalled(sleeper: subprocess.Popen[bytes]) -> None:
    record = record_of(sleeper.pid)
    record.start_time += 1

    message = stack.stop_process(record, timeout_s=0.5)

    assert "left alone" in message
    assert sleeper.poll() is None


def test_unreaped_process_counts_as_exited(sleeper: subprocess.Popen[bytes]) -> None:
    record = record_of(sleeper.pid)
    sleeper.kill()
    deadline = time.monotonic() + 5
    while stack.live_group_members(sleeper.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not stack.is_ours(record)
    assert stack.stop_process(record) == f"pid {sleeper.pid} had already exited"


def test_exited_process_is_not_ours(sleeper: subprocess.Popen[bytes]) -> None:
    record = record_of(sleeper.pid)
    sleeper.kill()
    sleeper.wait()
    assert not stack.is_ours(record)
    assert "left alone" in stack.stop_process(record)


def test_stop_process_terminates_the_whole_group(sleeper: subprocess.Popen[bytes]) -> None:
    record = record_of(sleeper.pid)

    message = stack.stop_process(record, timeout_s=5)

    assert message == f"stopped pid {sleeper.pid}"
    assert sleeper.wait(timeout=5) == -15
    assert stack.live_group_members(sleeper.pid) == []


def test_children_of_an_exited_leader_are_stopped() -> None:
    leader = subprocess.Popen(["sh", "-c", "sleep 60 & wait"], start_new_session=True)
    record = record_of(leader.pid, name="triton")
    deadline = time.monotonic() + 5
    while len(stack.live_group_members(leader.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    leader.kill()
    leader.wait()
    assert stack.owns_group(record)

    message = stack.stop_process(record, timeout_s=5)

    assert message == f"stopped the processes pid {leader.pid} left behind"
    assert stack.live_group_members(leader.pid) == []


def test_services_start_in_dependency_order() -> None:
    assert [s.name for s in stack.SERVICES] == [
        "registry",
        "serving",
        "materialization",
        "recommend",
    ]


def test_services_have_distinct_ports_and_metrics_ports_9091_to_9094() -> None:
    ports = [p for s in stack.SERVICES for p in s.ports.values()]
    assert len(set(ports)) == len(ports)
    assert sorted(s.metrics_port for s in stack.SERVICES) == [9091, 9092, 9093, 9094]


def test_down_stops_dependents_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A service restarted by a later `up` is recorded last but still stops before its dependencies.
    names = ["triton", "serving", "recommend", "registry"]
    state = StackState([ProcessRecord(n, i, i, [], {}) for i, n in enumerate(names)])
    ctx = stack.Context(run_dir=tmp_path, database_url="postgresql://u@127.0.0.1:1/db")
    stack.save_state(ctx.state_file, state)
    stopped: list[str] = []
    monkeypatch.setattr(stack, "stop_process", lambda record: stopped.append(record.name) or "ok")

    assert stack.cmd_down(ctx) == 0

    assert stopped == ["recommend", "serving", "registry", "triton"]
    assert not ctx.state_file.exists()


def test_taken_port_is_reported_with_its_owner() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]

        assert stack.port_in_use(port)
        conflicts = stack.port_conflicts({"registry": {"grpc": port}})

    assert len(conflicts) == 1
    assert f"port {port} (registry grpc)" in conflicts[0]
    assert f"pid {os.getpid()}" in conflicts[0]


def test_up_refuses_when_a_port_is_taken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = stack.Context(run_dir=tmp_path, database_url="postgresql://u@127.0.0.1:1/db")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        monkeypatch.setattr(stack, "ports_to_claim", lambda ctx, state: {"triton": {"grpc": port}})
        monkeypatch.setattr(stack, "bring_up", pytest.fail)

        with pytest.raises(stack.StackError, match=f"port {port} \\(triton grpc\\)"):
            stack.cmd_up(ctx)

    assert not ctx.state_file.exists()


def test_free_port_is_not_in_use() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert not stack.port_in_use(port)


def _grace_defaults() -> dict[str, float]:
    from services.materialization.server import MaterializationSettings
    from services.recommend.server import RecommendSettings
    from services.registry.server import RegistrySettings
    from services.serving.server import ServingSettings

    classes = [RegistrySettings, ServingSettings, MaterializationSettings, RecommendSettings]
    return {c.model_fields["service_name"].default: c.model_fields[GRACE].default for c in classes}


GRACE = "shutdown_grace_seconds"
INFRA = Path(__file__).resolve().parents[2] / "infra"


def test_make_down_waits_past_each_services_shutdown_grace(tmp_path: Path) -> None:
    defaults = _grace_defaults()
    ctx = stack.Context(tmp_path, None)
    for spec in stack.SERVICES:
        assert spec.shutdown_grace_s == defaults[spec.name]
        env = stack.service_env(ctx, spec, "postgresql://x@127.0.0.1/db")
        assert float(env[stack.GRACE_ENV]) == spec.shutdown_grace_s
        assert stack.stop_timeout(env) >= spec.shutdown_grace_s + stack.STOP_MARGIN_S
    # A record written before the field existed still loads, with the old timeout.
    assert ProcessRecord("x", 1, 2, [], {}).stop_timeout_s == stack.STOP_TIMEOUT_S


def test_kubernetes_and_compose_wait_past_each_services_shutdown_grace() -> None:
    defaults = _grace_defaults()
    for name, default in defaults.items():
        [deployment] = [
            doc
            for doc in yaml.safe_load_all((INFRA / "k8s" / f"{name}.yaml").read_text())
            if doc and doc["kind"] == "Deployment"
        ]
        pod = deployment["spec"]["template"]["spec"]
        env = {e["name"]: e.get("value") for e in pod["containers"][0].get("env", [])}
        grace = float(env.get(stack.GRACE_ENV) or default)
        assert pod["terminationGracePeriodSeconds"] >= grace + stack.STOP_MARGIN_S, name
    compose = yaml.safe_load((INFRA / "compose.yaml").read_text())
    for name, default in defaults.items():
        period = compose["services"][name]["stop_grace_period"]
        assert float(period.removesuffix("s")) >= default + stack.STOP_MARGIN_S, name
