"""A real Docker-API engine for tests, without Docker: podman's API service on a private socket.

Everything lives in one state directory (configuration, image store, socket), nothing in /etc changes. An
image is built without a registry: a root file system holding busybox and its applet links, imported as
``localhost/cb-busybox:latest``. Needs the ``podman``, ``runc`` and ``busybox`` programs (Debian: podman runc
busybox-static); a missing one is an error, not a skipped test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from types import TracebackType

from ..errors import CircuitBreakerError

IMAGE = "localhost/cb-busybox:latest"


class PodmanUnavailable(CircuitBreakerError):
    """podman (or runc, or busybox) is missing, or its API service does not come up."""


class PodmanEngine:
    """``with PodmanEngine() as engine: engine.docker_host`` — a Docker-API endpoint for docker-py."""

    def __init__(self, state_dir: str | Path | None = None) -> None:
        self._own_dir = state_dir is None
        self.state = Path(state_dir or tempfile.mkdtemp(prefix="cb-podman-"))
        self.socket = self.state / "podman.sock"
        self._service: subprocess.Popen[bytes] | None = None

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "CONTAINERS_CONF": str(self.state / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(self.state / "storage.conf"),
        }

    def start(self) -> PodmanEngine:
        for program in ("podman", "runc", "busybox"):
            if shutil.which(program) is None:
                raise PodmanUnavailable(f"{program} is not installed (apt-get install podman runc busybox-static)")
        (self.state / "tmp").mkdir(parents=True, exist_ok=True)
        (self.state / "containers.conf").write_text(
            f'[containers]\ndefault_ulimits = []\n[engine]\nruntime = "runc"\ntmp_dir = "{self.state / "tmp"}"\n'
        )
        (self.state / "storage.conf").write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{self.state / "root"}"\nrunroot = "{self.state / "run"}"\n'
        )
        env = {**os.environ, **self.env}
        if subprocess.run(["podman", "image", "exists", IMAGE], env=env, check=False).returncode != 0:
            self._import_busybox(env)
        self._service = subprocess.Popen(
            ["podman", "system", "service", "--time=0", self.docker_host],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.socket.exists() and self._ping():
                return self
            if self._service.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise PodmanUnavailable("podman's API service did not come up")

    def _import_busybox(self, env: dict[str, str]) -> None:
        rootfs = self.state / "rootfs.tar"
        busybox = Path(shutil.which("busybox") or "/bin/busybox").resolve()
        applets = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True).stdout.split()
        with tarfile.open(rootfs, "w") as tar:
            tar.add(busybox, arcname="bin/busybox")
            for applet in applets:
                if applet == "busybox":  # a link named busybox would replace the binary itself
                    continue
                info = tarfile.TarInfo(f"bin/{applet}")
                info.type = tarfile.SYMTYPE
                info.linkname = "busybox"
                tar.addfile(info)
        subprocess.run(
            ["podman", "import", "--change", 'CMD ["/bin/sh"]', str(rootfs), IMAGE],
            env=env,
            check=True,
            capture_output=True,
        )

    def _ping(self) -> bool:
        import socket

        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(1)
                sock.connect(str(self.socket))
                sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
                return b"OK" in sock.recv(4096)
        except OSError:
            return False

    def stop(self) -> None:
        if self._service is not None:
            self._service.terminate()
            try:
                self._service.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._service.kill()
            self._service = None

    def __enter__(self) -> PodmanEngine:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
