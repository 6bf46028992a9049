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
