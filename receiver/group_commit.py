"""Group commit for the enqueue: the requests a worker's threads are answering at the same moment share one
Redis round trip.

Each request's enqueue waits for Redis to store its entry (with `appendfsync always`, for the fsync too), and
that round trip is most of a webhook's cost: the syscalls on both sides and Redis's own per-command work
(bench/receiver_load.py). So, as a database commits the transactions that wait together with one log flush:
the first thread to arrive leads, sending every enqueue waiting by then as one pipeline; the threads that arrive
while it waits for Redis queue up behind it, and when its answer is back, the first of them leads the next
round trip with all of them. Under no load a batch is one event and costs what a plain enqueue costs; under load
batches grow by themselves, with no timer and no added wait. Each request still gets its own answer (its entry
id, a duplicate, or the error that makes it a 503), and only after Redis answered for its entry."""

from __future__ import annotations

import _thread
import threading

import redis

from billing.event_queue import Event, EventQueue


class _Waiter:
    __slots__ = ("event", "result", "lead", "wake")

    def __init__(self, event: Event):
        self.event = event
        self.result: str | None | redis.RedisError = None
        self.lead = False  # woken to lead the next round trip, not with an answer
        self.wake = _thread.allocate_lock()  # held until this waiter is woken: cheaper than a threading.Event
        self.wake.acquire()


class GroupCommit:
    def __init__(self, queue: EventQueue):
        self.queue = queue
        self._lock = threading.Lock()
        self._waiting: list[_Waiter] = []
        self._leading = False  # a round trip is on its way

    def enqueue(self, event_id: str, event_type: str, created: int, payload: bytes) -> str | None:
        """As EventQueue.enqueue: the entry id, or None for a duplicate; raises redis.RedisError when Redis did
        not confirm this event's entry."""
        me = _Waiter((event_id, event_type, created, payload))
        with self._lock:
            self._waiting.append(me)
            lead = not self._leading
            self._leading = True
        if not lead:
            me.wake.acquire()
            if not me.lead:
                return _answer(me.result)
        self._round_trip()
        return _answer(me.result)

    def _round_trip(self) -> None:
        with self._lock:
            batch, self._waiting = self._waiting, []
        results: list = [redis.RedisError("the enqueue was interrupted")] * len(batch)
        try:
            results = self.queue.enqueue_many([waiter.event for waiter in batch])
        except Exception as exc:  # Redis answered none of them (an outage, a timeout): each request's error
            results = [exc] * len(batch)
        finally:  # whatever happened, nobody is left waiting: the next leader and this batch are woken
            self._hand_over(batch, results)

    def _hand_over(self, batch: list[_Waiter], results: list) -> None:
        with self._lock:
            if self._waiting:
                self._waiting[0].lead = True
                self._waiting[0].wake.release()
            else:
                self._leading = False
        for waiter, result in zip(batch, results):
            waiter.result = result
            waiter.wake.release()  # the leader's own lock too: nobody waits on it, and nothing reuses it


def _answer(result: str | None | BaseException) -> str | None:
    if isinstance(result, BaseException):
        raise result
    return result
