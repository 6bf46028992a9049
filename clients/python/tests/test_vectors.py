"""The SPEC's hex test vectors: every valid frame decodes and re-encodes to the
same bytes; every malformed one is refused with the SPEC's code."""

from __future__ import annotations

from decimal import Decimal

import pytest

from reckon_client import wire
from reckon_client.codes import ErrorCode
from reckon_client.errors import credit_control_error
from spec_vectors import vectors

VALID, INVALID = vectors()


def test_the_spec_has_all_its_vectors():
    # Every kind of version 1 has a valid vector; the invalid ones cover SPEC 11.2.
    kinds = {wire.decode_frame(raw, version=v)[0].message.KIND for _, raw, v in VALID}
    assert kinds == set(wire.Kind), set(wire.Kind) - kinds
    assert len(INVALID) >= 18


@pytest.mark.parametrize("name,raw,version", VALID, ids=[n for n, _, _ in VALID])
def test_valid_vector_round_trips(name, raw, version):
    frame, used = wire.decode_frame(raw, version=version)
    assert used == len(raw)
    assert wire.encode_frame(frame.request_id, frame.message, version=version) == raw
    # Every proper prefix is "need more bytes", never an error.
    for cut in (0, 3, 4, 13, len(raw) - 1):
        assert wire.decode_frame(raw[:cut], version=version) is None
    # Version 2 changes only the CCR: other version-1 frames read the same in version 2;
    # version 3 also changes the CCA, LIMIT_SET and BALANCE.
    if version == 1 and not _has(frame.message, wire.Ccr):
        assert wire.decode_frame(raw, version=2)[0] == frame
        if not _has(frame.message, (wire.Cca, wire.LimitSet, wire.Balance)):
            assert wire.decode_frame(raw, version=3)[0] == frame
    # Every older frame means the same in version 3.
    if version < 3:
        again = wire.encode_frame(frame.request_id, frame.message, version=3)
        assert wire.decode_frame(again, version=3)[0] == frame


def _has(message, classes) -> bool:
    return isinstance(message, classes) or (
        isinstance(message, (wire.Batch, wire.BatchResult))
        and any(_has(e, classes) for e in message.entries))


@pytest.mark.parametrize("name,code,raw,version", INVALID, ids=[n for n, _, _, _ in INVALID])
def test_invalid_vector_is_refused_with_its_code(name, code, raw, version):
    with pytest.raises(wire.WireError) as caught:
        wire.decode_frame(raw, version=version)
    err = caught.value
    assert err.code == ErrorCode[code]
    if code == "FRAME_TOO_LARGE" or name == "TOO_SHORT":
        assert err.fatal  # the frame boundary is lost (SPEC 3.2)
    else:
        assert not err.fatal and err.skip == len(raw)
        assert err.request_id == int.from_bytes(raw[6:14], "little")


def test_decoded_values_are_the_spec_comments():
    frames = {n: wire.decode_frame(raw, version=v)[0] for n, raw, v in VALID}
    cca = frames["CCA_INITIAL"].message
    assert cca.result_code == 2001 and cca.session_id == "gw1;1700000000;42"
    assert cca.services[0].granted == [("tokens_out", Decimal(4096))]
    assert cca.services[1].final_unit_action == wire.FinalUnitAction.REDIRECT
    assert cca.services[1].redirect == "https://pay.example/topup"
    bal = frames["CCA_BALANCE"].message.balance
    assert bal == [("USD", Decimal("24.50")), ("credits", Decimal("-1.5"))]
    assert str(bal[0][1]) == "24.50"  # the scale is kept
    topup = frames["TOPUP"].message
    assert topup.op_id == 0x0123456789ABCDEF0011223344556677
    assert topup.amount == Decimal("25.00") and topup.bucket is None
    grant = frames["BUCKET_GRANT"].message
    assert grant.valid_until_ms == wire.NEVER and grant.services == [10, 20]
    assert frames["LIMIT_SET_REMOVE"].message.cap is None
    batch = frames["BATCH_RESULT"].message.entries
    assert isinstance(batch[0], wire.Balance) and batch[0].buckets[0].held == Decimal("0.50")
    assert isinstance(batch[1], wire.AdminResult)


def test_version_2_vectors_carry_attributes():
    frames = {n: wire.decode_frame(raw, version=v)[0] for n, raw, v in VALID}
    ccr = frames["CCR_ATTRIBUTES"].message
    assert ccr.attributes == [("model", "gpt-4o-mini"), ("region", "eu")]
    assert frames["CCR_INITIAL"].message.attributes == []
    assert frames["HELLO_V2"].message.max_version == 2
    assert frames["HELLO_OK_V2"].message.version == 2
    # A mapping encodes like the list; version 1 cannot carry attributes.
    as_dict = wire.Ccr(**{**ccr.__dict__, "attributes": dict(ccr.attributes)})
    raw = dict((n, r) for n, r, _ in VALID)["CCR_ATTRIBUTES"]
    assert wire.encode_frame(40, as_dict, version=2) == raw
    with pytest.raises(wire.EncodeError):
        wire.encode_frame(40, ccr, version=1)
    base = wire.Ccr("s", wire.RequestType.EVENT, 0, 1, wire.EventAction.DIRECT_DEBIT)
    for bad in ([(f"k{i}", "v") for i in range(9)], [("k" * 33, "v")], [("model", "v" * 65)],
                [("", "v")], [("model", "a"), ("model", "b")]):
        with pytest.raises(wire.EncodeError):
            wire.encode_frame(1, wire.Ccr(**{**base.__dict__, "attributes": bad}), version=2)


def test_version_3_vectors_carry_spend_controls_and_denials():
    frames = {n: wire.decode_frame(raw, version=v)[0] for n, raw, v in VALID}
    raws = {n: raw for n, raw, _ in VALID}
    monthly = wire.LimitPeriod.months(1, 1_767_222_000_000, 60)
    limit = frames["LIMIT_SET_MONTHLY"].message
    assert limit == wire.LimitSet(8, 7, "USD", Decimal("500.00"), monthly, False, [80, 100])
    assert limit.period.kind == 1 and str(limit.cap) == "500.00"
    # Built as a user would, it is the SPEC's bytes; no older version can carry it.
    built = wire.LimitSet(8, 7, "USD", Decimal("500.00"),
                          period=wire.LimitPeriod.months(1, 1_767_222_000_000, offset_min=60),
                          alerts=(80, 100))
    assert wire.encode_frame(18, built, version=3) == raws["LIMIT_SET_MONTHLY"]
    for older in (1, 2):
        for refused in (built, wire.LimitSet(8, 7, "USD", None, soft=True),
                        wire.LimitSet(8, 7, "USD", Decimal(1), alerts=[80])):
            with pytest.raises(wire.EncodeError, match="needs protocol version 3"):
                wire.encode_frame(18, refused, version=older)

    cca = frames["CCA_SPEND_CONTROL"].message
    service = cca.service(10)
    assert service.result_code == 4012
    assert service.denial == wire.Denial(wire.DenialReason.SPEND_CONTROL, 7, 1)
    assert service.denial.spend_control
    # The same answer on a version-2 connection says only 4012.
    v2 = wire.encode_frame(19, cca, version=2)
    assert len(v2) + 10 == len(raws["CCA_SPEND_CONTROL"])
    old = wire.decode_frame(v2, version=2)[0].message.service(10)
    assert old.result_code == 4012 and old.denial is None
    # A CreditLimitReached raised for the service names the control.
    err = credit_control_error(4012, cca, 10)
    assert err.denial.account == 7 and err.denial.period_kind == 1

    balance = frames["BALANCE_LIMITS"].message
    assert (balance.account, balance.parent, balance.buckets) == (7, 1000, [])
    spent = balance.limit("USD")
    assert spent == wire.LimitInfo("USD", Decimal("500.00"), Decimal("480.25"),
                                   Decimal("19.75"), monthly, False, 1_772_319_600_000,
                                   1_774_998_000_000, [80, 100])
    assert spent.headroom == 0 and balance.limit("EUR") is None
    assert balance.limit("USD", 1) is spent and balance.limit("USD", 0) is None
    # Version 2 leaves the limits out.
    v2 = wire.encode_frame(20, balance, version=2)
    assert wire.decode_frame(v2, version=2)[0].message.limits == []


def test_decimal_example_of_section_2_2():
    assert wire.encode_decimal(Decimal("-1.5")).hex(" ") == (
        "f1 ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff 01")
    biggest = Decimal((1 << 96) - 1)
    assert wire.decimal_from_parts(*wire.decimal_parts(biggest)) == biggest
    assert wire.decimal_parts(Decimal("1E+3")) == (1000, 0)
    assert wire.decimal_parts(Decimal("-0")) == (0, 0)


def test_alert_thresholds_are_checked_both_ways():
    base = dict(op_id=8, account=7, unit="USD", cap=Decimal(1))
    for ok in ([], [1], [80, 100], [1, 2, 3, 4, 5, 6, 7, wire.ALERT_PCT_MAX]):
        raw = wire.encode_frame(1, wire.LimitSet(**base, alerts=ok), version=3)
        assert wire.decode_frame(raw, version=3)[0].message.alerts == ok
    for bad in ([0], [251], [100, 80], [80, 80], list(range(1, 10)), [True], ["80"]):
        with pytest.raises(wire.EncodeError):
            wire.encode_frame(1, wire.LimitSet(**base, alerts=bad), version=3)
    # A decoder refuses the same, with MALFORMED_FRAME and the request id.
    good = wire.encode_frame(9, wire.LimitSet(**base, alerts=[80, 100]), version=3)
    for tail in (b"\x02\x64\x50", b"\x01\x00", b"\x01\xfb", b"\x09" + bytes(range(1, 10))):
        raw = bytearray(good[:-3] + tail)
        raw[0:4] = (len(raw) - 4).to_bytes(4, "little")
        with pytest.raises(wire.WireError) as caught:
            wire.decode_frame(bytes(raw), version=3)
        assert caught.value.code == ErrorCode.MALFORMED_FRAME and caught.value.request_id == 9


def test_alert_vectors():
    frames = {n: wire.decode_frame(raw, version=v)[0] for n, raw, v in VALID}
    assert frames["ALERT_SUBSCRIBE"].message == wire.AlertSubscribe(after=4000)
    answer = frames["ALERT_SUBSCRIBED"]
    assert answer.request_id == frames["ALERT_SUBSCRIBE"].request_id == 51
    assert answer.message == wire.AlertSubscribed(4201, 8296)
    assert answer.message.missed(4000) == 200 and answer.message.missed(4200) == 0
    assert answer.message.last_seq - answer.message.oldest_seq + 1 == wire.ALERTS_KEPT
    pushed = frames["ALERT"]
    assert pushed.request_id == 0
    assert pushed.message == wire.Alert(8297, 1_773_306_900_000, 7, "USD", 1, 1_772_319_600_000,
                                        80, Decimal("400.25"), Decimal("500.00"), False)
    assert str(pushed.message.used) == "400.25"
    for kind in (wire.Kind.ALERT_SUBSCRIBE, wire.Kind.ALERT_SUBSCRIBED, wire.Kind.ALERT):
        assert wire.KIND_SINCE[kind] == 3


def test_alert_values_out_of_range_are_refused_both_ways():
    good = wire.Alert(1, 0, 7, "USD", 13, 0, 250, Decimal(1), Decimal(1), True)
    assert wire.decode_frame(wire.encode_frame(0, good, version=3), version=3)[0].message == good
    for field, value in (("seq", 0), ("period_kind", 14), ("threshold_pct", 0),
                         ("threshold_pct", 251)):
        bad = wire.Alert(**{**good.__dict__, field: value})
        with pytest.raises(wire.EncodeError):
            wire.encode_frame(0, bad, version=3)
    for oldest, last in ((0, 0), (3, 1), (8298, 8296)):
        with pytest.raises(wire.EncodeError):
            wire.encode_frame(1, wire.AlertSubscribed(oldest, last), version=3)
    for oldest, last in ((1, 0), (4, 3), (1, 4096)):
        raw = wire.encode_frame(1, wire.AlertSubscribed(oldest, last), version=3)
        assert wire.decode_frame(raw, version=3)[0].message.missed(0) == oldest - 1
