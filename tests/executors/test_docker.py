"""DockerExecutor against a real Docker-API engine: podman's service on a private socket (see testing.podman)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from circuit_breaker import Engine, InstanceStatus, Workflow
from circuit_breaker.errors import ExecutorConfigError, ExecutorError
from circuit_breaker.executors.docker import DockerExecutor
from circuit_breaker.testing.podman import IMAGE, PodmanEngine


@pytest.fixture(scope="module")
def docker_host() -> Iterator[str]:
    # Its own temp dir, not pytest's: podman's overlay mounts outlive the test and would trip pytest's cleanup.
    with PodmanEngine() as engine:
        yield engine.docker_host


def leftover_containers(docker_host: str) -> list[str]:
    import docker

    client = docker.DockerClient(base_url=docker_host)
    try:
        return [c.id for c in client.containers.list(all=True, filters={"label": "circuit_breaker=1"})]
    finally:
        client.close()


async def test_a_command_runs_and_returns_exit_code_and_separate_streams(docker_host: str) -> None:
    ex = DockerExecutor(
        image=IMAGE,
        command=["sh", "-c", 'echo "hello $WHO"; echo oops >&2'],
        environment={"WHO": "container"},
        docker_host=docker_host,
    )
    result = await ex.execute_detailed()
    assert result.status == "succeeded", result.error
    out = result.output
    assert (out["status"], out["exit_code"], out["stdout"], out["stderr"]) == (
        "succeeded",
        0,
        "hello container\n",
        "oops\n",
    )
    assert out["duration_s"] > 0
    assert leftover_containers(docker_host) == []


async def test_a_container_run_for_a_firing_gets_its_idempotency_key_in_the_environment(docker_host: str) -> None:
    """As the shell executor's programs do: the same key on every run of the firing (here a task on a worker)."""
    from circuit_breaker.executors import default_registry
    from circuit_breaker.executors._local_tasks import ExecutorCache, run_task
    from circuit_breaker.tasks import Task

    show = DockerExecutor(image=IMAGE, command='echo "key=$CB_IDEMPOTENCY_KEY"', docker_host=docker_host)
    assert (await show.execute())["stdout"] == "key=\n"  # no firing, no key
    task = Task.new(workflow="w", instance_id="i1", transition="run", executor=show.spec(), idempotency_key="k-4")
    output, error = await run_task(ExecutorCache(default_registry()), task)
    assert error is None, error
    assert output["stdout"] == "key=k-4\n"


async def test_volumes_working_dir_and_user(docker_host: str, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("three words here")
    tmp_path.chmod(0o755)  # user 1234 in the container must be able to read the mount
    (tmp_path / "in.txt").chmod(0o644)
    ex = DockerExecutor(
        image=IMAGE,
        command="wc -w < in.txt; id -u",
        volumes={str(tmp_path): "/data:ro"},
        working_dir="/data",
        user="1234",
        docker_host=docker_host,
    )
    out = await ex.execute()
    assert out["stdout"].split() == ["3", "1234"]


async def test_a_non_zero_exit_is_a_non_retryable_error_with_the_output(docker_host: str) -> None:
    result = await DockerExecutor(
        image=IMAGE, command="echo bad >&2; exit 3", docker_host=docker_host
    ).execute_detailed()
    assert result.status == "failed" and result.error is not None
    assert (result.error.kind, result.error.retryable) == ("exit_code", False)
    assert result.error.details["exit_code"] == 3 and result.error.details["stderr"] == "bad\n"
    assert leftover_containers(docker_host) == []


async def test_a_container_that_runs_too_long_is_stopped_and_removed(docker_host: str) -> None:
    started = time.monotonic()
    ex = DockerExecutor(image=IMAGE, command=["sleep", "60"], timeout=1, stop_grace=1, docker_host=docker_host)
    result = await ex.execute_detailed()
    assert result.status == "timed_out" and result.error is not None and result.error.retryable
    assert time.monotonic() - started < 20
    assert leftover_containers(docker_host) == []


async def test_a_missing_image_is_a_clear_non_retryable_error(docker_host: str) -> None:
    ex = DockerExecutor(image="localhost/no-such-image:1", command="true", pull="never", docker_host=docker_host)
    result = await ex.execute_detailed()
    assert result.error is not None and (result.error.kind, result.error.retryable) == ("image_not_found", False)


def test_unsafe_settings_are_refused_unless_the_author_allows_them() -> None:
    with pytest.raises(ExecutorConfigError, match="host"):
        DockerExecutor(image=IMAGE, network_mode="host")
    with pytest.raises(ExecutorConfigError, match="docker.sock"):
        DockerExecutor(image=IMAGE, volumes={"/var/run/docker.sock": "/sock"})
    with pytest.raises(ExecutorConfigError, match="'/'"):
        DockerExecutor(image=IMAGE, volumes={"/": "/host"})
    with pytest.raises(ExecutorConfigError, match="privileged"):
        DockerExecutor(image=IMAGE, privileged=True)  # not a parameter: only DockerExecutor.policy can allow it


def test_the_hosts_root_and_the_engines_socket_cannot_be_mounted_by_another_spelling(tmp_path: Path) -> None:
    """Found in a walk-through: "/." mounted the host's root, and the directory holding the socket mounted it."""
    for host in ("/.", "//", "/var/..", "/var/run", "/run"):
        with pytest.raises(ExecutorConfigError, match="not allowed"):
            DockerExecutor(image=IMAGE, volumes={host: "/host"})
    engine_dir = tmp_path / "engine"
    engine_dir.mkdir()
    with pytest.raises(ExecutorConfigError, match="socket"):
        DockerExecutor(image=IMAGE, docker_host=f"unix://{engine_dir}/podman.sock", volumes={str(engine_dir): "/s"})
    DockerExecutor(image=IMAGE, volumes={str(tmp_path / "data"): "/data"})  # an ordinary directory is fine


def test_secret_named_environment_values_are_masked(tmp_path: Path) -> None:
    """Found in a walk-through: the shell executor masked them, the docker one did not."""
    from circuit_breaker.secrets import default_masker

    DockerExecutor(image=IMAGE, environment={"API_TOKEN": "ghp_container_secret_1234", "REGION": "eu-1"})
    assert default_masker().mask_text("token is ghp_container_secret_1234 in eu-1") == "token is *** in eu-1"


async def test_as_a_workflow_action_the_command_is_templated_and_the_output_merges(docker_host: str) -> None:
    wf = Workflow("containerised")
    raw, counted = wf.states("raw", "counted")
    wf.flow(raw >> counted, "count").action(
        DockerExecutor(image=IMAGE, command=["sh", "-c", "echo {{ text }} | wc -w"], docker_host=docker_host)
    )
    async with Engine() as engine:
        inst = await engine.wait((await engine.start(wf, {"text": "a b c d"})).id, timeout=60)
    assert inst.status is InstanceStatus.COMPLETED
    assert inst.tokens[0].data["stdout"].strip() == "4"


async def test_a_failing_container_leaves_the_token_where_it_was(docker_host: str) -> None:
    wf = Workflow("containerised_fail")
    raw, done = wf.states("raw", "done")
    wf.flow(raw >> done, "boom").action(DockerExecutor(image=IMAGE, command="exit 7", docker_host=docker_host))
    async with Engine() as engine:
        inst = await engine.wait((await engine.start(wf, {"x": 1})).id, timeout=60)
    assert inst.status is InstanceStatus.FAILED
    assert inst.tokens[0].place == "raw" and inst.open_incidents[0].error.kind == "exit_code"
    with pytest.raises(ExecutorError):
        await DockerExecutor(image=IMAGE, command="exit 7", docker_host=docker_host).execute()


async def test_a_cancelled_run_still_removes_its_container(docker_host: str) -> None:
    import asyncio

    ex = DockerExecutor(image=IMAGE, command=["sleep", "60"], timeout=120, stop_grace=1, docker_host=docker_host)
    task = asyncio.create_task(ex.execute())
    for _ in range(100):  # until the container exists
        if leftover_containers(docker_host):
            break
        await asyncio.sleep(0.1)
    assert leftover_containers(docker_host)
    await asyncio.sleep(0.5)  # let it start
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if not leftover_containers(docker_host):
            break
        await asyncio.sleep(0.1)
    assert leftover_containers(docker_host) == []


def test_secret_named_values_filled_from_a_token_are_masked_for_that_run_only() -> None:
    """From a review: each firing added its token's value to the process-wide masker, which then grew without
    end and masked that value in unrelated output."""
    from circuit_breaker.secrets import default_masker

    ex = DockerExecutor(image=IMAGE, environment={"API_TOKEN": "{{ tok }}"})
    before = default_masker().mask_text("per-token-secret-00042")
    rendered = [ex.render({"tok": f"per-token-secret-{i:05d}"}) for i in range(50)]
    assert default_masker().mask_text("per-token-secret-00042") == before == "per-token-secret-00042"
    assert rendered[42]._own_secrets == ("per-token-secret-00042",)  # masked in that run's own results


def test_an_allowed_host_mount_covers_what_is_below_it_not_its_namesakes(monkeypatch: pytest.MonkeyPatch) -> None:
    """From a review: the allowance compared prefixes, so allowing /run/pod also allowed /run/podman, which
    holds the engine's socket."""
    from circuit_breaker.executors.docker import DockerPolicy

    monkeypatch.setattr(DockerExecutor, "policy", DockerPolicy(allow_host_mounts=("/run/pod",)))
    DockerExecutor(image=IMAGE, volumes={"/run/pod": "/a", "/run/pod/sub": "/b"})
    with pytest.raises(ExecutorConfigError, match="not allowed"):
        DockerExecutor(image=IMAGE, volumes={"/run/podman": "/a"})
