"""Codec behaviour beyond the SPEC's vectors: the encoder refuses what a decoder
would refuse (SPEC 13), decoding is bounded and streams frame by frame."""

from __future__ import annotations

from decimal import Decimal

import pytest

from reckon_client import wire
from reckon_client.codes import ErrorCode
from reckon_client.errors import CreditLimitReached, credit_control_error, server_error


def ccr(**kw) -> wire.Ccr:
    base = dict(session_id="s", request_type=wire.RequestType.INITIAL, request_number=0,
                account=1, services=[wire.ServiceRequest(10, [("tokens_out", Decimal(5))])])
    base.update(kw)
    return wire.Ccr(**base)


@pytest.mark.parametrize("message,why", [
    (ccr(session_id="x" * 129), "129 bytes"),
    (ccr(services=[wire.ServiceRequest(i) for i in range(33)]), "33 items"),
    (ccr(services=[wire.ServiceRequest(1, [("US$", Decimal(1))])]), "is not a unit"),
    (ccr(services=[wire.ServiceRequest(1, [("u" * 17, Decimal(1))])]), "is not a unit"),
    (ccr(services=[wire.ServiceRequest(1, [("USD", 1.5)])]), "never a float"),
    (ccr(services=[wire.ServiceRequest(1, [("USD", Decimal("1E-29"))])]), "decimal places"),
    (ccr(services=[wire.ServiceRequest(1, [("USD", Decimal(1 << 96))])]), "96-bit"),
    (ccr(services=[wire.ServiceRequest(1, [("USD", Decimal("NaN"))])]), "finite"),
    (ccr(account=-1), "0..=18446744073709551615"),
    (ccr(request_type=9), "RequestType"),
    (wire.TopUp(1 << 128, 1, "USD", Decimal(1)), "u128"),
    (wire.Batch([wire.Ping()]), "may not be a batch entry"),
    (wire.Batch([wire.BalanceQuery(1)] * 1025), "above 1024"),
])
def test_encoder_refuses_what_a_decoder_would(message, why):
    with pytest.raises(wire.EncodeError, match=why):
        wire.encode_frame(1, message)


def test_frame_over_the_negotiated_maximum_is_refused():
    big = wire.Batch([ccr(session_id="s" * 100)] * 1000)
    assert len(wire.encode_frame(1, big)) > 65_536
    with pytest.raises(wire.EncodeError, match="above the maximum"):
        wire.encode_frame(1, big, max_frame=65_536)
    with pytest.raises(wire.WireError) as e:
        wire.decode_frame(wire.encode_frame(1, big), max_frame=65_536)
    assert e.value.code == ErrorCode.FRAME_TOO_LARGE and e.value.fatal


def test_frames_decode_one_after_another_from_a_stream():
    frames = [wire.encode_frame(i + 1, m) for i, m in enumerate(
        [ccr(), wire.BalanceQuery(7), wire.Ping(), wire.ErrorReply(8, "busy")])]
    buf = b"".join(frames)
    out = []
    while buf:
        frame, used = wire.decode_frame(buf)
        out.append(frame)
        buf = buf[used:]
    assert [f.request_id for f in out] == [1, 2, 3, 4]
    assert out[0].message == ccr() and out[3].message == wire.ErrorReply(8, "busy")


def test_batch_entry_of_unknown_kind_is_unknown_kind_and_count_is_bounded():
    good = wire.encode_frame(5, wire.Batch([wire.BalanceQuery(1)]))
    bad = bytearray(good)
    bad[4 + 10 + 2 + 4] = 0x77  # the entry's kind byte
    with pytest.raises(wire.WireError) as e:
        wire.decode_frame(bytes(bad))
    assert e.value.code == ErrorCode.UNKNOWN_KIND and e.value.request_id == 5
    # A count the remaining bytes cannot hold is refused before anything is allocated.
    lying = bytearray(wire.encode_frame(6, wire.Reservations(False, [])))
    lying[-2:] = (4096).to_bytes(2, "little")
    with pytest.raises(wire.WireError, match="cannot fit"):
        wire.decode_frame(bytes(lying))


def test_decimals_keep_their_scale_and_sign():
    for text in ["0", "2.50", "-1.5", "0.000000001", "79228162514264337593543950335",
                 "-7.9228162514264337593543950335"]:
        d = Decimal(text)
        m, s = wire.decimal_parts(d)
        back = wire.decimal_from_parts(m, s)
        assert back.as_tuple() == d.as_tuple()


def test_typed_errors_name_codes_and_unknown_codes_fall_back():
    e = credit_control_error(4012)
    assert isinstance(e, CreditLimitReached) and e.code_name == "CREDIT_LIMIT_REACHED"
    assert credit_control_error(4999).code_name.startswith("UNKNOWN_4999(TRANSIENT")
    assert credit_control_error(4999).retryable
    assert server_error(99).code_name == "UNKNOWN_99(INTERNAL)"


def _v3(message, rid=1):
    raw = wire.encode_frame(rid, message, version=3)
    frame, used = wire.decode_frame(raw, version=3)
    assert used == len(raw) and frame.message == message
    return raw


def test_version_3_periods_round_trip_and_out_of_range_ones_are_refused():
    ok = [wire.LimitPeriod.lifetime(), wire.LimitPeriod.months(12, 0, -1080),
          wire.LimitPeriod.months(1, 1_767_222_000_000, 1080),
          wire.LimitPeriod.fixed(0, wire.PERIOD_LENGTH_MIN_MS),
          wire.LimitPeriod.fixed((1 << 64) - 1, wire.PERIOD_LENGTH_MAX_MS)]
    for period in ok:
        for soft in (False, True):
            raw = _v3(wire.LimitSet(3, 7, "USD", Decimal(5), period, soft))
            # Kind byte, then 0, 10 or 16 bytes, then soft, then no alert thresholds.
            tail = {0: 3, 13: 19}.get(period.kind, 13)
            assert raw[-tail] == period.kind and raw[-2] == soft and raw[-1] == 0
    bad = [wire.LimitPeriod(14), wire.LimitPeriod.months(0 + 13, 0),
           wire.LimitPeriod.months(1, 0, 1081), wire.LimitPeriod.months(1, 0, -1081),
           wire.LimitPeriod.fixed(0, wire.PERIOD_LENGTH_MIN_MS - 1),
           wire.LimitPeriod.fixed(0, wire.PERIOD_LENGTH_MAX_MS + 1),
           wire.LimitPeriod(0, anchor_ms=5), wire.LimitPeriod(1, 0, 0, length_ms=60_000)]
    for period in bad:
        with pytest.raises(wire.EncodeError, match="period"):
            wire.encode_frame(1, wire.LimitSet(3, 7, "USD", None, period), version=3)

    # Decoding refuses the same: patch the bytes of a valid monthly LIMIT_SET.
    good = wire.encode_frame(4, wire.LimitSet(3, 7, "USD", None,
                                              wire.LimitPeriod.months(1, 0, 60)), version=3)
    kind_at = len(good) - 13
    for patch in ({kind_at: 14}, {len(good) - 4: 0x39, len(good) - 3: 0x04},  # offset 1081
                  {len(good) - 2: 2}, {len(good) - 1: 9}):  # soft 2; 9 thresholds
        raw = bytearray(good)
        for at, value in patch.items():
            raw[at] = value
        with pytest.raises(wire.WireError) as e:
            wire.decode_frame(bytes(raw), version=3)
        assert e.value.code == ErrorCode.MALFORMED_FRAME and e.value.request_id == 4
        assert not e.value.fatal and e.value.skip == len(raw)


def _cca(*denials):
    return wire.Cca(2001, "s", 0, [wire.ServiceAnswer(i, 4012, denial=d)
                                   for i, d in enumerate(denials)])


def test_version_3_denials_round_trip_drop_below_3_and_bad_ones_are_refused():
    denials = [None, wire.Denial(wire.DenialReason.NO_CREDIT),
               wire.Denial(wire.DenialReason.SPEND_CONTROL, 7, 1),
               wire.Denial(wire.DenialReason.SPEND_CONTROL, (1 << 64) - 1, 13)]
    cca = _cca(*denials)
    raw = _v3(cca)
    for older in (1, 2):
        back = wire.decode_frame(wire.encode_frame(1, cca, version=older), version=older)[0]
        assert [s.denial for s in back.message.services] == [None] * 4
        assert [s.result_code for s in back.message.services] == [4012] * 4
    # In a BATCH_RESULT too.
    _v3(wire.BatchResult([cca, wire.Balance(1, None, wire.AccountStatus.ACTIVE, False)]))
    for bad in (wire.Denial(wire.DenialReason.SPEND_CONTROL, 7, 14),
                wire.Denial(wire.DenialReason.NO_CREDIT, 7), wire.Denial(3)):
        with pytest.raises(wire.EncodeError, match="denial"):
            wire.encode_frame(1, _cca(bad), version=3)
    # A one-service CCA ends with the denial's 10 bytes, then the empty balance and price.
    one = wire.encode_frame(1, _cca(None), version=3)
    at = len(one) - 12
    spend = bytearray(one)
    spend[at] = 2
    assert wire.decode_frame(bytes(spend), version=3)[0].message.services[0].denial == \
        wire.Denial(wire.DenialReason.SPEND_CONTROL, 0, 0)
    for patch in ({at: 3}, {at + 1: 7}, {at: 1, at + 9: 1}, {at: 2, at + 9: 14}):
        broken = bytearray(one)
        for i, v in patch.items():
            broken[i] = v
        with pytest.raises(wire.WireError) as e:
            wire.decode_frame(bytes(broken), version=3)
        assert e.value.code == ErrorCode.MALFORMED_FRAME


def test_version_3_balance_limits_round_trip_and_are_bounded():
    info = wire.LimitInfo("USD", Decimal("500.00"), Decimal("1.5"), Decimal(0),
                          wire.LimitPeriod.fixed(0, 86_400_000), True, 0, wire.NEVER)
    full = wire.Balance(7, 1000, wire.AccountStatus.ACTIVE, True, [], [info] * wire.LIMITS_MAX)
    raw = _v3(full)
    assert full.limit("USD") is info and info.headroom == Decimal("498.50")
    with pytest.raises(wire.EncodeError, match="above its limit of 64"):
        wire.encode_frame(1, wire.Balance(7, None, wire.AccountStatus.ACTIVE, False, [],
                                          [info] * 65), version=3)
    # A count above 64, or one the bytes left cannot hold, is refused before any item is read.
    count_at = 4 + 10 + 8 + 9 + 1 + 1 + 2
    assert raw[count_at] == wire.LIMITS_MAX
    for count in (65, 3):
        lying = bytearray(raw[:count_at + 1] + raw[count_at + 1:count_at + 100])
        lying[0:4] = (len(lying) - 4).to_bytes(4, "little")
        lying[count_at] = count
        with pytest.raises(wire.WireError):
            wire.decode_frame(bytes(lying), version=3)
