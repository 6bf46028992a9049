"""The asyncio client and the sync facade against the real `reckon serve`."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from decimal import Decimal

import pytest

import reckon_client as rc
from reckon_client import wire
from reckon_server import ADMIN_TOKEN, ReckonServer, free_port

from conftest import ORG_TOKEN

_ids = itertools.count(100_000)


def fresh_account() -> int:
    """A new account id per test, so tests sharing the module server never collide."""
    return next(_ids) * 10


def run(coro):
    return asyncio.run(coro)


def admin(server, **kw) -> rc.Client:
    return rc.Client("127.0.0.1", server.port, ADMIN_TOKEN, **kw)


def test_handshake_names_org_and_role(server):
    async def go():
        async with admin(server) as c:
            assert c.hello.is_admin and c.hello.org_id == 0
            assert c.hello.version == wire.PROTOCOL_VERSION == 3
        async with rc.Client("127.0.0.1", server.port, ORG_TOKEN) as c:
            assert not c.hello.is_admin and c.hello.org_id == 7000
        with pytest.raises(rc.errors.AuthFailed) as e:
            await rc.Client("127.0.0.1", server.port, "wrong").connect()
        assert e.value.code == rc.ErrorCode.AUTH_FAILED and "AUTH_FAILED" in str(e.value)
    run(go())


def test_attributes_travel_in_version_2_and_a_version_1_client_cannot_send_them(server):
    org = fresh_account()

    async def go():
        async with admin(server) as c:
            await c.create_account(org)
            await c.topup(org, "tokens_out", Decimal("100"))
            cca = await c.event("attr-1", org, wire.EventAction.DIRECT_DEBIT, {1: {"tokens_out": 5}},
                                attributes={"model": "gpt-4o", "region": "eu"})
            assert cca.service(1).granted == [("tokens_out", Decimal(5))]
            # The same ids with other attributes are another request: refused, nothing moved.
            with pytest.raises(rc.errors.RequestIdReused) as e:
                await c.event("attr-1", org, wire.EventAction.DIRECT_DEBIT,
                              {1: {"tokens_out": 5}}, attributes={"model": "mini"})
            assert e.value.code_name == "REQUEST_ID_REUSED"
            # Beyond the limits: refused before anything is sent.
            with pytest.raises(wire.EncodeError):
                await c.event("attr-2", org, wire.EventAction.DIRECT_DEBIT,
                              {1: {"tokens_out": 5}}, attributes={f"k{i}": "v" for i in range(9)})
            assert (await c.balance(org)).total("tokens_out") == Decimal(95)
        async with admin(server, max_version=1) as old:
            assert old.hello.version == 1
            with pytest.raises(wire.EncodeError):
                await old.event("attr-3", org, wire.EventAction.DIRECT_DEBIT,
                                {1: {"tokens_out": 5}}, attributes={"model": "mini"})
            await old.event("attr-4", org, wire.EventAction.DIRECT_DEBIT, {1: {"tokens_out": 5}})
            assert (await old.balance(org)).total("tokens_out") == Decimal(90)
    run(go())


def test_version_3_is_spoken_and_an_older_connection_cannot_send_a_period(server):
    org = fresh_account()
    monthly = wire.LimitPeriod.months(1, 1_767_222_000_000, offset_min=60)

    async def go():
        async with admin(server) as c:
            assert c.hello.version == 3
            await c.create_account(org)
            r = await c.set_limit(org, "USD", Decimal("500.00"))
            assert r.code == 0 and r.balance == Decimal("500.00")
            r = await c.set_limit(org, "USD", Decimal("500.00"), alerts=[80, 100])
            assert r.code == 0
            with pytest.raises(wire.EncodeError, match="increasing"):
                await c.set_limit(org, "USD", Decimal("500.00"), alerts=[100, 80])
            bal = await c.balance(org)
            assert bal.account == org and isinstance(bal.limits, list)
        # A version-2 client refuses, before sending, what only version 3 can say.
        async with admin(server, max_version=2) as old:
            assert old.hello.version == 2
            for kw in ({"period": monthly}, {"soft": True}, {"alerts": [80, 100]}):
                with pytest.raises(wire.EncodeError, match="needs protocol version 3"):
                    await old.set_limit(org, "USD", Decimal("100"), **kw)
            assert (await old.balance(org)).limits == []
            r = await old.set_limit(org, "USD", None)
            assert r.code == 0 and r.balance == 0
    run(go())


def test_alerts_are_pushed_by_the_server_in_order_per_organisation_and_resumed(server):
    other = fresh_account()  # an organisation of its own
    dept = fresh_account()  # a department of organisation 7000, ORG_TOKEN's

    async def spend(c, account, n):
        # 250,000 output tokens at 0.00002 USD: 5.00 USD, half the 10 USD budget.
        await c.event(f"alert;{account};{n}", account, wire.EventAction.DIRECT_DEBIT,
                      {10: {"tokens_out": 250_000}})

    async def of(stream, account, n):
        """The next n alerts on ``account``; returns them and every alert read."""
        mine, seen = [], []
        while len(mine) < n:
            a = await asyncio.wait_for(stream.__anext__(), 10)
            seen.append(a)
            if a.account == account:
                mine.append(a)
        return mine, seen

    async def go():
        async with admin(server) as c:
            try:
                await c.create_account(7000)
            except rc.errors.AccountExists:
                pass
            await c.create_account(other)
            await c.create_account(dept, parent=7000)
            for account in (other, dept):
                await c.topup(account, "USD", Decimal(100))
                await c.set_limit(account, "USD", Decimal(10), alerts=[50, 100])
            assert (await c.balance(other)).limit("USD", 0).alerts == [50, 100]
            await spend(c, other, 1)
            await spend(c, other, 2)
            await spend(c, dept, 1)

            async with admin(server) as watcher:
                stream = watcher.alerts()  # after 0: the backlog first
                (half, full), _ = await of(stream, other, 2)
                assert (half.threshold_pct, half.used, half.cap) == (50, Decimal(5), Decimal(10))
                assert (full.threshold_pct, full.used) == (100, Decimal(10))
                assert half.seq < full.seq and half.unit == "USD"
                assert half.period_kind == 0 and half.period_start_ms == 0 and not half.soft
                assert stream.subscribed.last_seq >= full.seq and stream.missed == 0
                # Live: the department's second crossing arrives as it happens.
                (dept_half,), _ = await of(stream, dept, 1)
                await spend(c, dept, 2)
                (dept_full,), _ = await of(stream, dept, 1)
                assert (dept_half.threshold_pct, dept_full.threshold_pct) == (50, 100)
                assert dept_full.seq > dept_half.seq > full.seq

            # Resumed after the last one processed: the next one comes again, nothing before.
            async with admin(server) as again:
                (repeat,), _ = await of(again.alerts(after=half.seq), other, 1)
                assert repeat == full

            # An organisation gets the alerts on its own accounts only.
            async with rc.Client("127.0.0.1", server.port, ORG_TOKEN) as tenant:
                mine, seen = await of(tenant.alerts(), dept, 2)
                assert [a.seq for a in mine] == [dept_half.seq, dept_full.seq]
                assert all(a.account != other for a in seen)
    run(go())


def test_admin_operations_and_typed_admin_errors(server):
    org = fresh_account()

    async def go():
        async with admin(server) as c:
            await c.create_account(org)
            await c.create_account(org + 1, parent=org, draws_on_parent=True)
            with pytest.raises(rc.errors.AccountExists) as e:
                await c.create_account(org)
            assert e.value.code == 3 and e.value.code_name == "ACCOUNT_EXISTS"
            r = await c.topup(org, "USD", Decimal("25.00"), reason="card")
            assert r.balance == Decimal("25.00") and r.bucket > 0
            # The same op id again: the original result, credited once (SPEC 8.1).
            op = rc.new_op_id()
            first = await c.topup(org, "USD", Decimal("0.10"), op_id=op)
            again = await c.topup(org, "USD", Decimal("0.10"), op_id=op)
            assert first == again and again.balance == Decimal("25.10")
            with pytest.raises(rc.errors.OpIdReused):
                await c.topup(org, "USD", Decimal("0.20"), op_id=op)
            bal = await c.balance(org)
            assert bal.total("USD") == Decimal("25.10") and bal.parent is None
            child = await c.balance(org + 1)
            assert child.parent == org and child.draws_on_parent and child.buckets == []
            with pytest.raises(rc.errors.AccountNotFound):
                await c.balance(org + 9)
            await c.set_limit(org + 1, "USD", Decimal("1.5"))
            # The cap bounds the child's grant: 1.5 USD buys 75,000 output tokens.
            cca = await c.initial(f"cap;{org}", org + 1, {10: {"tokens_out": 100_000}})
            assert cca.service(10).granted_of("tokens_out") == 75_000
            await c.terminate(f"cap;{org}", org + 1, 1, {10: {}})
            with pytest.raises(TypeError, match="never a float"):
                await c.topup(org, "USD", 1.5)
    run(go())


def test_credit_control_session_and_typed_result_errors(server):
    org = fresh_account()

    async def go():
        async with admin(server) as c:
            await c.create_account(org)
            await c.create_account(org + 1, parent=org, draws_on_parent=True)
            await c.topup(org, "USD", Decimal("1"))
            sid = f"py;{org}"
            cca = await c.initial(sid, org + 1, {10: {"tokens_in": 1000, "tokens_out": 4096}})
            svc = cca.service(10)
            assert svc.result_code == rc.ResultCode.SUCCESS
            assert svc.granted_of("tokens_in") == 1000 and svc.granted_of("tokens_out") == 4096
            held = (await c.balance(org)).total("USD", "held")
            assert held == Decimal("0.005") + Decimal("0.08192")
            done = await c.terminate(sid, org + 1, 1, {10: {"tokens_in": 900, "tokens_out": 1213}})
            assert done.result_code == rc.ResultCode.SUCCESS
            spent = Decimal(900) * Decimal("0.000005") + Decimal(1213) * Decimal("0.00002")
            bal = await c.balance(org)
            assert bal.total("USD") == Decimal(1) - spent and bal.total("USD", "held") == 0
            # A retransmission: the original answer, debited once (SPEC 7.1).
            again = await c.terminate(sid, org + 1, 1, {10: {"tokens_in": 900, "tokens_out": 1213}})
            assert again == done and (await c.balance(org)).total("USD") == Decimal(1) - spent

            with pytest.raises(rc.errors.UnknownSessionId):
                await c.update(f"py;none;{org}", org + 1, 1, used={10: {"tokens_out": 1}})
            with pytest.raises(rc.errors.UserUnknown) as e:
                await c.initial(f"py;ghost;{org}", org + 7, {10: {"tokens_out": 1}})
            assert e.value.result_code == 5030 and not e.value.retryable
            # An empty account is refused with CREDIT_LIMIT_REACHED, a typed, retryable error.
            await c.create_account(org + 2)
            with pytest.raises(rc.errors.CreditLimitReached) as e:
                await c.initial(f"py;poor;{org}", org + 2, {10: {"tokens_out": 10}})
            assert e.value.retryable and e.value.cca.result_code == 4012
            # Low balance: a smaller grant with a final-unit action, not a refusal.
            await c.topup(org + 2, "USD", Decimal("0.0001"))
            cca = await c.initial(f"py;low;{org}", org + 2, {10: {"tokens_out": 100}})
            assert cca.service(10).granted_of("tokens_out") == 5
            assert cca.service(10).final_unit_action != wire.FinalUnitAction.NONE
            # Releasing: TERMINATE with nothing used gives the whole grant back.
            await c.terminate(f"py;low;{org}", org + 2, 1, {10: {}})
            assert (await c.balance(org + 2)).total("USD", "available") == Decimal("0.0001")
            price = await c.price(f"py;price;{org}", org + 1, {10: {"tokens_out": 1000}})
            assert price == {"USD": Decimal("0.02")}
            avail = await c.check_balance(f"py;chk;{org}", org + 1)
            assert avail["USD"] == Decimal(1) - spent
    run(go())


def test_pipelined_requests_match_out_of_order_answers(server):
    org = fresh_account()

    async def go():
        async with admin(server) as c:
            await c.create_account(org)
            await c.topup(org, "tokens_out", 200_000)
            n = 600
            # Many debits in flight at once on one connection; each answer is paired by
            # request id, whatever order the server answers in.
            answers = await asyncio.gather(*(
                c.event(f"pipe;{org};{i}", org, wire.EventAction.DIRECT_DEBIT, {1: {"tokens_out": i}})
                for i in range(1, n + 1)))
            assert [a.session_id for a in answers] == [f"pipe;{org};{i}" for i in range(1, n + 1)]
            assert all(a.result_code == rc.ResultCode.SUCCESS for a in answers)
            bal = await c.balance(org)
            assert bal.total("tokens_out") == 200_000 - sum(range(1, n + 1))
    run(go())


def test_batch_splits_and_keeps_order(server):
    org = fresh_account()

    async def go():
        async with admin(server) as c:
            await c.create_account(org)
            await c.topup(org, "requests", 5000)
            entries = [wire.Ccr(f"b;{org};{i}", wire.RequestType.EVENT, 0, org,
                                event_action=wire.EventAction.DIRECT_DEBIT,
                                services=[wire.ServiceRequest(3, [("requests", Decimal(1))])])
                       for i in range(1500)]
            entries.insert(700, wire.BalanceQuery(org))
            entries.insert(701, wire.BalanceQuery(org + 5))
            out = await c.batch(entries)
            assert len(out) == 1502
            assert isinstance(out[700], wire.Balance)
            assert isinstance(out[701], wire.AdminResult) and out[701].code == 4
            ccas = [a for a in out if isinstance(a, wire.Cca)]
            assert [a.session_id for a in ccas] == [f"b;{org};{i}" for i in range(1500)]
            assert (await c.balance(org)).total("requests") == 3500
        # An organisation credential's forbidden entry is an ERROR entry, not a batch error.
        async with rc.Client("127.0.0.1", server.port, ORG_TOKEN) as c:
            out = await c.batch([wire.TopUp(rc.new_op_id(), org, "USD", Decimal(1)),
                                 wire.BalanceQuery(org)])
            assert isinstance(out[0], wire.ErrorReply) and out[0].code == rc.ErrorCode.FORBIDDEN
            assert isinstance(out[1], wire.AdminResult) and out[1].code == 4  # not its org
            with pytest.raises(rc.errors.Forbidden):
                await c.topup(org, "USD", Decimal(1))
    run(go())


def test_timeouts_bound_every_call():
    async def go():
        port = free_port()  # nothing listens there
        c = rc.Client("127.0.0.1", port, ADMIN_TOKEN, timeout=0.5)
        start = time.monotonic()
        with pytest.raises(rc.RequestTimeout):
            await c.balance(1)
        assert time.monotonic() - start < 2.0
        c = rc.Client("127.0.0.1", port, ADMIN_TOKEN, timeout=0.5, retry=False)
        with pytest.raises(rc.ConnectionLost):
            await c.balance(1)
    run(go())


def test_reconnects_and_a_resent_request_applies_once():
    srv = ReckonServer().start()
    try:
        async def go():
            async with rc.Client("127.0.0.1", srv.port, ADMIN_TOKEN, timeout=30) as c:
                await c.create_account(500)
                await c.topup(500, "tokens_out", 1000)
                await c.initial("rc;1", 500, {1: {"tokens_out": 100}})
                srv.kill()  # a crash: the connection drops
                # The commit is sent while the server is down; the client reconnects and
                # resends it with the same session id and request number.
                pending = asyncio.ensure_future(
                    c.terminate("rc;1", 500, 1, {1: {"tokens_out": 40}}))
                await asyncio.sleep(0.5)
                assert not pending.done()
                await asyncio.get_running_loop().run_in_executor(None, srv.start)
                done = await pending
                assert done.result_code == rc.ResultCode.SUCCESS
                again = await c.terminate("rc;1", 500, 1, {1: {"tokens_out": 40}})
                assert again == done
                assert (await c.balance(500)).total("tokens_out") == 960
        run(go())
    finally:
        srv.cleanup()


def test_keepalive_pings_are_answered():
    srv = ReckonServer(top_config="keepalive_s = 1\n").start()
    try:
        async def go():
            async with rc.Client("127.0.0.1", srv.port, ADMIN_TOKEN) as c:
                conn = c._conn
                assert c.hello.keepalive_s == 1
                await asyncio.sleep(4.5)  # past 3 keepalive intervals of silence from us
                await c.create_account(1)
                assert c._conn is conn  # the same connection: it was kept alive
        run(go())
    finally:
        srv.cleanup()


def test_sync_facade_from_threads(server):
    org = fresh_account()
    with rc.SyncClient("127.0.0.1", server.port, ADMIN_TOKEN) as c:
        c.create_account(org)
        c.topup(org, "requests", 100)
        errors = []

        def worker(k):
            try:
                for i in range(10):
                    c.event(f"sync;{org};{k};{i}", org, wire.EventAction.DIRECT_DEBIT,
                            {1: {"requests": 1}})
            except Exception as e:  # surfaced below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert c.balance(org).total("requests") == 50
        with pytest.raises(rc.errors.CreditLimitReached):
            c.event(f"sync;{org};big", org, wire.EventAction.DIRECT_DEBIT, {1: {"requests": 51}})


def test_batch_answers_too_large_for_a_frame_are_fetched_alone():
    srv = ReckonServer(top_config="max_frame = 65536\n").start()
    try:
        async def go():
            async with rc.Client("127.0.0.1", srv.port, ADMIN_TOKEN) as c:
                assert c.hello.max_frame == 65536
                await c.create_account(42)
                grants = await c.batch([wire.BucketGrant(rc.new_op_id(), 42, "credits", Decimal(i))
                                        for i in range(1, 61)])
                assert all(isinstance(g, wire.AdminResult) and g.code == 0 for g in grants)
                # 20 answers of 60 buckets each (~6 KB apiece) cannot share one 64 KiB frame:
                # the server answers the tail FRAME_TOO_LARGE and the client asks for those alone.
                raw = await c.request(wire.Batch([wire.BalanceQuery(42)] * 20))
                too_large = [e for e in raw.entries if isinstance(e, wire.ErrorReply)]
                assert too_large and all(e.code == rc.ErrorCode.FRAME_TOO_LARGE for e in too_large)
                out = await c.batch([wire.BalanceQuery(42)] * 20)
                assert all(isinstance(b, wire.Balance) and len(b.buckets) == 60 for b in out)
                assert out[-1].total("credits") == sum(range(1, 61))
        run(go())
    finally:
        srv.cleanup()
