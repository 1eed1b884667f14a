"""A throwaway PostgreSQL 15 server on 127.0.0.1 for tests (Debian's `postgresql` package).

Each server lives in its own temporary directory (data, unix socket, log) on a free port, so the
tests neither need nor disturb a system cluster (Debian's package may start one on 5432).
PostgreSQL refuses to run as root: under root (CI) initdb and pg_ctl run as the `postgres` user,
which owns the directory; otherwise they run as the current user.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Literal

import psycopg
from psycopg import sql

from focalserve_devtools.launch import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SUPERUSER = "postgres"  # the role initdb creates, and the system user that runs the server under root
StopMode = Literal["smart", "fast", "immediate"]


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL binaries (or, under root, the `postgres` system user) are missing."""


class LocalPostgres:
    """One private server: `start()`, `stop()`, `restart()`, and a fresh database per test by name."""

    def __init__(self, bin_dir: Path = PG_BIN, timeout_s: float = 30) -> None:
        self.bin_dir = bin_dir
        self.timeout_s = timeout_s  # bounds every wait: start, stop, readiness
        self.as_postgres_user = os.geteuid() == 0
        self.root: Path | None = None
        self.port = 0
        self.running = False

    @property
    def data_dir(self) -> Path:
        return self._root() / "data"

    @property
    def log_path(self) -> Path:
        return self._root() / "server.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """initdb on first start (fresh temp dir, free port); later starts reuse both, as a restarted database would."""
        if self.running:
            return
        if self.root is None:
            self._check_installed()
            self.root = self._make_root()
            self.port = free_port()
            self._initdb()
        self._launch()

    def stop(self, mode: StopMode = "fast") -> None:
        """`immediate` is a crash: no checkpoint, so the next start replays the WAL."""
        if not self.running:
            return
        result = self._run(["pg_ctl", "stop", "-D", str(self.data_dir), "-m", mode, "-w",
                            "-t", str(int(self.timeout_s))])
        # status 3: no server running (it crashed or was killed), which is as stopped as it gets
        if result.returncode != 0 and self._run(["pg_ctl", "status", "-D", str(self.data_dir)]).returncode != 3:
            raise RuntimeError(f"pg_ctl stop -m {mode} failed: {result.stderr.strip()}\n{self.log_tail()}")
        self.running = False

    def restart(self, mode: StopMode = "immediate") -> None:
        """Stop (a crash by default) if running, then start again on the same data dir and port."""
        self.stop(mode)
        self._launch()

    def create_database(self, name: str) -> str:
        """A new, empty database (cheaper than a server per test); returns its URL."""
        self._admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        # FORCE ends sessions a test left open, which would otherwise block the drop
        self._admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def close(self) -> None:
        """Stop the server (crash-stop if a clean stop fails) and remove its directory."""
        try:
            if self.running:
                try:
                    self.stop("fast")
                except RuntimeError:
                    self.stop("immediate")
        finally:
            if self.root is not None:
                # owned by `postgres` under root, which root may remove; otherwise our own files
                shutil.rmtree(self.root, ignore_errors=True)
                self.root = None

    def __enter__(self) -> LocalPostgres:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, RuntimeError):
            return "(no server log)"
        return "server log (tail):\n" + "\n".join(text.splitlines()[-lines:])

    def _root(self) -> Path:
        if self.root is None:
            raise RuntimeError("the server has not been started")
        return self.root

    def _check_installed(self) -> None:
        missing = [name for name in ("initdb", "pg_ctl", "postgres") if not (self.bin_dir / name).is_file()]
        if missing:
            raise PostgresUnavailable(f"PostgreSQL 15 is not installed ({', '.join(missing)} missing from "
                                      f"{self.bin_dir}): run `apt-get install postgresql` (make test does it)")
        if self.as_postgres_user:
            try:
                pwd.getpwnam(SUPERUSER)
            except KeyError:
                raise PostgresUnavailable("running as root needs the `postgres` system user, which Debian's "
                                          "package creates: run `apt-get install postgresql`") from None

    def _make_root(self) -> Path:
        # not pytest's tmp_path: its parent is 0700 root, which the `postgres` user cannot traverse
        root = Path(tempfile.mkdtemp(prefix="focalserve-pg-"))
        if self.as_postgres_user:
            user = pwd.getpwnam(SUPERUSER)
            os.chown(root, user.pw_uid, user.pw_gid)
            if self._run(["test", "-w", str(root)], root).returncode != 0:
                shutil.rmtree(root, ignore_errors=True)
                raise PostgresUnavailable(f"the `postgres` user cannot write {root}: point TMPDIR at a "
                                          "directory it can traverse, such as /tmp")
        return root

    def _initdb(self) -> None:
        result = self._run(["initdb", "-D", str(self.data_dir), f"--username={SUPERUSER}", "--auth=trust",
                            "--encoding=UTF8", "--locale=C"])
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{result.stdout}\n{result.stderr}")

    def _launch(self) -> None:
        # the socket goes in our temp dir: /var/run/postgresql may be missing or not ours
        options = ["-c", "listen_addresses=127.0.0.1", "-p", str(self.port),
                   "-c", f"unix_socket_directories={self.root}", "-c", "fsync=on"]
        result = self._run(["pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_path), "-w",
                            "-t", str(int(self.timeout_s)), "-o", shlex.join(options)])
        if result.returncode != 0:
            raise RuntimeError(f"PostgreSQL did not start on 127.0.0.1:{self.port}: {result.stderr.strip()}\n"
                               f"{self.log_tail()}")
        self.running = True
        self._wait_connectable()

    def _wait_connectable(self) -> None:
        """pg_ctl -w reads the pid file; a real TCP login on the URL tests hand out is the proof."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
                return
            except psycopg.OperationalError as error:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"PostgreSQL on 127.0.0.1:{self.port} refused logins for {self.timeout_s} s:"
                                       f" {error}\n{self.log_tail()}") from error
            time.sleep(0.1)

    def _admin(self, statement: sql.Composed) -> None:
        # CREATE/DROP DATABASE cannot run inside a transaction
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=int(self.timeout_s)) as connection:
            connection.execute(statement)

    def _run(self, command: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        program = str(self.bin_dir / command[0]) if (self.bin_dir / command[0]).is_file() else command[0]
        argv = [program, *command[1:]]
        if self.as_postgres_user:
            argv = ["runuser", "-u", SUPERUSER, "--", *argv]
        # cwd: a directory the `postgres` user can read (initdb fails in root's home otherwise)
        return subprocess.run(argv, cwd=cwd or self._root(), capture_output=True, text=True,
                              timeout=self.timeout_s + 60)
