"""A TCP proxy on a local port, for outages the tests and bench/faults.py stage: cut (every
connection dropped, open ones too, until restored) or retargeted (a restarted server listening
on a new port: open connections are dropped, new ones go to the new port)."""

from __future__ import annotations

import socket
import threading


class TcpProxy:
    def __init__(self, target: tuple[str, int], name: str = "tcp-proxy") -> None:
        self.target = target
        self.cut = False
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open: set[socket.socket] = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True, name=name).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.cut:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                self.open |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                self._close(s)

    def _close(self, s: socket.socket) -> None:
        with self.lock:
            self.open.discard(s)
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()

    def _drop_open(self) -> None:
        with self.lock:
            live = list(self.open)
        for s in live:
            self._close(s)

    def set_cut(self, cut: bool) -> None:
        """While cut, every connection is dropped (the open ones at once)."""
        self.cut = cut
        if cut:
            self._drop_open()

    def retarget(self, port: int) -> None:
        """Send new connections to `port` (same host); the open ones are dropped."""
        self.target = (self.target[0], port)
        self._drop_open()

    def close(self) -> None:
        self.listener.close()
        self.set_cut(True)
