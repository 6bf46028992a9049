//! AVPs: read in place ([`AvpRef`], [`AvpIter`]), written with lengths and
//! padding patched in ([`AvpWriter`], [`encode_message`]), and an owned
//! generic tree ([`GenericMessage`]) that round-trips any well-formed
//! message.

use super::dictionary::{self, AvpDef, AvpType};
use super::{
    result, DiameterError, FrameError, Header, AVPS_MAX, GROUP_DEPTH_MAX, HEADER_LEN,
    MAX_MESSAGE_CAP, STRING_MAX,
};
use bytes::{BufMut, BytesMut};
use nom::number::complete as num;
use std::net::IpAddr;

/// AVP flag: a Vendor-Id field follows the length.
pub const AVP_FLAG_VENDOR: u8 = 0x80;
/// AVP flag: the receiver must understand the AVP or refuse the message.
pub const AVP_FLAG_MANDATORY: u8 = 0x40;
/// AVP flag: end-to-end protection (deprecated, kept as read).
pub const AVP_FLAG_PROTECTED: u8 = 0x20;

/// One AVP as it sits in the message bytes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct AvpRef<'a> {
    /// AVP code.
    pub code: u32,
    /// AVP flags (V, M, P).
    pub flags: u8,
    /// Vendor id, 0 when the V flag is clear.
    pub vendor_id: u32,
    /// The data, without header or padding.
    pub data: &'a [u8],
}

fn invalid_length(avp: &AvpRef<'_>) -> DiameterError {
    DiameterError::avp(
        result::INVALID_AVP_LENGTH,
        avp,
        "AVP data has the wrong length for its type",
    )
}

fn invalid_value(avp: &AvpRef<'_>, reason: &'static str) -> DiameterError {
    DiameterError::avp(result::INVALID_AVP_VALUE, avp, reason)
}

impl<'a> AvpRef<'a> {
    /// True when the M flag is set.
    pub fn is_mandatory(&self) -> bool {
        self.flags & AVP_FLAG_MANDATORY != 0
    }

    /// True when this is the AVP `def` describes.
    pub fn is(&self, def: &AvpDef) -> bool {
        self.code == def.code && self.vendor_id == def.vendor
    }

    /// An Unsigned32 / Enumerated value (exactly 4 bytes).
    pub fn u32(&self) -> Result<u32, DiameterError> {
        match self.data {
            [a, b, c, d] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
            _ => Err(invalid_length(self)),
        }
    }

    /// An Integer32 value.
    pub fn i32(&self) -> Result<i32, DiameterError> {
        self.u32().map(|v| v as i32)
    }

    /// An Unsigned64 value (exactly 8 bytes).
    pub fn u64(&self) -> Result<u64, DiameterError> {
        let bytes: [u8; 8] = self.data.try_into().map_err(|_| invalid_length(self))?;
        Ok(u64::from_be_bytes(bytes))
    }

    /// An Integer64 value.
    pub fn i64(&self) -> Result<i64, DiameterError> {
        self.u64().map(|v| v as i64)
    }

    /// A UTF8String / DiameterIdentity / DiameterURI, at most
    /// [`STRING_MAX`] bytes.
    pub fn utf8(&self) -> Result<&'a str, DiameterError> {
        if self.data.len() > STRING_MAX {
            return Err(invalid_value(self, "string AVP too long"));
        }
        std::str::from_utf8(self.data).map_err(|_| invalid_value(self, "string AVP is not UTF-8"))
    }

    /// An Address (family 1: IPv4, 2: IPv6).
    pub fn address(&self) -> Result<IpAddr, DiameterError> {
        match self.data {
            [0, 1, a, b, c, d] => Ok(IpAddr::from([*a, *b, *c, *d])),
            [0, 2, rest @ ..] if rest.len() == 16 => {
                let mut v6 = [0u8; 16];
                v6.copy_from_slice(rest);
                Ok(IpAddr::from(v6))
            }
            [0, 1 | 2, ..] => Err(invalid_length(self)),
            _ => Err(invalid_value(self, "unsupported address family")),
        }
    }

    /// The AVPs inside a grouped AVP.
    pub fn group(&self) -> AvpIter<'a> {
        AvpIter::new(self.data)
    }
}

/// Reads consecutive AVPs from a byte slice; stops at the first malformed
/// one (yielding its error) or after [`AVPS_MAX`].
#[derive(Clone, Debug)]
pub struct AvpIter<'a> {
    rest: &'a [u8],
    count: usize,
    done: bool,
}

impl<'a> AvpIter<'a> {
    /// AVPs of a message body or a grouped AVP's data.
    pub fn new(data: &'a [u8]) -> AvpIter<'a> {
        AvpIter {
            rest: data,
            count: 0,
            done: false,
        }
    }

    /// The AVPs of a whole message (after its header).
    pub fn of_message(msg: &'a [u8]) -> AvpIter<'a> {
        AvpIter::new(msg.get(HEADER_LEN..).unwrap_or(&[]))
    }
}

type E<'a> = nom::error::Error<&'a [u8]>;

fn avp_header(i: &[u8]) -> nom::IResult<&[u8], (u32, u8, usize), E<'_>> {
    let (i, code) = num::be_u32(i)?;
    let (i, flags) = num::be_u8(i)?;
    let (i, length) = num::be_u24(i)?;
    Ok((i, (code, flags, length as usize)))
}

impl<'a> Iterator for AvpIter<'a> {
    type Item = Result<AvpRef<'a>, DiameterError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.rest.is_empty() {
            return None;
        }
        let fail = |it: &mut Self, e: DiameterError| {
            it.done = true;
            Some(Err(e))
        };
        self.count += 1;
        if self.count > AVPS_MAX {
            return fail(
                self,
                DiameterError::new(result::UNABLE_TO_COMPLY, "too many AVPs"),
            );
        }
        let Ok((after, (code, flags, length))) = avp_header(self.rest) else {
            return fail(
                self,
                DiameterError::new(
                    result::INVALID_AVP_LENGTH,
                    "bytes left too short for an AVP",
                ),
            );
        };
        let (after, vendor_id, header) = if flags & AVP_FLAG_VENDOR != 0 {
            match num::be_u32::<_, E<'_>>(after) {
                Ok((a, v)) => (a, v, 12),
                Err(_) => {
                    return fail(
                        self,
                        DiameterError::new(result::INVALID_AVP_LENGTH, "AVP header cut short"),
                    )
                }
            }
        } else {
            (after, 0, 8)
        };
        if length < header {
            let avp = AvpRef {
                code,
                flags,
                vendor_id,
                data: &[],
            };
            return fail(self, invalid_length(&avp));
        }
        let data_len = length - header;
        if data_len > after.len() {
            let avp = AvpRef {
                code,
                flags,
                vendor_id,
                data: after,
            };
            return fail(
                self,
                DiameterError::avp(
                    result::INVALID_AVP_LENGTH,
                    &avp,
                    "AVP longer than what contains it",
                ),
            );
        }
        let (data, rest) = after.split_at(data_len);
        // Liberal: a missing final padding at the end of a group is accepted.
        let pad = (4 - data_len % 4) % 4;
        self.rest = &rest[pad.min(rest.len())..];
        Some(Ok(AvpRef {
            code,
            flags,
            vendor_id,
            data,
        }))
    }
}

/// Writes AVPs into a buffer, each padded to 4 bytes.
pub struct AvpWriter<'b> {
    dst: &'b mut BytesMut,
}

impl<'b> AvpWriter<'b> {
    /// A writer appending to `dst`.
    pub fn new(dst: &'b mut BytesMut) -> AvpWriter<'b> {
        AvpWriter { dst }
    }

    fn header(&mut self, code: u32, flags: u8, vendor: u32, data_len: usize) {
        let flags = if vendor != 0 {
            flags | AVP_FLAG_VENDOR
        } else {
            flags & !AVP_FLAG_VENDOR
        };
        let header = if vendor != 0 { 12 } else { 8 };
        self.dst.put_u32(code);
        self.dst
            .put_u32((flags as u32) << 24 | ((header + data_len) as u32 & 0x00ff_ffff));
        if vendor != 0 {
            self.dst.put_u32(vendor);
        }
    }

    fn pad(&mut self, data_len: usize) {
        self.dst.put_bytes(0, (4 - data_len % 4) % 4);
    }

    /// An AVP with raw data, flags as given (V follows the vendor id).
    pub fn raw(&mut self, code: u32, flags: u8, vendor: u32, data: &[u8]) {
        self.header(code, flags, vendor, data.len());
        self.dst.put_slice(data);
        self.pad(data.len());
    }

    /// An AVP with raw data and its dictionary flags.
    pub fn bytes(&mut self, def: &AvpDef, data: &[u8]) {
        self.raw(def.code, def.flags(), def.vendor, data);
    }

    /// A string AVP.
    pub fn str(&mut self, def: &AvpDef, value: &str) {
        self.bytes(def, value.as_bytes());
    }

    /// An Unsigned32 or Enumerated AVP.
    pub fn u32(&mut self, def: &AvpDef, value: u32) {
        self.bytes(def, &value.to_be_bytes());
    }

    /// An Integer32 AVP.
    pub fn i32(&mut self, def: &AvpDef, value: i32) {
        self.bytes(def, &value.to_be_bytes());
    }

    /// An Unsigned64 AVP.
    pub fn u64(&mut self, def: &AvpDef, value: u64) {
        self.bytes(def, &value.to_be_bytes());
    }

    /// An Integer64 AVP.
    pub fn i64(&mut self, def: &AvpDef, value: i64) {
        self.bytes(def, &value.to_be_bytes());
    }

    /// An Address AVP.
    pub fn address(&mut self, def: &AvpDef, value: IpAddr) {
        match value {
            IpAddr::V4(v4) => {
                let mut b = [0u8; 6];
                b[1] = 1;
                b[2..].copy_from_slice(&v4.octets());
                self.bytes(def, &b);
            }
            IpAddr::V6(v6) => {
                let mut b = [0u8; 18];
                b[1] = 2;
                b[2..].copy_from_slice(&v6.octets());
                self.bytes(def, &b);
            }
        }
    }

    /// A grouped AVP whose members `body` writes.
    pub fn group(&mut self, def: &AvpDef, body: impl FnOnce(&mut AvpWriter<'_>)) {
        self.group_raw(def.code, def.flags(), def.vendor, body);
    }

    /// A grouped AVP with explicit header fields.
    pub fn group_raw(
        &mut self,
        code: u32,
        flags: u8,
        vendor: u32,
        body: impl FnOnce(&mut AvpWriter<'_>),
    ) {
        let start = self.dst.len();
        self.header(code, flags, vendor, 0);
        let data_start = self.dst.len();
        body(&mut AvpWriter { dst: self.dst });
        let data_len = self.dst.len() - data_start;
        let header_len = data_start - start;
        let word = ((flags_with_vendor(flags, vendor) as u32) << 24)
            | ((header_len + data_len) as u32 & 0x00ff_ffff);
        self.dst[start + 4..start + 8].copy_from_slice(&word.to_be_bytes());
        self.pad(data_len);
    }

    /// Bytes written so far to the underlying buffer.
    pub fn len(&self) -> usize {
        self.dst.len()
    }

    /// True when the underlying buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.dst.is_empty()
    }
}

fn flags_with_vendor(flags: u8, vendor: u32) -> u8 {
    if vendor != 0 {
        flags | AVP_FLAG_VENDOR
    } else {
        flags & !AVP_FLAG_VENDOR
    }
}

/// The message would exceed [`MAX_MESSAGE_CAP`]; nothing was written.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("encoded diameter message of {0} bytes exceeds the cap")]
pub struct TooLarge(pub usize);

/// Writes one message: header fields, then the AVPs `body` writes; patches
/// the length. Refuses (leaving `dst` as it was) a message over the cap.
pub fn encode_message(
    dst: &mut BytesMut,
    header: Header,
    body: impl FnOnce(&mut AvpWriter<'_>),
) -> Result<(), TooLarge> {
    let start = dst.len();
    Header {
        length: 0,
        ..header
    }
    .put(dst);
    body(&mut AvpWriter { dst });
    let len = dst.len() - start;
    if len > MAX_MESSAGE_CAP {
        dst.truncate(start);
        return Err(TooLarge(len));
    }
    let word = (super::VERSION as u32) << 24 | len as u32;
    dst[start..start + 4].copy_from_slice(&word.to_be_bytes());
    Ok(())
}

/// An owned AVP of a [`GenericMessage`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenericAvp {
    /// AVP code.
    pub code: u32,
    /// AVP flags.
    pub flags: u8,
    /// Vendor id (0: none).
    pub vendor_id: u32,
    /// Raw data, or the members of a grouped AVP the dictionary knows.
    pub value: GenericValue,
}

/// The value of a [`GenericAvp`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GenericValue {
    /// Data as on the wire.
    Data(Vec<u8>),
    /// Members of a grouped AVP.
    Group(Vec<GenericAvp>),
}

/// Any well-formed message as a tree: header and AVPs, grouped AVPs the
/// dictionary knows expanded. Decoding then encoding gives the same bytes
/// (for zero padding).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenericMessage {
    /// The header (its length is recomputed on encoding).
    pub header: Header,
    /// The AVPs in order.
    pub avps: Vec<GenericAvp>,
}

fn decode_level(data: &[u8], depth: usize) -> Result<Vec<GenericAvp>, DiameterError> {
    // No reservation up front: nested levels would each reserve for the
    // same bytes. Every node takes at least 8 bytes of header, so the tree
    // holds at most len/8 nodes in all.
    let mut out = Vec::new();
    for avp in AvpIter::new(data) {
        let avp = avp?;
        let grouped =
            dictionary::lookup(avp.code, avp.vendor_id).is_some_and(|d| d.kind == AvpType::Grouped);
        let value = if grouped {
            if depth >= GROUP_DEPTH_MAX {
                return Err(DiameterError::avp(
                    result::UNABLE_TO_COMPLY,
                    &avp,
                    "grouped AVPs nested too deep",
                ));
            }
            GenericValue::Group(decode_level(avp.data, depth + 1)?)
        } else {
            GenericValue::Data(avp.data.to_vec())
        };
        out.push(GenericAvp {
            code: avp.code,
            flags: avp.flags,
            vendor_id: avp.vendor_id,
            value,
        });
    }
    Ok(out)
}

fn encode_level(w: &mut AvpWriter<'_>, avps: &[GenericAvp]) {
    for a in avps {
        match &a.value {
            GenericValue::Data(d) => w.raw(a.code, a.flags, a.vendor_id, d),
            GenericValue::Group(members) => {
                w.group_raw(a.code, a.flags, a.vendor_id, |w| encode_level(w, members))
            }
        }
    }
}

impl GenericMessage {
    /// Decodes a whole message (its length must match `msg`).
    pub fn decode(msg: &[u8]) -> Result<GenericMessage, DiameterError> {
        let header = Header::parse(msg).map_err(frame_error)?;
        let avps = decode_level(&msg[HEADER_LEN..], 0)?;
        Ok(GenericMessage { header, avps })
    }

    /// Appends the message to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), TooLarge> {
        encode_message(dst, self.header, |w| encode_level(w, &self.avps))
    }

    /// The first top-level AVP `def` describes.
    pub fn find(&self, def: &AvpDef) -> Option<&GenericAvp> {
        self.avps
            .iter()
            .find(|a| a.code == def.code && a.vendor_id == def.vendor)
    }
}

/// The error to answer a message whose framing is wrong with.
pub fn frame_error(e: FrameError) -> DiameterError {
    match e {
        FrameError::Version(_) => {
            DiameterError::new(result::UNSUPPORTED_VERSION, "unsupported diameter version")
        }
        _ => DiameterError::new(result::INVALID_MESSAGE_LENGTH, "invalid message length"),
    }
}
