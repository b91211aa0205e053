"""gunicorn's gthread worker with bounded reads, so slow or stalled clients cannot starve intake.

gthread already parks a new connection that sends nothing; but one that sends a few bytes of its headers, or
trickles its body, holds a worker thread in a blocking read for as long as it likes, and a handful of them
hold them all. Here every blocking read and write on a client socket gives up after READ_TIMEOUT_SECONDS
(Stripe sends a whole event in milliseconds), which closes that connection and frees its thread; with
`threads` well above the number of such clients, a real webhook always finds a free one. Against a flood,
put a buffering proxy (nginx, a load balancer) in front, as for any gunicorn app."""

from __future__ import annotations

import socket

from gunicorn.workers.gthread import ThreadWorker

READ_TIMEOUT_SECONDS = 5.0


class _BoundedSocket(socket.socket):
    """A client socket whose blocking mode has a deadline: gthread switches sockets to blocking for each
    request (setblocking(True)); that becomes a timeout instead of forever."""

    def setblocking(self, flag: bool) -> None:
        if flag:
            self.settimeout(READ_TIMEOUT_SECONDS)
        else:
            super().setblocking(False)


class BoundedThreadWorker(ThreadWorker):
    def accept(self, listener):
        return super().accept(_BoundedListener(listener))


class _BoundedListener:
    """The listening socket as gthread's accept() sees it: every accepted socket comes back bounded."""

    def __init__(self, listener):
        self._listener = listener

    def accept(self):
        sock, address = self._listener.accept()
        return _BoundedSocket(sock.family, sock.type, sock.proto, fileno=sock.detach()), address

    def __getattr__(self, name):
        return getattr(self._listener, name)
