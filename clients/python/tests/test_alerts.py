"""The alert stream (``Client.alerts``, SPEC 6.11) against a scripted server on loopback:
backlog then live alerts in order, resubscription after a drop without repeats, missed
alerts counted, stale alerts before the answer ignored, a bounded queue that asks again,
a sequence that went back, one stream per client, and version 3 required."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Optional

import pytest

import reckon_client as rc
from reckon_client import wire


def alert(seq: int, pct: int = 80) -> wire.Alert:
    return wire.Alert(seq, 1_773_306_900_000 + seq, 7, "USD", 1, 1_772_319_600_000, pct,
                      Decimal("400.25"), Decimal("500.00"), False)


class ScriptedServer:
    """Speaks just enough of the protocol: HELLO, PING, ALERT_SUBSCRIBE (answered with what
    it keeps, then the kept alerts after ``after``), and alerts raised by the test."""

    def __init__(self, kept: list, *, version: int = 3, last_seq: Optional[int] = None,
                 stale_before_answer: Optional[wire.Alert] = None,
                 replay_all: bool = False) -> None:
        self.replay_all = replay_all  # ignores `after`: sends every kept alert again
        self.kept = list(kept)
        self.version = version
        self.last_seq = last_seq if last_seq is not None else (kept[-1].seq if kept else 0)
        self.stale = stale_before_answer
        self.subscribes: list[int] = []
        self.subscriber: Optional[asyncio.StreamWriter] = None
        self.writers: list[asyncio.StreamWriter] = []
        self.server: Optional[asyncio.AbstractServer] = None
        self.port = 0

    async def __aenter__(self) -> "ScriptedServer":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self.drop()
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    def client(self, **kw) -> rc.Client:
        return rc.Client("127.0.0.1", self.port, "scripted-admin-token", **kw)

    def raise_alert(self, a: wire.Alert) -> None:
        """A new alert: kept, and pushed to the subscribed connection."""
        self.kept.append(a)
        self.last_seq = a.seq
        if self.subscriber is not None:
            self.subscriber.write(wire.encode_frame(0, a, version=3))

    def drop(self) -> None:
        """Every connection breaks."""
        for w in self.writers:
            w.close()
        self.writers, self.subscriber = [], None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        version, buf = 1, b""
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                buf += data
                while (got := wire.decode_frame(buf, version=version)) is not None:
                    frame, used = got
                    buf = buf[used:]
                    msg, rid = frame.message, frame.request_id
                    if isinstance(msg, wire.Hello):
                        version = min(msg.max_version, self.version)
                        writer.write(wire.encode_frame(
                            rid, wire.HelloOk(version, 0, True, 1 << 20, 0, "scripted")))
                    elif isinstance(msg, wire.Ping):
                        writer.write(wire.encode_frame(rid, wire.Pong(), version=version))
                    elif isinstance(msg, wire.AlertSubscribe):
                        self.subscribes.append(msg.after)
                        if self.stale is not None:
                            writer.write(wire.encode_frame(0, self.stale, version=3))
                        oldest = self.kept[0].seq if self.kept else self.last_seq + 1
                        writer.write(wire.encode_frame(
                            rid, wire.AlertSubscribed(oldest, self.last_seq), version=3))
                        for a in self.kept:
                            if a.seq > msg.after or self.replay_all:
                                writer.write(wire.encode_frame(0, a, version=3))
                        self.subscriber = writer
        except (ConnectionError, OSError):
            return
        finally:
            writer.close()


async def take(stream: rc.client.AlertStream, n: int) -> list:
    """The next ``n`` alerts' seqs, failing the test rather than hanging."""
    out = []
    for _ in range(n):
        out.append((await asyncio.wait_for(stream.__anext__(), 5)).seq)
    return out


def run(coro):
    # A stream that never delivers fails the test instead of hanging the suite.
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_backlog_then_live_alerts_in_order():
    async def go():
        async with ScriptedServer([alert(1), alert(2, 100), alert(3)]) as srv:
            async with srv.client() as c:
                stream = c.alerts()
                first = await asyncio.wait_for(stream.__anext__(), 5)
                assert first == alert(1)
                assert await take(stream, 2) == [2, 3]
                assert stream.subscribed == wire.AlertSubscribed(1, 3) and stream.missed == 0
                srv.raise_alert(alert(4))
                assert await take(stream, 1) == [4] and stream.after == 4
                # Requests go on while subscribed.
                await c.ping()
                assert srv.subscribes == [0]
    run(go())


def test_async_for_reads_the_stream():
    async def go():
        async with ScriptedServer([alert(5), alert(6)], last_seq=6) as srv:
            async with srv.client() as c:
                seen = []
                async for a in c.alerts(after=5):
                    seen.append(a.seq)
                    if a.seq == 6:
                        srv.raise_alert(alert(7))
                    if a.seq == 7:
                        break
                assert seen == [6, 7] and srv.subscribes == [5]
    run(go())


def test_a_dropped_connection_resubscribes_from_the_last_alert_without_repeats():
    async def go():
        async with ScriptedServer([alert(s) for s in range(1, 6)]) as srv:
            async with srv.client() as c:
                stream = c.alerts()
                assert await take(stream, 2) == [1, 2]
                srv.drop()
                # What had arrived is read, then the stream subscribes again from 5.
                assert await take(stream, 3) == [3, 4, 5]
                srv.raise_alert(alert(6))
                assert await take(stream, 1) == [6]
                assert srv.subscribes == [0, 5]
                # Again, with nothing left unread: the server replays only what is after 6.
                srv.drop()
                await asyncio.sleep(0.05)
                srv.raise_alert(alert(7))  # raised while no one is subscribed: kept
                assert await take(stream, 1) == [7]
                assert srv.subscribes == [0, 5, 6]
    run(go())


def test_alerts_already_yielded_are_not_yielded_again():
    async def go():
        # A server that sends every kept alert on each subscription (at least once).
        async with ScriptedServer([alert(s) for s in range(1, 4)], replay_all=True) as srv:
            async with srv.client() as c:
                stream = c.alerts()
                assert await take(stream, 3) == [1, 2, 3]
                srv.drop()
                srv.raise_alert(alert(4))
                assert await take(stream, 1) == [4]
                assert srv.subscribes == [0, 3]
    run(go())


def test_alerts_no_longer_kept_are_counted_as_missed():
    async def go():
        async with ScriptedServer([alert(s) for s in range(50, 61)]) as srv:
            async with srv.client() as c:
                stream = c.alerts(after=10)
                assert await take(stream, 1) == [50]
                assert stream.missed == 39 and stream.subscribed.oldest_seq == 50
                assert await take(stream, 10) == list(range(51, 61))
    run(go())


def test_an_alert_before_the_subscription_answer_is_not_the_subscriptions():
    async def go():
        async with ScriptedServer([alert(1), alert(2)], stale_before_answer=alert(99)) as srv:
            async with srv.client() as c:
                stream = c.alerts()
                assert await take(stream, 2) == [1, 2]
                srv.raise_alert(alert(3))
                assert await take(stream, 1) == [3]
    run(go())


def test_a_full_queue_asks_again_from_the_last_alert_read():
    async def go():
        async with ScriptedServer([alert(s) for s in range(1, 11)]) as srv:
            async with srv.client() as c:
                stream = c.alerts(max_queued=3)
                # Ten arrive at once; three are held, the rest dropped and asked for again,
                # each time from the last alert read.
                assert await take(stream, 10) == list(range(1, 11))
                again = srv.subscribes[1:]
                assert srv.subscribes[0] == 0 and len(again) >= 3, srv.subscribes
                assert again == sorted(set(again)) and all(1 <= a < 10 for a in again)
                assert stream.missed == 0
    run(go())


def test_after_an_overflow_nothing_is_queued_out_of_order():
    async def go():
        async with ScriptedServer([alert(s) for s in range(1, 4)]) as srv:
            async with srv.client() as c:
                stream = c.alerts(max_queued=2)
                assert await take(stream, 1) == [1]  # 3 was dropped: the queue held 1, 2
                srv.raise_alert(alert(4))  # room again, but 3 must come first
                await asyncio.sleep(0.05)
                assert await take(stream, 3) == [2, 3, 4]
                assert srv.subscribes == [0, 2]
    run(go())


def test_a_sequence_that_went_back_starts_again_from_the_servers_newest():
    async def go():
        # A server restored from an older backup: its newest alert is 5, the client saw 100.
        async with ScriptedServer([alert(s) for s in range(1, 6)]) as srv:
            async with srv.client() as c:
                stream = c.alerts(after=100)
                later = asyncio.get_running_loop().call_later(0.2, srv.raise_alert, alert(6))
                assert await take(stream, 1) == [6]
                assert srv.subscribes == [100, 5] and stream.missed == 0
                later.cancel()
    run(go())


def test_a_new_stream_ends_the_previous_one_and_closing_the_client_ends_it():
    async def go():
        async with ScriptedServer([alert(1), alert(2)]) as srv:
            c = srv.client()
            first = c.alerts()
            assert await take(first, 1) == [1]
            second = c.alerts(after=1)
            assert await take(second, 1) == [2]
            with pytest.raises(StopAsyncIteration):
                await asyncio.wait_for(first.__anext__(), 5)
            await c.close()
            with pytest.raises(StopAsyncIteration):
                await asyncio.wait_for(second.__anext__(), 5)
    run(go())


def test_aclose_stops_the_stream():
    async def go():
        async with ScriptedServer([alert(1)]) as srv:
            async with srv.client() as c:
                stream = c.alerts()
                assert await take(stream, 1) == [1]
                waiting = asyncio.ensure_future(stream.__anext__())
                await asyncio.sleep(0.05)
                await stream.aclose()
                with pytest.raises(StopAsyncIteration):
                    await asyncio.wait_for(waiting, 5)
                srv.raise_alert(alert(2))  # dropped by the client: no stream
                await c.ping()
    run(go())


def test_an_older_connection_cannot_subscribe():
    async def go():
        async with ScriptedServer([alert(1)], version=2) as srv:
            async with srv.client() as c:
                assert c.hello.version == 2
                with pytest.raises(wire.EncodeError, match="needs protocol version 3"):
                    await c.alerts().__anext__()
                assert srv.subscribes == []
    run(go())


def test_bad_arguments_are_refused():
    c = rc.Client("127.0.0.1", 1, "x")
    for after in (-1, 1 << 64, "0"):
        with pytest.raises(ValueError):
            c.alerts(after=after)
    with pytest.raises(ValueError):
        c.alerts(max_queued=0)
