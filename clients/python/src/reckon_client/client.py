"""An asyncio client for Reckon's native protocol.

One ``Client`` holds one connection and pipelines every call on it (SPEC
5.4): each request gets a fresh request id, answers are matched by id in
whatever order they come. Every call has a timeout. When the connection
drops, calls in flight fail with ``ConnectionLost`` unless retries are on
(the default): then the client reconnects with backoff and resends the same
request (same op id, or same session id and request number), which the server
applies at most once (SPEC 5.6). ``BUSY`` and ``TOO_BUSY`` are retried the
same way.

The client offers protocol versions 1 to 3 and speaks what the server
chooses; version 2 carries per-request attributes (``attributes=`` on the
credit-control methods: model, region, ... that rate-card rules match);
version 3 carries spend controls with periods, soft caps and alert thresholds
(``set_limit``, ``Balance.limits``), on each refused CCA service which control
refused it (``ServiceAnswer.denial``), and the alerts the server pushes when a
control's usage reaches a threshold (``async for alert in client.alerts()``).
Optional parameters of every method are keyword-only, so new ones can be
added without breaking callers.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from decimal import Decimal
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

from . import wire
from .codes import AdminCode, ErrorCode, ResultCode
from .errors import (ConnectionLost, ProtocolViolation, ReckonError, RequestTimeout,
                     ServerError, admin_error, credit_control_error, server_error)

log = logging.getLogger("reckon_client")

Number = Union[Decimal, int]
"""An exact amount: a Decimal or an int; floats are refused."""

UnitAmounts = Union[Mapping[str, Number], Iterable[tuple]]
"""Amounts per unit: ``{"tokens_out": 4096}`` or ``[("tokens_out", Decimal(4096))]``."""

CLIENT_NAME = "reckon-client-python/0.1.0"
_RETRY_START_S = 0.01
_RETRY_MAX_S = 1.0


def new_op_id() -> int:
    """A fresh random non-zero 128-bit op id (SPEC 8.1)."""
    return uuid.uuid4().int or 1


def _amounts(value: Optional[UnitAmounts], what: str) -> list:
    if value is None:
        return []
    items = value.items() if isinstance(value, Mapping) else value
    out = []
    for unit, amount in items:
        if isinstance(amount, bool) or not isinstance(amount, (Decimal, int)):
            raise TypeError(f"{what}[{unit!r}]: {amount!r} must be a Decimal or int, never a float")
        out.append((unit, Decimal(amount)))
    return out


def _services(requested: Optional[Mapping[int, UnitAmounts]] = None,
              used: Optional[Mapping[int, UnitAmounts]] = None) -> list:
    ids: list[int] = []
    for m in (requested or {}), (used or {}):
        ids += [s for s in m if s not in ids]
    return [wire.ServiceRequest(s, _amounts((requested or {}).get(s), "requested"),
                                _amounts((used or {}).get(s), "used")) for s in ids]


Attributes = Optional[Union[Mapping[str, str], Iterable[tuple[str, str]]]]


def _attributes(value: Attributes) -> list:
    """Request attributes as the wire's list of (key, value) pairs."""
    if not value:
        return []
    items = value.items() if isinstance(value, Mapping) else value
    return [(str(k), str(v)) for k, v in items]


class _AlertSink:
    """Where a connection's pushed ALERTs go: nowhere until the ALERT_SUBSCRIBED answering
    request ``rid`` has been read (earlier ones belong to a replaced subscription, SPEC 6.11),
    then into a queue of at most ``limit`` alerts; beyond it alerts are dropped and the stream
    asks again from the last one it delivered, so memory stays bounded and nothing is lost
    while the server keeps it."""

    def __init__(self, rid: int, limit: int) -> None:
        self.rid, self.limit = rid, limit
        self.armed = False
        self.overflow = False
        self.lost: Optional[BaseException] = None
        self.queue: asyncio.Queue = asyncio.Queue()

    def push(self, alert: Any) -> None:
        if not self.armed or self.overflow or self.lost is not None:
            return
        if self.queue.qsize() >= self.limit:
            self.overflow = True
            return
        self.queue.put_nowait(alert)

    def close(self, error: BaseException) -> None:
        if self.lost is None:
            self.lost = error
            self.queue.put_nowait(error)  # wakes the stream's reader


class _Connection:
    """One open, authenticated connection and its in-flight requests."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.pending: dict[int, asyncio.Future] = {}
        self.max_frame = wire.DEFAULT_MAX_FRAME
        self.version = wire.PROTOCOL_VERSION_MIN
        self.keepalive_s = 0
        self.hello: Optional[wire.HelloOk] = None
        self.closed = False
        self.draining = False  # the server said SHUTTING_DOWN: send nothing new
        self.task: Optional[asyncio.Task] = None
        self.last_rx = time.monotonic()
        self.alerts: Optional[_AlertSink] = None  # the connection's alert subscription

    def usable(self) -> bool:
        return not self.closed and not self.draining

    def send(self, request_id: int, message: Any) -> None:
        self.writer.write(wire.encode_frame(request_id, message, self.max_frame, self.version))

    def fail(self, error: BaseException) -> None:
        """Closes the connection and fails what is in flight."""
        if not self.closed:
            self.closed = True
            try:
                self.writer.close()
            except Exception:  # the transport may already be gone
                pass
        pending, self.pending = self.pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(error)
        if self.alerts is not None:
            self.alerts.close(error)


class Client:
    """An asyncio Reckon client: pipelining, BATCH, timeouts, reconnect."""

    def __init__(self, host: str = "127.0.0.1", port: int = 7878, credential: str = "", *,
                 client_name: str = CLIENT_NAME, timeout: float = 5.0,
                 connect_timeout: Optional[float] = None, retry: bool = True,
                 max_in_flight: int = 1024, max_version: int = wire.PROTOCOL_VERSION) -> None:
        self.host, self.port, self.credential = host, port, credential
        self.client_name = client_name
        self.timeout = timeout
        self.connect_timeout = connect_timeout if connect_timeout is not None else timeout
        self.retry = retry
        self._conn: Optional[_Connection] = None
        self._connect_lock: Optional[asyncio.Lock] = None
        self._slots: Optional[asyncio.Semaphore] = None
        self._max_in_flight = max_in_flight
        # The highest version offered in HELLO (1: behave as a version-1 client).
        self.max_version = max_version
        self._next_id = 0
        self._closed = False
        self._alert_stream: Optional[AlertStream] = None  # the one that owns the subscription

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> "Client":
        await self.connect()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    @property
    def hello(self) -> Optional[wire.HelloOk]:
        """The HELLO_OK of the current connection (org, role, limits), if connected."""
        return self._conn.hello if self._conn else None

    async def connect(self) -> wire.HelloOk:
        """Opens and authenticates the connection now (calls do it lazily otherwise)."""
        conn = await asyncio.wait_for(self._ensure(), self.connect_timeout)
        assert conn.hello is not None
        return conn.hello

    async def close(self) -> None:
        """Closes the connection; calls in flight fail with ConnectionLost."""
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.fail(ConnectionLost("client closed"))
            if conn.task is not None:
                conn.task.cancel()
                try:
                    await conn.task
                except (asyncio.CancelledError, Exception):
                    pass

    def _request_id(self) -> int:
        self._next_id = self._next_id + 1 if self._next_id < (1 << 64) - 1 else 1
        return self._next_id

    async def _ensure(self) -> _Connection:
        conn = self._conn
        if conn is not None and conn.usable():
            return conn
        if self._closed:
            raise ConnectionLost("client closed")
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            conn = self._conn
            if conn is not None and conn.usable():
                return conn
            self._conn = await self._open()
            return self._conn

    async def _open(self) -> _Connection:
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError as e:
            raise ConnectionLost(f"connecting to {self.host}:{self.port}: {e}") from e
        conn = _Connection(reader, writer)
        hello = wire.Hello(wire.PROTOCOL_VERSION_MIN, self.max_version, self.credential,
                           self.client_name)
        writer.write(wire.encode_frame(self._request_id(), hello))
        buf = b""
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionLost("server closed the connection during the handshake")
                buf += data
                got = wire.decode_frame(buf)
                if got is not None:
                    break
        except wire.WireError as e:
            writer.close()
            raise ProtocolViolation(f"handshake answer: {e}") from e
        except BaseException:
            writer.close()
            raise
        frame, used = got
        msg = frame.message
        if isinstance(msg, wire.ErrorReply):
            writer.close()
            raise server_error(msg.code, msg.message)
        if (not isinstance(msg, wire.HelloOk)
                or not wire.PROTOCOL_VERSION_MIN <= msg.version <= self.max_version):
            writer.close()
            raise ProtocolViolation(
                f"expected HELLO_OK for a version in 1..={self.max_version}, got {msg!r}")
        conn.hello = msg
        conn.version = msg.version
        conn.max_frame = msg.max_frame
        conn.keepalive_s = msg.keepalive_s
        conn.task = asyncio.get_running_loop().create_task(self._read_loop(conn, buf[used:]))
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._max_in_flight)
        return conn

    async def _read_loop(self, conn: _Connection, buf: bytes) -> None:
        error: BaseException = ConnectionLost("server closed the connection")
        try:
            while True:
                while True:
                    try:
                        got = wire.decode_frame(buf, conn.max_frame, conn.version)
                    except wire.WireError as e:
                        # SPEC 3.2: a client receiving a malformed frame closes.
                        error = ProtocolViolation(f"malformed frame from the server: {e}")
                        return
                    if got is None:
                        break
                    frame, used = got
                    buf = buf[used:]
                    conn.last_rx = time.monotonic()
                    self._dispatch(conn, frame)
                    if conn.closed:
                        return
                data = await self._read_some(conn)
                if not data:
                    return
                buf += data
        except (OSError, asyncio.IncompleteReadError) as e:
            error = ConnectionLost(f"connection error: {e}")
        except ReckonError as e:
            error = e
        finally:
            conn.fail(error)
            if self._conn is conn:
                self._conn = None

    async def _read_some(self, conn: _Connection) -> bytes:
        """Reads more bytes; with keepalive on, pings a silent server and drops a dead one."""
        k = conn.keepalive_s
        if k == 0:
            return await conn.reader.read(65536)
        while True:
            try:
                return await asyncio.wait_for(conn.reader.read(65536), k)
            except asyncio.TimeoutError:
                silent = time.monotonic() - conn.last_rx
                if silent >= 3 * k:
                    raise ConnectionLost(f"no frame from the server for {silent:.0f} s") from None
                conn.send(self._request_id(), wire.Ping())

    def _dispatch(self, conn: _Connection, frame: wire.Frame) -> None:
        msg = frame.message
        if isinstance(msg, wire.Ping):
            conn.send(frame.request_id, wire.Pong())
            return
        if frame.request_id == 0:
            if isinstance(msg, wire.Alert):
                if conn.alerts is not None:
                    conn.alerts.push(msg)
                return
            if isinstance(msg, wire.ErrorReply) and msg.code == ErrorCode.SHUTTING_DOWN:
                conn.draining = True  # pending answers still come; new calls reconnect
                return
            if isinstance(msg, wire.ErrorReply):
                conn.fail(server_error(msg.code, msg.message))
            return
        if (isinstance(msg, wire.AlertSubscribed) and conn.alerts is not None
                and conn.alerts.rid == frame.request_id):
            # Armed here, in read order: every ALERT after this answer is the subscription's.
            conn.alerts.armed = True
        fut = conn.pending.pop(frame.request_id, None)
        if fut is None or fut.done():
            return  # a late answer to a call that timed out, or our keepalive PONG
        if isinstance(msg, wire.ErrorReply):
            fut.set_exception(server_error(msg.code, msg.message))
        else:
            fut.set_result(msg)

    # ------------------------------------------------------------------ requests

    async def request(self, message: Any, *, timeout: Optional[float] = None,
                      retry: Optional[bool] = None,
                      _before_send: Optional[Callable[[_Connection, int], None]] = None) -> Any:
        """Sends one request frame and returns its answer message.

        ERROR answers raise a ``ServerError`` subclass. Every request of
        version 1 is safe to resend as it is, so with ``retry`` a dropped
        connection or BUSY is retried until the timeout.
        """
        timeout = self.timeout if timeout is None else timeout
        retry = self.retry if retry is None else retry
        deadline = time.monotonic() + timeout
        delay = _RETRY_START_S
        last: Optional[BaseException] = None
        while True:
            if last is not None and time.monotonic() >= deadline:
                raise RequestTimeout(f"no answer within {timeout} s (last: {last})") from last
            try:
                answer = await self._once(message, deadline, _before_send)
                if (retry and isinstance(answer, wire.Cca)
                        and answer.result_code == ResultCode.TOO_BUSY):
                    raise credit_control_error(answer.result_code, answer)
                return answer
            except RequestTimeout:
                raise
            except ReckonError as e:
                busy = isinstance(e, ServerError) and e.code == ErrorCode.BUSY
                too_busy = getattr(e, "result_code", None) == ResultCode.TOO_BUSY
                dropped = isinstance(e, ConnectionLost) and not self._closed
                if not retry or not (busy or too_busy or dropped):
                    raise
                last = e
                left = max(deadline - time.monotonic(), 0.0)
                pause = min(delay * random.uniform(0.5, 1.0), left)
                log.debug("retrying %s in %.3f s after %s", type(message).__name__, pause, e)
                await asyncio.sleep(pause)
                delay = min(delay * 2, _RETRY_MAX_S)

    async def _once(self, message: Any, deadline: float,
                    before_send: Optional[Callable[[_Connection, int], None]] = None) -> Any:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RequestTimeout("timed out before sending")
        try:
            conn = await asyncio.wait_for(self._ensure(), left)
        except asyncio.TimeoutError:
            raise RequestTimeout(f"could not connect to {self.host}:{self.port} in time") from None
        assert self._slots is not None
        rid = self._request_id()
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(self._slots.acquire(), max(deadline - time.monotonic(), 0))
        except asyncio.TimeoutError:
            raise RequestTimeout("too many requests in flight") from None
        try:
            if not conn.usable():
                raise ConnectionLost("connection closed")
            if before_send is not None:
                before_send(conn, rid)
            conn.pending[rid] = fut
            conn.send(rid, message)
            try:
                return await asyncio.wait_for(fut, max(deadline - time.monotonic(), 0))
            except asyncio.TimeoutError:
                conn.pending.pop(rid, None)
                raise RequestTimeout(
                    f"no answer to {type(message).__name__} within the timeout") from None
        finally:
            self._slots.release()

    async def batch(self, messages: Sequence[Any], *, timeout: Optional[float] = None) -> list:
        """Sends CCRs and admin requests in BATCH frames (1024 entries each) and returns
        their answers in order (CCA, ADMIN_RESULT, BALANCE, RESERVATIONS or ErrorReply).

        An entry answered FRAME_TOO_LARGE (applied, answer too big to fit) is resent
        alone with the same ids, which returns its answer without applying it twice.
        """
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        chunks = [list(messages[i:i + wire.BATCH_MAX])
                  for i in range(0, len(messages), wire.BATCH_MAX)]
        results = await asyncio.gather(*(
            self.request(wire.Batch(chunk), timeout=max(deadline - time.monotonic(), 0.001))
            for chunk in chunks))
        out: list = []
        for chunk, result in zip(chunks, results):
            if not isinstance(result, wire.BatchResult) or len(result.entries) != len(chunk):
                raise ProtocolViolation(f"BATCH of {len(chunk)} answered by {result!r}")
            out += result.entries
        for i, answer in enumerate(out):
            if isinstance(answer, wire.ErrorReply) and answer.code == ErrorCode.FRAME_TOO_LARGE:
                try:
                    out[i] = await self.request(messages[i],
                                                timeout=max(deadline - time.monotonic(), 0.001))
                except ServerError as e:
                    out[i] = wire.ErrorReply(e.code, e.message)
        return out

    async def ping(self, *, timeout: Optional[float] = None) -> float:
        """Round trip of a PING, in seconds."""
        start = time.monotonic()
        await self.request(wire.Ping(), timeout=timeout)
        return time.monotonic() - start

    # ------------------------------------------------------------------ credit control

    async def ccr(self, ccr: wire.Ccr, *, check: bool = True,
                  timeout: Optional[float] = None) -> wire.Cca:
        """Sends a CCR. With ``check``, a request-level result other than SUCCESS raises
        the matching ``CreditControlError`` (e.g. ``CreditLimitReached``); per-service
        results are in ``cca.services``."""
        answer = await self.request(ccr, timeout=timeout)
        if not isinstance(answer, wire.Cca):
            raise ProtocolViolation(f"CCR answered by {answer!r}")
        if check and answer.result_code != ResultCode.SUCCESS:
            raise credit_control_error(answer.result_code, answer)
        return answer

    async def initial(self, session_id: str, account: int,
                      requested: Mapping[int, UnitAmounts], *, timestamp_ms: int = 0,
                      attributes: Attributes = None, check: bool = True,
                      timeout: Optional[float] = None) -> wire.Cca:
        """INITIAL: opens a session, reserving per service ``{service_id: {unit: amount}}``
        (an empty amounts mapping asks for the service's default grant). ``attributes``
        (``{"model": "gpt-4o"}``) choose the rate-card rule; send the same ones on every
        request of the session."""
        return await self.ccr(wire.Ccr(session_id, wire.RequestType.INITIAL, 0, account,
                                       timestamp_ms=timestamp_ms,
                                       services=_services(requested=requested),
                                       attributes=_attributes(attributes)),
                              check=check, timeout=timeout)

    async def update(self, session_id: str, account: int, request_number: int, *,
                     used: Optional[Mapping[int, UnitAmounts]] = None,
                     requested: Optional[Mapping[int, UnitAmounts]] = None,
                     timestamp_ms: int = 0, attributes: Attributes = None,
                     check: bool = True, timeout: Optional[float] = None) -> wire.Cca:
        """UPDATE: reports usage since the last report and asks for a new grant."""
        return await self.ccr(wire.Ccr(session_id, wire.RequestType.UPDATE, request_number,
                                       account, timestamp_ms=timestamp_ms,
                                       services=_services(requested, used),
                                       attributes=_attributes(attributes)),
                              check=check, timeout=timeout)

    async def terminate(self, session_id: str, account: int, request_number: int,
                        used: Mapping[int, UnitAmounts], *,
                        cause: wire.TerminationCause = wire.TerminationCause.LOGOUT,
                        timestamp_ms: int = 0, attributes: Attributes = None,
                        check: bool = True, timeout: Optional[float] = None) -> wire.Cca:
        """TERMINATE: commits the final usage per service and releases the rest.
        ``used={service: {}}`` (nothing used) releases the whole grant."""
        return await self.ccr(wire.Ccr(session_id, wire.RequestType.TERMINATE, request_number,
                                       account, termination_cause=cause,
                                       timestamp_ms=timestamp_ms, services=_services(used=used),
                                       attributes=_attributes(attributes)),
                              check=check, timeout=timeout)

    async def event(self, session_id: str, account: int, action: wire.EventAction,
                    requested: Optional[Mapping[int, UnitAmounts]] = None, *,
                    timestamp_ms: int = 0, attributes: Attributes = None,
                    check: bool = True, timeout: Optional[float] = None) -> wire.Cca:
        """EVENT: DIRECT_DEBIT, REFUND, CHECK_BALANCE or PRICE_ENQUIRY in one request."""
        return await self.ccr(wire.Ccr(session_id, wire.RequestType.EVENT, 0, account,
                                       event_action=action, timestamp_ms=timestamp_ms,
                                       services=_services(requested=requested),
                                       attributes=_attributes(attributes)),
                              check=check, timeout=timeout)

    async def check_balance(self, session_id: str, account: int, *,
                            timeout: Optional[float] = None) -> dict:
        """Available balance per unit, as the account may spend it now."""
        cca = await self.event(session_id, account, wire.EventAction.CHECK_BALANCE,
                               timeout=timeout)
        return dict(cca.balance)

    async def price(self, session_id: str, account: int, requested: Mapping[int, UnitAmounts],
                    *, attributes: Attributes = None, timeout: Optional[float] = None) -> dict:
        """The price of ``requested`` per charge unit (for these attributes), changing nothing."""
        cca = await self.event(session_id, account, wire.EventAction.PRICE_ENQUIRY, requested,
                               attributes=attributes, timeout=timeout)
        return dict(cca.price)

    # ------------------------------------------------------------------ admin

    async def admin(self, message: Any, *, timeout: Optional[float] = None) -> Any:
        """Sends an admin request; a failure code raises the matching ``AdminError``."""
        answer = await self.request(message, timeout=timeout)
        if isinstance(answer, wire.AdminResult) and answer.code != AdminCode.OK:
            raise admin_error(answer.code, answer)
        if isinstance(answer, wire.RateCardResult) and answer.code != AdminCode.OK:
            raise admin_error(answer.code, answer, answer.message)
        return answer

    async def create_account(self, account: int, *, parent: Optional[int] = None,
                             draws_on_parent: bool = False, op_id: Optional[int] = None,
                             timeout: Optional[float] = None) -> wire.AdminResult:
        """ACCOUNT_CREATE: a root (organisation) account, or one below ``parent``."""
        return await self.admin(wire.AccountCreate(op_id or new_op_id(), account, parent,
                                                   draws_on_parent), timeout=timeout)

    async def set_status(self, account: int, status: wire.AccountStatus, *,
                         op_id: Optional[int] = None,
                         timeout: Optional[float] = None) -> wire.AdminResult:
        """ACCOUNT_STATUS: suspend, re-activate or close an account."""
        return await self.admin(wire.AccountStatusChange(op_id or new_op_id(), account,
                                                         wire.AccountStatus(status)),
                                timeout=timeout)

    async def topup(self, account: int, unit: str, amount: Number, *,
                    bucket: Optional[int] = None, refund: bool = False, reason: str = "",
                    op_id: Optional[int] = None,
                    timeout: Optional[float] = None) -> wire.AdminResult:
        """TOPUP: credits ``amount`` of ``unit``; the result names the bucket and its amount."""
        (_, exact), = _amounts({unit: amount}, "amount")
        kind = wire.CreditKind.REFUND if refund else wire.CreditKind.TOP_UP
        return await self.admin(wire.TopUp(op_id or new_op_id(), account, unit, exact, bucket,
                                           kind, reason), timeout=timeout)

    async def adjust(self, account: int, bucket: int, delta: Number, *, reason: str = "",
                     op_id: Optional[int] = None,
                     timeout: Optional[float] = None) -> wire.AdminResult:
        """ADJUST: changes a bucket by a signed amount."""
        (_, exact), = _amounts({"x": delta}, "delta")
        return await self.admin(wire.Adjust(op_id or new_op_id(), account, bucket, exact, reason),
                                timeout=timeout)

    async def grant_bucket(self, account: int, unit: str, amount: Number, *,
                           valid_from_ms: int = 0, valid_until_ms: int = wire.NEVER,
                           priority: int = 0, credit_limit: Number = 0,
                           services: Sequence[int] = (), op_id: Optional[int] = None,
                           timeout: Optional[float] = None) -> wire.AdminResult:
        """BUCKET_GRANT: a bucket with its own validity, priority, overdraft and services."""
        (_, exact), (_, limit) = _amounts([(unit, amount), (unit, credit_limit)], "amount")
        return await self.admin(wire.BucketGrant(op_id or new_op_id(), account, unit, exact,
                                                 valid_from_ms, valid_until_ms, priority, limit,
                                                 list(services)), timeout=timeout)

    async def set_limit(self, account: int, unit: str, cap: Optional[Number], *,
                        period: Optional[wire.LimitPeriod] = None, soft: bool = False,
                        alerts: Sequence[int] = (), op_id: Optional[int] = None,
                        timeout: Optional[float] = None) -> wire.AdminResult:
        """LIMIT_SET: caps what the account's subtree may hold plus spend in ``unit``; an
        account has one such control per unit and period kind, and ``cap=None`` removes the
        one of ``period``'s kind. ``period`` (e.g. ``wire.LimitPeriod.months(1, anchor_ms,
        offset_min)``; default: lifetime) makes it a budget that starts again each period,
        ``soft`` one that is reported but never refuses, and ``alerts`` (percents of the cap,
        e.g. ``[80, 100]``) raise an alert when the period's usage reaches them (see
        ``alerts()``); all three need protocol version 3 (an older connection raises
        ``wire.EncodeError``)."""
        exact = None if cap is None else _amounts({unit: cap}, "cap")[0][1]
        return await self.admin(wire.LimitSet(op_id or new_op_id(), account, unit, exact,
                                              period or wire.LimitPeriod(), soft, list(alerts)),
                                timeout=timeout)

    async def balance(self, account: int, *, timeout: Optional[float] = None) -> wire.Balance:
        """BALANCE_QUERY: the account's status and buckets (amount, held, available)."""
        answer = await self.admin(wire.BalanceQuery(account), timeout=timeout)
        if not isinstance(answer, wire.Balance):
            raise ProtocolViolation(f"BALANCE_QUERY answered by {answer!r}")
        return answer

    async def reservations(self, account: int, *, after: int = 0, limit: int = 0,
                           timeout: Optional[float] = None) -> wire.Reservations:
        """RESERVATION_LIST: one page of the account's open reservations."""
        answer = await self.admin(wire.ReservationList(account, after, limit), timeout=timeout)
        if not isinstance(answer, wire.Reservations):
            raise ProtocolViolation(f"RESERVATION_LIST answered by {answer!r}")
        return answer

    async def apply_ratecard(self, name: str, text: str, *, op_id: Optional[int] = None,
                             timeout: Optional[float] = None) -> wire.RateCardResult:
        """RATECARD_APPLY: validates and activates a rate card file (TOML, or JSON)."""
        return await self.admin(wire.RateCardApply(op_id or new_op_id(), name, text),
                                timeout=timeout)

    async def ratecards(self, card: str = "", *,
                        timeout: Optional[float] = None) -> wire.RateCards:
        """RATECARD_SHOW: the rate cards and their versions."""
        return await self.admin(wire.RateCardShow(card), timeout=timeout)

    # ------------------------------------------------------------------ alerts

    def alerts(self, after: int = 0, *, max_queued: int = wire.ALERT_QUEUE_MAX,
               timeout: Optional[float] = None) -> "AlertStream":
        """The spend-control alerts the server raises (version 3, SPEC 6.11), as an async
        iterator: ``async for alert in client.alerts(after=last_seen): ...``.

        It yields every alert with ``seq`` > ``after`` that the server still keeps, then each
        new one as it is raised, in ``seq`` order and each once. When the connection drops it
        reconnects and subscribes again from the last alert it yielded (``stream.after``); keep
        that number to resume after a restart. Alerts the server no longer kept are counted in
        ``stream.missed``. At most ``max_queued`` alerts wait unread in memory; beyond that the
        stream asks the server again from the last one read. An admin credential gets every
        alert, an organisation's only those on its own accounts. The subscription belongs to
        the connection, so a client has one stream at a time: a new one ends the previous one.
        If the server stays unreachable for ``timeout`` the iteration raises
        ``RequestTimeout``; resume with ``client.alerts(after=stream.after)``."""
        return AlertStream(self, after, max_queued, timeout)


class AlertStream:
    """An async iterator over pushed alerts: see ``Client.alerts``."""

    def __init__(self, client: Client, after: int, max_queued: int,
                 timeout: Optional[float]) -> None:
        if not isinstance(after, int) or not 0 <= after < 1 << 64:
            raise ValueError(f"after: {after!r} is not a u64")
        if max_queued < 1:
            raise ValueError("max_queued must be at least 1")
        self.after = after
        """The ``seq`` of the last alert yielded (or the ``after`` it started from)."""
        self.missed = 0
        """Alerts the server no longer kept when this stream (re)subscribed, by server-wide
        ``seq`` (an organisation's share of them may be fewer)."""
        self.subscribed: Optional[wire.AlertSubscribed] = None
        """The last ALERT_SUBSCRIBED: what the server kept then."""
        self._client, self._max_queued, self._timeout = client, max_queued, timeout
        self._sink: Optional[_AlertSink] = None
        self._closed = False

    def __aiter__(self) -> "AlertStream":
        return self

    async def __anext__(self) -> wire.Alert:
        while True:
            if self._closed or self._client._closed:
                raise StopAsyncIteration
            sink = self._sink
            if sink is None or (sink.overflow and sink.queue.empty()):
                await self._subscribe()
                continue
            item = await sink.queue.get()
            if isinstance(item, BaseException):
                self._sink = None  # the connection dropped: subscribe again on a new one
                continue
            if item.seq <= self.after:
                continue  # sent again after a resubscription: already yielded
            self.after = item.seq
            return item

    async def _subscribe(self) -> None:
        client = self._client

        def attach(conn: _Connection, rid: int) -> None:
            need = wire.KIND_SINCE[wire.Kind.ALERT_SUBSCRIBE]
            if conn.version < need:
                raise wire.EncodeError(f"ALERT_SUBSCRIBE needs protocol version {need}; "
                                       f"the connection speaks {conn.version}")
            previous = client._alert_stream
            if previous is not None and previous is not self:
                previous._end()  # the server replaces the subscription: the old stream ends
            client._alert_stream = self
            sink = _AlertSink(rid, self._max_queued)
            conn.alerts = sink
            self._sink = sink

        while True:
            answer = await client.request(wire.AlertSubscribe(self.after), timeout=self._timeout,
                                          _before_send=attach)
            if not isinstance(answer, wire.AlertSubscribed):
                raise ProtocolViolation(f"ALERT_SUBSCRIBE answered by {answer!r}")
            self.subscribed = answer
            if answer.last_seq < self.after:
                # The server's sequence went back (restored from a backup): numbers up to
                # `after` will be reused, so start again from its newest (SPEC 6.11).
                log.warning("alert sequence went back from %d to %d; resubscribing",
                            self.after, answer.last_seq)
                self.after = answer.last_seq
                continue
            missed = answer.missed(self.after)
            if missed:
                log.warning("alerts %d..=%d are no longer kept by the server",
                            self.after + 1, answer.oldest_seq - 1)
                self.missed += missed
            return

    async def aclose(self) -> None:
        """Stops the stream; alerts the server still pushes on the connection are dropped."""
        self._end()

    def _end(self) -> None:
        self._closed = True
        if self._client._alert_stream is self:
            self._client._alert_stream = None
        sink, self._sink = self._sink, None
        conn = self._client._conn
        if sink is not None and conn is not None and conn.alerts is sink:
            conn.alerts = None
        if sink is not None:
            sink.close(ConnectionLost("alert stream closed"))  # wakes a reader waiting on it
