"""Issue 16's "done means": the LiteLLM hook reserving through the real Reckon
server, across 4 LiteLLM proxy processes in front of a mock model."""

from __future__ import annotations

import asyncio
import json
import tempfile
from decimal import Decimal
from pathlib import Path

import aiohttp
import pytest

import reckon_client as rc
from gateway import MASTER_KEY, MODEL, MODELS_PRICED_BY_CARD, Processes
from reckon_server import ADMIN_TOKEN, ReckonServer

litellm = pytest.importorskip("litellm")  # ci.sh installs it; the codec tests need nothing

GATEWAY_TOKEN = "gateway-acme-token-0123456789abcdef01234567"
ORG, DEPT, ALICE, BOB, CAROL, DAVE = 1000, 1100, 1101, 1102, 1103, 1104
SERVICE = 10
CARD_SERVICE = 20  # one service for several models, priced per model by a rate card
SMALL, LARGE = MODELS_PRICED_BY_CARD
CARD_PRICES = {SMALL: (Decimal("0.000001"), Decimal("0.000004")),
               LARGE: (Decimal("0.00001"), Decimal("0.00003"))}
PRICE_IN, PRICE_OUT = Decimal("0.000005"), Decimal("0.00002")
MESSAGES = [{"role": "user", "content": "Summarise the quarterly GPU usage report."}]
MAX_TOKENS = 20


def per_model_card() -> str:
    """A rate card pricing CARD_SERVICE by the model attribute the hook sends."""
    text = ('card = "per-model"\n[[versions]]\nversion = 1\n'
            'effective_from = 2020-01-01T00:00:00Z\ncurrency = "USD"\ndecimals = 9\n'
            f'[[versions.services]]\nid = {CARD_SERVICE}\nname = "chat"\n')
    for model, prices in CARD_PRICES.items():
        for unit, price in zip(("tokens_in", "tokens_out"), prices):
            text += (f'[[versions.services.rules]]\nunit = "{unit}"\n'
                     f'when = {{ model = "{model}" }}\n'
                     f'price = {{ model = "per_unit", price = "{price}", per = 1 }}\n')
    return text


def prompt_tokens(messages=MESSAGES) -> int:
    return litellm.token_counter(model=MODEL, messages=messages)


def cost(prompt: int, completion: int) -> Decimal:
    return prompt * PRICE_IN + completion * PRICE_OUT


@pytest.fixture(scope="module")
def gateway():
    """Reckon, a mock model and 4 LiteLLM proxies with the hook; yields their ports."""
    work = tempfile.TemporaryDirectory(prefix="reckon-litellm-")
    server = ReckonServer(
        f'[[credential]]\nname = "gateway"\ntoken = "{GATEWAY_TOKEN}"\norg = {ORG}\n'
        f'[[price]]\nservice = {SERVICE}\nunit = "tokens_in"\ncharge_unit = "USD"\n'
        f'per_unit = "{PRICE_IN}"\n'
        f'[[price]]\nservice = {SERVICE}\nunit = "tokens_out"\ncharge_unit = "USD"\n'
        f'per_unit = "{PRICE_OUT}"\n'
        f'[[service]]\nservice = {SERVICE}\ndefault_unit = "tokens_out"\ndefault_grant = "256"\n'
        f'max_grant = "8192"\nvalidity_s = 600\n').start()
    procs = Processes(Path(work.name))
    try:
        upstream = procs.mock_upstream()
        config = procs.proxy_config(upstream, {
            "server": f"127.0.0.1:{server.port}", "credential": GATEWAY_TOKEN,
            "account_by": "end_user", "accounts": {"alice": ALICE, "bob": BOB, "carol": CAROL, "dave": DAVE},
            "models": {MODEL: SERVICE, SMALL: CARD_SERVICE, LARGE: CARD_SERVICE},
            "max_output_tokens": 4096, "timeout_s": 10})
        ports = procs.proxies(config, 4)

        async def accounts():
            # An organisation with money and a department drawing on it.
            async with rc.Client("127.0.0.1", server.port, ADMIN_TOKEN) as admin:
                await admin.create_account(ORG)
                await admin.create_account(DEPT, parent=ORG, draws_on_parent=True)
                await admin.topup(ORG, "USD", Decimal("1000.00"), reason="prepaid")
                await admin.apply_ratecard("per-model.toml", per_model_card())
        asyncio.run(accounts())
        yield server, ports
    finally:
        procs.stop()
        server.cleanup()
        work.cleanup()


async def chat(session: aiohttp.ClientSession, port: int, body: dict, **kw) -> tuple[int, dict]:
    async with session.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body,
                            headers={"Authorization": f"Bearer {MASTER_KEY}"}, **kw) as resp:
        return resp.status, json.loads(await resp.text())


def open_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                 timeout=aiohttp.ClientTimeout(total=120))


def test_budget_is_spent_exactly_across_four_proxies(gateway):
    """400 concurrent requests over 4 proxies for an end user whose cap allows 40."""
    server, ports = gateway
    per_request = cost(prompt_tokens(), MAX_TOKENS)
    budget = 40 * per_request

    async def go():
        async with rc.Client("127.0.0.1", server.port, ADMIN_TOKEN) as admin:
            # The end user draws on the department, which draws on the organisation;
            # the end user's cap is the budget.
            await admin.create_account(ALICE, parent=DEPT, draws_on_parent=True)
            await admin.set_limit(ALICE, "USD", budget)
            before = (await admin.balance(ORG)).total("USD")
            async with open_session() as http:
                results = await asyncio.gather(*(
                    chat(http, ports[i % 4], {"model": MODEL, "messages": MESSAGES,
                                              "max_tokens": MAX_TOKENS, "user": "alice"})
                    for i in range(400)))
            answered = [body for status, body in results if status == 200]
            refused = [(status, body) for status, body in results if status != 200]
            assert len(answered) + len(refused) == 400
            for status, body in refused:
                assert status == 402, body
                assert "CREDIT_LIMIT_REACHED" in body["error"]["message"], body
            committed = sum(cost(b["usage"]["prompt_tokens"], b["usage"]["completion_tokens"])
                            for b in answered)
            org = await admin.balance(ORG)
            spent = before - org.total("USD")
            # Exactly the budget, never a unit more; every answer's usage was committed.
            assert spent == budget, (spent, budget, len(answered))
            assert committed == spent
            assert len(answered) == 40
            assert org.total("USD", "held") == 0
            assert (await admin.reservations(ALICE)).reservations == []
    asyncio.run(go())


def test_no_max_tokens_on_a_low_balance_is_capped_not_refused(gateway):
    server, ports = gateway
    prompt = prompt_tokens()
    affordable = 7

    async def go():
        async with rc.Client("127.0.0.1", server.port, ADMIN_TOKEN) as admin:
            await admin.create_account(BOB, parent=ORG)  # its own money only
            await admin.topup(BOB, "USD", cost(prompt, affordable))
            async with open_session() as http:
                status, body = await chat(http, ports[1], {
                    "model": MODEL, "messages": MESSAGES, "user": "bob"})
            assert status == 200, body
            # The model was called with max_tokens capped at what the balance affords.
            assert body["choices"][0]["message"]["content"] == f"max_tokens={affordable}"
            assert body["usage"]["completion_tokens"] == affordable
            bal = await admin.balance(BOB)
            assert bal.total("USD") == 0 and bal.total("USD", "held") == 0
            # Now nothing is affordable: refused with Reckon's reason.
            async with open_session() as http:
                status, body = await chat(http, ports[2], {
                    "model": MODEL, "messages": MESSAGES, "user": "bob"})
            assert status == 402 and "CREDIT_LIMIT_REACHED" in body["error"]["message"]
    asyncio.run(go())


def test_errors_and_disconnects_release_and_streams_commit_at_end(gateway):
    server, ports = gateway

    async def go():
        async with rc.Client("127.0.0.1", server.port, ADMIN_TOKEN) as admin:
            await admin.create_account(CAROL, parent=ORG)
            await admin.topup(CAROL, "USD", Decimal("1.00"))

            async def settled():
                # Reservations are released or committed: nothing held, none open.
                for _ in range(100):
                    bal = await admin.balance(CAROL)
                    if bal.total("USD", "held") == 0 and not (
                            await admin.reservations(CAROL)).reservations:
                        return bal
                    await asyncio.sleep(0.1)
                raise AssertionError(f"still held: {await admin.balance(CAROL)}")

            async with open_session() as http:
                # The model fails: the reservation is released, nothing charged.
                status, body = await chat(http, ports[0], {
                    "model": MODEL, "user": "carol", "max_tokens": 50,
                    "messages": [{"role": "user", "content": "please FAIL"}]})
                assert status >= 500, body
                assert (await settled()).total("USD") == Decimal("1.00")

                # The client leaves before the (slow) answer: released.
                with pytest.raises(asyncio.TimeoutError):
                    await chat(http, ports[1], {
                        "model": MODEL, "user": "carol", "max_tokens": 50,
                        "messages": [{"role": "user", "content": "SLOW please"}]},
                        timeout=aiohttp.ClientTimeout(total=1.0))
                await asyncio.sleep(0.5)
                assert (await settled()).total("USD") == Decimal("1.00")

                # Streaming: committed at stream end with the last chunk's usage.
                usage = None
                async with http.post(f"http://127.0.0.1:{ports[3]}/v1/chat/completions",
                                     json={"model": MODEL, "messages": MESSAGES, "user": "carol",
                                           "max_tokens": 30, "stream": True},
                                     headers={"Authorization": f"Bearer {MASTER_KEY}"}) as resp:
                    assert resp.status == 200
                    text = ""
                    async for line in resp.content:
                        line = line.decode().strip()
                        if line.startswith("data: {"):
                            chunk = json.loads(line[6:])
                            usage = chunk.get("usage") or usage
                            for c in chunk.get("choices", []):
                                text += (c.get("delta") or {}).get("content") or ""
                assert text == "max_tokens=30"
                # The hook asked upstream for usage (stream_options.include_usage) and
                # committed it; the client, which did not ask, gets no usage chunk.
                assert usage is None
                bal = await settled()
                assert bal.total("USD") == Decimal("1.00") - cost(prompt_tokens(), 30)

                # A stream the client leaves before its first chunk: released.
                with pytest.raises(asyncio.TimeoutError):
                    async with http.post(
                            f"http://127.0.0.1:{ports[2]}/v1/chat/completions",
                            json={"model": MODEL, "user": "carol", "max_tokens": 40,
                                  "stream": True,
                                  "messages": [{"role": "user", "content": "SLOW stream"}]},
                            headers={"Authorization": f"Bearer {MASTER_KEY}"},
                            timeout=aiohttp.ClientTimeout(total=1.0)) as resp:
                        await resp.read()
                await asyncio.sleep(0.5)
                after_stream = bal.total("USD")
                assert (await settled()).total("USD") == after_stream

                # A stream the client leaves after some chunks: what was delivered is
                # charged (input plus the delivered output), the rest released.
                async with http.post(f"http://127.0.0.1:{ports[0]}/v1/chat/completions",
                                     json={"model": MODEL, "user": "carol", "max_tokens": 40,
                                           "stream": True, "messages": [
                                               {"role": "user", "content": "DRIP please"}]},
                                     headers={"Authorization": f"Bearer {MASTER_KEY}"}) as resp:
                    got = ""
                    async for line in resp.content:
                        line = line.decode().strip()
                        if line.startswith("data: {"):
                            for c in json.loads(line[6:]).get("choices", []):
                                got += (c.get("delta") or {}).get("content") or ""
                        if got.count("drip") >= 2:
                            break
                    resp.close()  # the client leaves mid-stream
                await asyncio.sleep(0.5)
                charged = after_stream - (await settled()).total("USD")
                drip_prompt = prompt_tokens([{"role": "user", "content": "DRIP please"}])
                assert cost(drip_prompt, 1) <= charged < cost(drip_prompt, 40), charged

                # The end user named by LiteLLM's end-user header instead of the body.
                before = (await settled()).total("USD")
                async with http.post(f"http://127.0.0.1:{ports[1]}/v1/chat/completions",
                                     json={"model": MODEL, "messages": MESSAGES, "max_tokens": 5},
                                     headers={"Authorization": f"Bearer {MASTER_KEY}",
                                              "x-litellm-end-user-id": "carol"}) as resp:
                    assert resp.status == 200, await resp.text()
                assert before - (await settled()).total("USD") == cost(prompt_tokens(), 5)

                # No Reckon account for the end user: refused, naming why.
                status, body = await chat(http, ports[0], {
                    "model": MODEL, "messages": MESSAGES, "user": "mallory"})
                assert status == 403 and "NO_ACCOUNT" in body["error"]["message"]
                status, body = await chat(http, ports[0], {
                    "model": MODEL, "messages": MESSAGES, "user": "999999"})
                assert status == 403 and "USER_UNKNOWN" in body["error"]["message"]
    asyncio.run(go())


def test_one_service_prices_each_model_by_the_attribute_the_hook_sends(gateway):
    """Two models behind one Reckon service: the hook sends the request's model as an
    attribute and the rate card's rule for that model prices it."""
    server, ports = gateway

    async def go():
        async with rc.Client("127.0.0.1", server.port, ADMIN_TOKEN) as admin:
            await admin.create_account(DAVE, parent=ORG)  # its own money only
            await admin.topup(DAVE, "USD", Decimal("1.00"))
            left = Decimal("1.00")
            charged = {}
            async with open_session() as http:
                for i, model in enumerate((SMALL, LARGE, SMALL)):
                    status, body = await chat(http, ports[i % 4], {
                        "model": model, "messages": MESSAGES, "max_tokens": 25, "user": "dave"})
                    assert status == 200, body
                    assert body["usage"]["completion_tokens"] == 25
                    price_in, price_out = CARD_PRICES[model]
                    expected = body["usage"]["prompt_tokens"] * price_in + 25 * price_out
                    bal = await admin.balance(DAVE)
                    assert bal.total("USD", "held") == 0
                    assert left - bal.total("USD") == expected, (model, left, bal)
                    left = bal.total("USD")
                    charged.setdefault(model, expected)
            assert charged[LARGE] > charged[SMALL] > 0
    asyncio.run(go())
