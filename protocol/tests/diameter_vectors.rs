//! Byte vectors of real-shaped Diameter messages, written by an independent
//! stack (PyPI python-diameter 0.9.0, `tests/diameter/make_vectors.py`):
//! they decode to the fields we expect, the generic tree re-encodes them
//! byte for byte, and typed re-encoding decodes to the same message.

use bytes::BytesMut;
use reckon_protocol::diameter::avp::{AvpWriter, GenericMessage};
use reckon_protocol::diameter::dictionary::{self as d, VENDOR_3GPP};
use reckon_protocol::diameter::message::*;
use reckon_protocol::diameter::{self, result, Header};

// CER: 232 bytes
const CER: &str = "010000e880000101000000001122334455667788000001084000002e706777312e6570632e6d6e633030312e6d63633030312e336770706e6574776f726b2e6f7267000000000128400000296570632e6d6e633030312e6d63633030312e336770706e6574776f726b2e6f7267000000000001014000000e00010a01020300000000010a4000000c000028af0000010d0000000b50475700000001164000000c6553f100000001094000000c000028af000001024000000c0000000400000104400000200000010a4000000c000028af000001024000000c000000040000010b0000000c00000001";
// CCR_I: 600 bytes
const CCR_I: &str = "01000258c00001100000000400000101abc000010000010740000046706777312e6570632e6d6e633030312e6d63633030312e336770706e6574776f726b2e6f72673b313730303030303030303b34323b6465646963617465640000000001084000002e706777312e6570632e6d6e633030312e6d63633030312e336770706e6574776f726b2e6f7267000000000128400000296570632e6d6e633030312e6d63633030312e336770706e6574776f726b2e6f72670000000000011b400000176f63732e6578616d706c652e6e657400000001024000000c00000004000001cd40000016333232353140336770702e6f72670000000001a04000000c000000010000019f4000000c00000000000001164000000c6553f100000000374000000ced01b425000001bb40000028000001c24000000c00000000000001bc40000014343931373031323334353637000001bb4000002c000001c24000000c00000001000001bc4000001730303130313031323334353637383900000001c74000000c00000001000001c840000038000001b540000018000001a54000001000000000000f4240000001b74000000c000003e9000001b04000000c0000000a000001c840000028000001b540000014000001a44000000c00000258000001b04000000c00000014000001ca4000002c000001cb4000000c00000000000001cc400000183335333439303036393837333331393000000369c0000048000028af0000036ac000003c000028af00000002c0000010000028af000010010000001e40000010696e7465726e657400000015c000000d000028af06000000";
// CCR_U: 444 bytes
const CCR_U: &str = "010001bcc00001100000000400000102abc000020000010740000046706777312e6570632e6d6e633030312e6d63633030312e336770706e6574776f726b2e6f72673b313730303030303030303b34323b6465646963617465640000000001084000002e706777312e6570632e6d6e633030312e6d63633030312e336770706e6574776f726b2e6f7267000000000128400000296570632e6d6e633030312e6d63633030312e336770706e6574776f726b2e6f72670000000000011b400000176f63732e6578616d706c652e6e657400000001024000000c00000004000001cd40000016333232353140336770702e6f72670000000001a04000000c000000020000019f4000000c00000001000001164000000c6553f100000000374000000ced01b425000001bb40000028000001c24000000c00000000000001bc40000014343931373031323334353637000001c74000000c00000001000001c840000064000001b540000008000001be40000048000001a54000001000000000000b33330000019c4000001000000000000084d30000019e4000001000000000000aae6000000368c0000010000028af00000003000001b04000000c0000000a";
// CCA_I: 336 bytes
const CCA_I: &str = "01000150400001100000000000000101abc000010000010740000046706777312e6570632e6d6e633030312e6d63633030312e336770706e6574776f726b2e6f72673b313730303030303030303b34323b64656469636174656400000000010c4000000c000007d100000108400000176f63732e6578616d706c652e6e65740000000128400000136578616d706c652e6e657400000001024000000c00000004000001a04000000c000000010000019f4000000c00000000000001c840000044000001af40000018000001a54000001000000000000f4240000001b04000000c0000000a000001c04000000c0000012c0000010c4000000c000007d1000001c840000054000001af40000014000001a44000000c00000078000001b04000000c00000014000001c04000000c0000012c0000010c4000000c000007d1000001ae40000014000001c14000000c00000000";

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn generic_tree_reencodes_every_vector_byte_for_byte() {
    for v in [CER, CCR_I, CCR_U, CCA_I] {
        let bytes = hex(v);
        let msg = GenericMessage::decode(&bytes).unwrap();
        let mut out = BytesMut::new();
        msg.encode(&mut out).unwrap();
        assert_eq!(&out[..], &bytes[..]);
    }
}

#[test]
fn cer_from_a_pgw() {
    let bytes = hex(CER);
    let h = Header::parse(&bytes).unwrap();
    assert!(h.is_request());
    assert_eq!(h.code, diameter::command::CAPABILITIES_EXCHANGE);
    assert_eq!((h.hop_by_hop, h.end_to_end), (0x11223344, 0x55667788));
    let cer = Cer::decode(&bytes).unwrap();
    let c = &cer.capabilities;
    assert_eq!(c.origin_host, "pgw1.epc.mnc001.mcc001.3gppnetwork.org");
    assert_eq!(c.origin_realm, "epc.mnc001.mcc001.3gppnetwork.org");
    assert_eq!(
        c.host_ip_addresses,
        vec!["10.1.2.3".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(c.vendor_id, VENDOR_3GPP);
    assert_eq!(c.product_name, "PGW");
    assert_eq!(c.origin_state_id, Some(1700000000));
    assert_eq!(c.auth_application_ids, vec![4]);
    assert_eq!(
        c.vendor_specific_application_ids[0].auth_application_id,
        Some(4)
    );
    assert!(c.supports(diameter::APP_CREDIT_CONTROL));
    assert!(!c.supports(16777238));
    // Typed re-encoding decodes to the same CER.
    let mut out = BytesMut::new();
    cer.encode(&mut out, h.hop_by_hop, h.end_to_end).unwrap();
    assert_eq!(Cer::decode(&out).unwrap(), cer);
    assert_eq!(out.len(), bytes.len());
}

#[test]
fn ccr_initial_with_two_services_and_service_information() {
    let bytes = hex(CCR_I);
    let h = Header::parse(&bytes).unwrap();
    assert!(h.is_request() && h.flags & diameter::FLAG_PROXIABLE != 0);
    assert_eq!(h.application_id, 4);
    let ccr = Ccr::decode(&bytes).unwrap();
    assert_eq!(
        ccr.session_id,
        "pgw1.epc.mnc001.mcc001.3gppnetwork.org;1700000000;42;dedicated"
    );
    assert_eq!(ccr.destination_realm, "ocs.example.net");
    assert_eq!(ccr.service_context_id, Some("32251@3gpp.org"));
    assert_eq!((ccr.request_type, ccr.request_number), (1, 0));
    assert_eq!(ccr.subscription_ids.len(), 2);
    assert_eq!(
        ccr.subscription_ids[0],
        SubscriptionId {
            kind: 0,
            data: "491701234567"
        }
    );
    assert_eq!(ccr.subscription_ids[1].kind, d::subscription_id_type::IMSI);
    assert_eq!(ccr.mscc.len(), 2);
    assert_eq!(ccr.mscc[0].rating_group, Some(10));
    assert_eq!(ccr.mscc[0].service_identifiers, vec![1001]);
    assert_eq!(ccr.mscc[0].requested.unwrap().total_octets, Some(1_000_000));
    assert_eq!(ccr.mscc[1].requested.unwrap().time, Some(600));
    assert!(ccr.event_timestamp.is_some());
    // Typed re-encoding (Service-Information and User-Equipment-Info are
    // not interpreted, so they are not re-encoded) decodes to the same CCR.
    let mut out = BytesMut::new();
    ccr.encode(&mut out, h.hop_by_hop, h.end_to_end).unwrap();
    assert_eq!(Ccr::decode(&out).unwrap(), ccr);
    let g = GenericMessage::decode(&out).unwrap();
    assert!(g.find(&d::SERVICE_INFORMATION).is_none());
}

#[test]
fn ccr_update_reports_usage_with_a_reporting_reason() {
    let bytes = hex(CCR_U);
    let ccr = Ccr::decode(&bytes).unwrap();
    assert_eq!((ccr.request_type, ccr.request_number), (2, 1));
    let s = &ccr.mscc[0];
    assert_eq!(s.requested, Some(ServiceUnits::default()));
    assert!(s.requested.unwrap().is_empty());
    assert_eq!(s.used.len(), 1);
    assert_eq!(s.used[0].units.total_octets, Some(734003));
    assert_eq!(s.used[0].units.input_octets, Some(34003));
    assert_eq!(s.used[0].units.output_octets, Some(700000));
    assert_eq!(s.used[0].reporting_reason, Some(3));
    let mut out = BytesMut::new();
    ccr.encode(&mut out, 0x102, 0xabc00002).unwrap();
    assert_eq!(Ccr::decode(&out).unwrap(), ccr);
    assert_eq!(&out[..], &bytes[..], "same AVP order as python-diameter");
}

#[test]
fn cca_with_grants_validity_and_a_final_unit_indication() {
    let bytes = hex(CCA_I);
    let h = Header::parse(&bytes).unwrap();
    assert!(!h.is_request() && !h.is_error());
    let cca = Cca::decode(&bytes).unwrap();
    assert_eq!(cca.status.result_code, 2001);
    assert_eq!(cca.mscc.len(), 2);
    assert_eq!(cca.mscc[0].granted.unwrap().total_octets, Some(1_000_000));
    assert_eq!(cca.mscc[0].validity_time, Some(300));
    assert_eq!(cca.mscc[0].result_code, Some(2001));
    assert_eq!(cca.mscc[1].granted.unwrap().time, Some(120));
    assert_eq!(
        cca.mscc[1].final_unit_indication.as_ref().unwrap().action,
        0
    );
    let mut out = BytesMut::new();
    cca.encode(&mut out, &h).unwrap();
    assert_eq!(Cca::decode(&out).unwrap(), cca);
    assert_eq!(&out[..], &bytes[..], "same AVP order as python-diameter");
}

/// A CCR body with the given extra AVPs written after the required ones.
fn ccr_with(extra: impl FnOnce(&mut AvpWriter<'_>)) -> BytesMut {
    let mut dst = BytesMut::new();
    let h = Header {
        length: 0,
        flags: diameter::FLAG_REQUEST | diameter::FLAG_PROXIABLE,
        code: diameter::command::CREDIT_CONTROL,
        application_id: 4,
        hop_by_hop: 1,
        end_to_end: 2,
    };
    diameter::avp::encode_message(&mut dst, h, |w| {
        w.str(&d::SESSION_ID, "gw;1;1");
        w.str(&d::ORIGIN_HOST, "gw.example");
        w.str(&d::ORIGIN_REALM, "example");
        w.u32(&d::CC_REQUEST_NUMBER, 0);
        extra(w);
    })
    .unwrap();
    dst
}

#[test]
fn rfc_errors_name_the_avp_at_fault() {
    // Missing CC-Request-Type: 5005 with an example of the AVP.
    let e = Ccr::decode(&ccr_with(|_| {})).unwrap_err();
    assert_eq!(e.result_code, result::MISSING_AVP);
    let f = e.failed_avp.unwrap();
    assert_eq!((f.code, f.data.len()), (d::CC_REQUEST_TYPE.code, 4));

    // Unknown AVP with M set: 5001; without M: ignored.
    let e = Ccr::decode(&ccr_with(|w| {
        w.u32(&d::CC_REQUEST_TYPE, 1);
        w.raw(99999, 0x40, 0, b"abcd");
    }))
    .unwrap_err();
    assert_eq!(e.result_code, result::AVP_UNSUPPORTED);
    assert_eq!(e.failed_avp.unwrap().code, 99999);
    let lenient = ccr_with(|w| {
        w.u32(&d::CC_REQUEST_TYPE, 1);
        w.raw(99999, 0x00, 0, b"abcd");
        w.raw(99998, 0x80, 12345, b"xyz");
    });
    assert_eq!(Ccr::decode(&lenient).unwrap().request_type, 1);

    // An unknown M-bit AVP inside an MSCC is refused too.
    let e = Ccr::decode(&ccr_with(|w| {
        w.u32(&d::CC_REQUEST_TYPE, 1);
        w.group(&d::MULTIPLE_SERVICES_CREDIT_CONTROL, |w| {
            w.u32(&d::RATING_GROUP, 1);
            w.raw(4242, 0xc0, 77, &[0; 4]);
        });
    }))
    .unwrap_err();
    assert_eq!(
        (e.result_code, e.failed_avp.unwrap().vendor_id),
        (result::AVP_UNSUPPORTED, 77)
    );

    // Wrong length for an Unsigned32: 5014.
    let e = Ccr::decode(&ccr_with(|w| w.bytes(&d::CC_REQUEST_TYPE, &[0, 1]))).unwrap_err();
    assert_eq!(e.result_code, result::INVALID_AVP_LENGTH);

    // A value out of range: 5004.
    let e = Ccr::decode(&ccr_with(|w| w.u32(&d::CC_REQUEST_TYPE, 9))).unwrap_err();
    assert_eq!(e.result_code, result::INVALID_AVP_VALUE);

    // Twice a single AVP: 5009.
    let e = Ccr::decode(&ccr_with(|w| {
        w.u32(&d::CC_REQUEST_TYPE, 1);
        w.u32(&d::CC_REQUEST_TYPE, 1);
    }))
    .unwrap_err();
    assert_eq!(e.result_code, result::AVP_OCCURS_TOO_MANY_TIMES);

    // An AVP whose length runs past the message: 5014.
    let mut bad = ccr_with(|w| w.u32(&d::CC_REQUEST_TYPE, 1));
    let n = bad.len();
    bad[n - 5] = 0xff; // the low byte of the last AVP's length
    let e = Ccr::decode(&bad).unwrap_err();
    assert_eq!(e.result_code, result::INVALID_AVP_LENGTH);
}

#[test]
fn error_answers_set_the_e_bit_for_protocol_errors_only() {
    let req = Header::parse(&hex(CCR_I)).unwrap();
    for (code, e_bit) in [
        (result::TOO_BUSY, true),
        (result::COMMAND_UNSUPPORTED, true),
        (result::MISSING_AVP, false),
    ] {
        let mut out = BytesMut::new();
        ErrorAnswer {
            session_id: Some("s"),
            origin_host: "ocs",
            origin_realm: "realm",
            status: AnswerStatus {
                result_code: code,
                error_message: Some("why"),
                failed_avp: Some(diameter::FailedAvp::missing(d::CC_REQUEST_TYPE.code, 0)),
            },
            origin_state_id: Some(7),
        }
        .encode(&mut out, &req)
        .unwrap();
        let h = Header::parse(&out).unwrap();
        assert_eq!(h.is_error(), e_bit);
        assert!(!h.is_request());
        assert_eq!(
            (h.hop_by_hop, h.end_to_end),
            (req.hop_by_hop, req.end_to_end)
        );
        let g = GenericMessage::decode(&out).unwrap();
        assert!(g.find(&d::FAILED_AVP).is_some());
        assert_eq!(session_id_of(&out), Some("s"));
    }
}

#[test]
fn framing_refuses_bad_versions_and_lengths_early() {
    use diameter::{frame_length, FrameError};
    assert_eq!(frame_length(&[1, 0], 4096), Ok(None));
    assert_eq!(
        frame_length(&[2, 0, 0, 20], 4096),
        Err(FrameError::Version(2))
    );
    assert_eq!(
        frame_length(&[1, 0, 0, 19], 4096),
        Err(FrameError::Length(19))
    );
    assert_eq!(
        frame_length(&[1, 0, 0, 22], 4096),
        Err(FrameError::Length(22))
    );
    assert_eq!(
        frame_length(&[1, 0, 0x20, 0], 4096),
        Err(FrameError::TooLarge {
            len: 8192,
            max: 4096
        })
    );
    assert_eq!(frame_length(&[1, 0, 0, 20], 4096), Ok(Some(20)));
    let ccr = hex(CCR_I);
    assert_eq!(frame_length(&ccr, 4096), Ok(Some(ccr.len())));
}

#[test]
fn watchdog_disconnect_and_server_initiated_messages_round_trip() {
    let origin = Origin {
        host: "ocs.example",
        realm: "example",
        state_id: Some(5),
    };
    let mut out = BytesMut::new();
    Dwr {
        origin: origin.clone(),
    }
    .encode(&mut out, 1, 2)
    .unwrap();
    assert_eq!(Dwr::decode(&out).unwrap().origin, origin);
    let req = Header::parse(&out).unwrap();
    let mut ans = BytesMut::new();
    let dwa = Dwa {
        status: AnswerStatus {
            result_code: 2001,
            ..Default::default()
        },
        origin: origin.clone(),
    };
    dwa.encode(&mut ans, &req).unwrap();
    assert_eq!(Dwa::decode(&ans).unwrap(), dwa);

    let mut out = BytesMut::new();
    let dpr = Dpr {
        origin: Origin {
            state_id: None,
            ..origin.clone()
        },
        disconnect_cause: 0,
    };
    dpr.encode(&mut out, 3, 4).unwrap();
    assert_eq!(Dpr::decode(&out).unwrap(), dpr);

    let session = SessionRequest {
        session_id: "gw;1",
        origin_host: "ocs.example",
        origin_realm: "example",
        destination_realm: "operator",
        destination_host: "gw.operator",
        auth_application_id: 4,
    };
    let mut out = BytesMut::new();
    let rar = Rar {
        session: session.clone(),
        re_auth_request_type: 0,
        rating_group: Some(10),
    };
    rar.encode(&mut out, 5, 6).unwrap();
    assert_eq!(Rar::decode(&out).unwrap(), rar);
    let mut out = BytesMut::new();
    let asr = Asr { session };
    asr.encode(&mut out, 7, 8).unwrap();
    assert_eq!(Asr::decode(&out).unwrap(), asr);
    let req = Header::parse(&out).unwrap();
    let mut ans = BytesMut::new();
    let asa = Asa {
        session_id: "gw;1",
        status: AnswerStatus {
            result_code: 2001,
            ..Default::default()
        },
        origin_host: "gw.operator",
        origin_realm: "operator",
    };
    asa.encode(&mut ans, &req).unwrap();
    assert_eq!(Asa::decode(&ans).unwrap(), asa);
}
