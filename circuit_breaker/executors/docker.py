"""DockerExecutor: run a command in a container through the Docker Engine API (docker-py, extra ``[docker]``).

The endpoint comes from ``DOCKER_HOST`` (or ``docker_host``); podman's API service works as well as Docker.
Containers are always removed, also on timeout (stop, then kill) and when the run is cancelled.

Safe by default: never privileged, no host network, PID or IPC namespace, no mount of ``/`` or of the Docker
socket, every capability dropped. A workflow *author* can widen this in code with ``DockerExecutor.policy``
(``DockerPolicy(allow_host_network=True, ...)``) — never through token data or parameters.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from ..errors import ExecutorError
from ._base import Executor, with_idempotency_key
from ._params import param

_CLIENTS: dict[str, Any] = {}
_CLIENTS_LOCK = threading.Lock()
_FORBIDDEN_MOUNTS = ("/", "/var/run/docker.sock", "/run/docker.sock", "/run/podman/podman.sock")


def _within(path: str, allowed: str) -> bool:
    """Whether ``path`` is ``allowed`` or below it (a review: "/srv/data" allowed "/srv/database" too)."""
    root = os.path.realpath(allowed) if allowed.startswith("/") else allowed
    return path == root or path.startswith(root.rstrip("/") + "/")


@dataclass(frozen=True)
class DockerPolicy:
    """What containers may do beyond the safe defaults; set by the workflow author, in code."""

    allow_host_network: bool = False
    allow_privileged: bool = False
    allow_host_mounts: tuple[str, ...] = ()  # host directories that may be mounted (with what is below them)
    cap_add: tuple[str, ...] = ()


class DockerExecutor(Executor):
    """Run ``command`` in a container of ``image`` and return its exit code, stdout and stderr."""

    name = "docker"
    policy: ClassVar[DockerPolicy] = DockerPolicy()

    image: str = param(required=True, description="image reference, e.g. python:3.12-slim")
    command: str | list[str] | None = param(default=None, description="argv list (or one string for sh -c)")
    environment: dict[str, str] = param(default={}, description="environment variables")
    volumes: dict[str, str] = param(default={}, description="host path -> container path (append :ro for read-only)")
    working_dir: str | None = param(default=None, description="working directory in the container")
    user: str | None = param(default=None, description="user (uid[:gid]) to run as")
    network_mode: str = param(default="none", description="'none' (default), 'bridge' or a network name")
    mem_limit: str | None = param(default=None, description="memory limit, e.g. 256m")
    cpus: float | None = param(default=None, gt=0, description="CPU limit in cores")
    pids_limit: int | None = param(default=256, gt=0, description="most processes the container may start")
    timeout: float | None = param(default=300, gt=0, description="seconds before the container is stopped")
    stop_grace: float = param(default=5, ge=0, description="seconds between stop (SIGTERM) and kill")
    pull: Literal["never", "missing", "always"] = param(default="missing", description="when to pull the image")
    labels: dict[str, str] = param(default={}, description="container labels")
    docker_host: str | None = param(default=None, description="Docker API endpoint (default: DOCKER_HOST)")

    def validate(self) -> None:
        policy = type(self).policy
        # Secret-named variables (API_TOKEN, *_PASSWORD...) are masked in results, events and logs, as the shell
        # executor's are (found in a walk-through: a container's echo of one came out in clear).
        self.mask_named("environment", self.environment)
        if self.network_mode == "host" and not policy.allow_host_network:
            raise ValueError("network_mode 'host' is not allowed (DockerExecutor.policy.allow_host_network)")
        if self.network_mode.startswith("container:"):
            raise ValueError("sharing another container's network namespace is not allowed")
        sockets = self._engine_sockets()
        for host, target in self.volumes.items():
            # As the host sees it: "/." is "/", "/var/run" may be "/run" (found in a walk-through: the check read
            # the path as written, so "/." mounted the host's root).
            clean = os.path.realpath(host) if host.startswith("/") else host
            if any(_within(clean, allowed) for allowed in policy.allow_host_mounts):
                continue
            inside = clean.rstrip("/") + "/"
            if clean in _FORBIDDEN_MOUNTS or clean.endswith(".sock") or any(s.startswith(inside) for s in sockets):
                raise ValueError(
                    f"mounting {host!r} is not allowed: it is the host's root, or holds the container engine's "
                    "socket (DockerExecutor.policy.allow_host_mounts)"
                )
            if not target.split(":")[0].startswith("/"):
                raise ValueError(f"volume target {target!r} must be an absolute path in the container")

    def _engine_sockets(self) -> set[str]:
        """The container engine's sockets: the usual ones, and the one ``docker_host`` (or DOCKER_HOST) names."""
        found = {os.path.realpath(p) for p in _FORBIDDEN_MOUNTS if p != "/"}
        for url in (self.docker_host, os.environ.get("DOCKER_HOST")):
            if isinstance(url, str) and url.startswith("unix://"):
                found.add(os.path.realpath(url.removeprefix("unix://")))
        return found

    async def execute_internal(self) -> dict[str, Any]:
        started = time.perf_counter()
        client = await asyncio.to_thread(self._client)
        await asyncio.to_thread(self._ensure_image, client)
        container = await asyncio.to_thread(self._create, client)
        try:
            status = await self._wait(container)
            stdout = await asyncio.to_thread(container.logs, stdout=True, stderr=False)
            stderr = await asyncio.to_thread(container.logs, stdout=False, stderr=True)
        finally:
            # shield: a cancelled run still removes its container.
            await asyncio.shield(asyncio.to_thread(_remove, container))
        duration = time.perf_counter() - started
        self.record_usage(wall_time=duration)
        exit_code = int(status.get("StatusCode", -1))
        out = {
            "status": "succeeded" if exit_code == 0 else "failed",
            "exit_code": exit_code,
            "stdout": stdout.decode("utf-8", "replace"),
            "stderr": stderr.decode("utf-8", "replace"),
            "duration_s": round(duration, 4),
        }
        if exit_code != 0:
            raise ExecutorError(
                f"container of {self.image!r} exited with {exit_code}: {out['stderr'][-500:].strip()}",
                executor=self.name,
                kind="exit_code",
                retryable=False,
                details=out,
            )
        return out

    # -- docker-py calls (blocking; run in threads) ----------------------------------------------------------
    def _client(self) -> Any:
        try:
            import docker
        except ImportError as err:  # the [docker] extra
            raise ExecutorError(
                "DockerExecutor needs docker-py: pip install 'circuit-breaker-wf[docker]'",
                executor=self.name,
                kind="missing_dependency",
                retryable=False,
            ) from err
        key = self.docker_host or ""
        with _CLIENTS_LOCK:
            client = _CLIENTS.get(key)
            if client is not None:
                return client
            # Building a client costs ~0.4 s (it asks the engine for its API version): one per endpoint.
            try:
                client = docker.DockerClient(base_url=self.docker_host) if self.docker_host else docker.from_env()
            except docker.errors.DockerException as err:
                raise ExecutorError(
                    f"cannot reach the Docker API: {err}", executor=self.name, kind="connection"
                ) from err
            _CLIENTS[key] = client
            return client

    def _ensure_image(self, client: Any) -> None:
        import docker

        if self.pull == "always":
            self._pull(client)
            return
        try:
            client.images.get(self.image)
        except docker.errors.ImageNotFound:
            if self.pull == "never":
                raise ExecutorError(
                    f"image {self.image!r} is not present and pull is 'never'",
                    executor=self.name,
                    kind="image_not_found",
                    retryable=False,
                ) from None
            self._pull(client)

    def _pull(self, client: Any) -> None:
        import docker

        try:
            client.images.pull(self.image)
        except docker.errors.ImageNotFound as err:
            raise ExecutorError(
                f"image {self.image!r} not found: {err}", executor=self.name, kind="image_not_found", retryable=False
            ) from err
        except docker.errors.APIError as err:
            raise ExecutorError(
                f"cannot pull image {self.image!r}: {err}", executor=self.name, kind="pull_failed", retryable=True
            ) from err

    def _create(self, client: Any) -> Any:
        import docker

        policy = type(self).policy
        command: Any = self.command
        if isinstance(command, str):
            command = ["sh", "-c", command]
        volumes = {
            host: {"bind": target.split(":")[0], "mode": "ro" if target.endswith(":ro") else "rw"}
            for host, target in self.volumes.items()
        }
        try:
            return client.containers.create(
                self.image,
                command,
                environment=with_idempotency_key(self.environment),  # (CB_IDEMPOTENCY_KEY in a firing)
                volumes=volumes,
                working_dir=self.working_dir,
                user=self.user,
                network_mode=self.network_mode,
                mem_limit=self.mem_limit,
                nano_cpus=int(self.cpus * 1e9) if self.cpus else None,
                pids_limit=self.pids_limit,
                labels={"circuit_breaker": "1", **self.labels},
                privileged=policy.allow_privileged,
                cap_drop=["ALL"],
                cap_add=list(policy.cap_add) or None,
                security_opt=["no-new-privileges"],
                detach=True,
            )
        except docker.errors.ImageNotFound as err:
            raise ExecutorError(
                f"image {self.image!r} is not present: {err}",
                executor=self.name,
                kind="image_not_found",
                retryable=False,
            ) from err
        except docker.errors.APIError as err:
            raise ExecutorError(f"cannot create the container: {err}", executor=self.name, kind="api_error") from err

    async def _wait(self, container: Any) -> dict[str, Any]:
        await asyncio.to_thread(container.start)
        try:
            if self.timeout is None:
                result: dict[str, Any] = await asyncio.to_thread(container.wait)
                return result
            return await asyncio.wait_for(asyncio.to_thread(container.wait), self.timeout)
        except TimeoutError:
            await asyncio.to_thread(_stop, container, self.stop_grace)
            raise ExecutorError(
                f"container of {self.image!r} ran longer than {self.timeout:g}s and was stopped",
                executor=self.name,
                kind="timeout",
                retryable=True,
            ) from None
        except asyncio.CancelledError:
            await asyncio.shield(asyncio.to_thread(_stop, container, 0))
            raise


def _stop(container: Any, grace: float) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds (docker's stop does both); kill if stop fails."""
    try:
        container.stop(timeout=int(grace))
    except Exception:  # already gone or dying: the removal that follows settles it
        with contextlib.suppress(Exception):
            container.kill()


def _remove(container: Any) -> None:
    # Best effort; a leftover carries the label circuit_breaker=1.
    with contextlib.suppress(Exception):
        container.remove(force=True)
