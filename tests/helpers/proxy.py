"""A TCP proxy in front of PostgreSQL for two faults: losing a connection at the worst moment (just
after a COMMIT went through to the database, before its answer came back: the database commits;
the client cannot know whether it did), and holding every packet in both directions without closing
anything, as a network partition does, until released."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType

COMMIT = b"Q\x00\x00\x00\x0bCOMMIT\x00"  # the simple-query message psycopg sends to commit


class DatabaseProxy:
    def __init__(self, upstream_port: int) -> None:
        self._upstream = ("127.0.0.1", upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._armed = threading.Event()
        self.flowing = threading.Event()
        self.flowing.set()
        self.cuts = 0
        self._closed = False
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def cut_after_next_commit(self) -> None:
        self._armed.set()

    def hold(self) -> None:
        """From now on nothing passes, either way; connections stay open (bytes wait in the pumps)."""
        self.flowing.clear()

    def release(self) -> None:
        self.flowing.set()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            _Connection(self, client, socket.create_connection(self._upstream, timeout=10))

    def should_cut(self, data: bytes) -> bool:
        if COMMIT in data and self._armed.is_set():
            self._armed.clear()
            self.cuts += 1
            return True
        return False

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def __enter__(self) -> DatabaseProxy:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


class _Connection:
    """One client connection: two pumps; once cut, nothing more reaches the client, then both ends close."""

    SETTLE_S = 0.3  # time for the database to read and run the COMMIT before its socket closes

    def __init__(self, proxy: DatabaseProxy, client: socket.socket, upstream: socket.socket) -> None:
        upstream.settimeout(None)
        self._proxy, self._client, self._upstream = proxy, client, upstream
        self._cut = threading.Event()
        threading.Thread(target=self._to_database, daemon=True).start()
        threading.Thread(target=self._to_client, daemon=True).start()

    def _to_database(self) -> None:
        try:
            while data := self._client.recv(65536):
                cutting = self._proxy.should_cut(data)
                if cutting:
                    self._cut.set()  # before the COMMIT leaves: its answer must not reach the client
                self._proxy.flowing.wait()
                self._upstream.sendall(data)
                if cutting:
                    time.sleep(self.SETTLE_S)
                    break
        except OSError:
            pass
        self._close()

    def _to_client(self) -> None:
        try:
            while (data := self._upstream.recv(65536)) and not self._cut.is_set():
                self._proxy.flowing.wait()
                self._client.sendall(data)
        except OSError:
            pass
        self._close()

    def _close(self) -> None:
        for end in (self._client, self._upstream):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            end.close()
