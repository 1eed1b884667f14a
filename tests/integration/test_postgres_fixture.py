"""The private PostgreSQL the store tests run on: isolated databases, durable commits, loopback only."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from focalserve_devtools.postgres import LocalPostgres


def rows(url: str) -> list[str]:
    with psycopg.connect(url) as connection:
        return [name for (name,) in connection.execute("SELECT name FROM items ORDER BY name")]


def add(url: str, *names: str) -> None:
    with psycopg.connect(url) as connection:  # commits on leaving the block
        connection.execute("CREATE TABLE IF NOT EXISTS items (name text PRIMARY KEY)")
        connection.cursor().executemany("INSERT INTO items VALUES (%s)", [(name,) for name in names])


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on `port`, as the kernel lists them (hex)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def test_each_database_is_isolated(postgres_server, postgres_url):
    other_url = postgres_server.create_database("test_other_isolated")
    try:
        add(postgres_url, "a1", "a2")
        assert rows(postgres_url) == ["a1", "a2"]
        with pytest.raises(psycopg.errors.UndefinedTable):
            rows(other_url)
        add(other_url, "b1")
        assert rows(postgres_url) == ["a1", "a2"] and rows(other_url) == ["b1"]
    finally:
        postgres_server.drop_database("test_other_isolated")
    assert rows(postgres_url) == ["a1", "a2"]


def test_committed_rows_survive_a_crash_and_restart():
    # a server of its own: crashing the session's server would break the other tests' databases
    with LocalPostgres() as server:
        url = server.create_database("durable")
        port = server.port
        add(url, "before-crash")
        server.stop("immediate")
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url, connect_timeout=2)
        server.restart()
        assert server.port == port and rows(url) == ["before-crash"]
        assert "not properly shut down" in server.log_path.read_text()  # recovered from WAL, not a clean stop

        add(url, "after-restart")
        server.restart()  # from running: a crash-stop by default
        assert rows(url) == ["after-restart", "before-crash"]
        with psycopg.connect(url) as connection:
            assert connection.execute("SHOW fsync").fetchone() == ("on",)
        root = server.root
        assert root is not None and root.is_dir()
    assert not root.exists()


def test_the_server_is_reachable_on_loopback_only(postgres_server, postgres_url):
    with psycopg.connect(postgres_url) as connection:
        settings = {name: connection.execute(f"SHOW {name}").fetchone()[0]
                    for name in ("listen_addresses", "unix_socket_directories", "data_directory", "port")}
        assert connection.execute("SELECT host(inet_server_addr())").fetchone() == ("127.0.0.1",)
    assert settings["listen_addresses"] == "127.0.0.1"
    assert int(settings["port"]) == postgres_server.port != 5432
    assert Path(settings["unix_socket_directories"]) == postgres_server.root
    assert Path(settings["data_directory"]).parent == postgres_server.root
    assert listening_addresses(postgres_server.port) == {"0100007F"}  # 127.0.0.1; nothing on 0.0.0.0 or ::
