"""Real Redis and Postgres for the tests, started on 127.0.0.1 in temp dirs (Debian's ``redis-server`` and
``postgresql``, which ``make test`` installs when missing and root). Tests that need one are skipped, saying
why, when its binaries are absent."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from tests.live_server import free_port


def redis_binary() -> str | None:
    return shutil.which("redis-server")


def postgres_bin_dir() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


class RedisServer:
    """``redis-server`` without persistence, daemonised, on a free port (or ``port``: a restart on the same one);
    ``stop`` shuts it down."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        binary = redis_binary()
        assert binary is not None
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._pidfile = workdir / "redis.pid"
        workdir.mkdir(parents=True, exist_ok=True)
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--daemonize", "yes", "--pidfile", str(self._pidfile), "--dir", str(workdir)]  # fmt: skip
        subprocess.run(argv, check=True, capture_output=True, timeout=30)
        self._wait_ready()

    def _wait_ready(self) -> None:
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=1)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} not ready")

    @property
    def pid(self) -> int:
        return int(self._pidfile.read_text().strip())

    def stop(self) -> None:
        try:
            os.kill(self.pid, 15)
        except (FileNotFoundError, ProcessLookupError, ValueError):
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(self.pid, 0)
            except (ProcessLookupError, FileNotFoundError, ValueError):
                return
            time.sleep(0.05)

    def flush(self) -> None:
        import redis

        redis.Redis.from_url(self.url).flushall()


class PostgresServer:
    """A Postgres cluster made with ``initdb`` in a temp dir, on a free port, trust auth on 127.0.0.1 only.
    Postgres refuses to run as root, so as root the cluster belongs to the ``postgres`` user."""

    def __init__(self) -> None:
        bin_dir = postgres_bin_dir()
        assert bin_dir is not None
        self._bin = bin_dir
        self.port = free_port()
        # Not under pytest's tmp dir: that one is private to root, and the cluster's owner must reach it.
        self._workdir = Path(tempfile.mkdtemp(prefix="ragops-pg-"))
        self._workdir.chmod(0o755)
        self._data = self._workdir / "pgdata"
        self._data.mkdir()
        self._run(f"{bin_dir}/initdb -D {self._data} --auth=trust -N -U postgres -E UTF8")
        options = f"-h 127.0.0.1 -p {self.port} -k {self._data} -c fsync=off -c max_connections=200"
        self._run(f"{bin_dir}/pg_ctl -D {self._data} -w -l {self._data}/server.log -o '{options}' start")

    def _run(self, command: str) -> None:
        if os.geteuid() == 0:
            shutil.chown(self._data, "postgres")
            argv = ["su", "postgres", "-s", "/bin/sh", "-c", command]
        else:
            argv = ["/bin/sh", "-c", command]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{command.split()[0]} failed: {done.stderr or done.stdout}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database's URL: each test gets its own."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        self._run(f"{self._bin}/pg_ctl -D {self._data} -w -m immediate stop")
        shutil.rmtree(self._workdir, ignore_errors=True)
