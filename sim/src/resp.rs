//! `reckon-sim redis`: the reserve-commit flow against Redis + Lua, for a
//! side-by-side comparison with Reckon under the same generator.
//!
//! A small RESP2 client (requests are arrays of bulk strings; replies are
//! parsed incrementally with every length bounded), two Lua scripts that
//! do the work of Reckon's reserve-commit flow, and a transport that
//! turns the flow's INITIAL and TERMINATE into `EVALSHA` calls, pipelined
//! on each connection as deep as `--depth` (Redis answers in order).
//!
//! The scripts keep per account a hash `acct:{id}` with `balance` and
//! `held`, and per request a hash `hold:{session}` that makes both steps
//! idempotent on the session id for the same window Reckon remembers
//! answers (600 s): a retransmitted reserve returns the same grant, a
//! retransmitted commit the same result, and neither applies twice.
//! Amounts are integers (Redis `HINCRBY`, exact to 2^63; the scripts
//! compare them as Lua numbers, exact below 2^53, far above the balances
//! used here).

use crate::generator::{Event, Transport};
use crate::load::{LoadConfig, LoadError};
use crate::workload as wl;
use bytes::{Buf, BufMut, BytesMut};
use reckon_protocol::codes::ResultCode;
use reckon_protocol::message::{Cca, Message, ServiceAnswer};
use reckon_protocol::types::{RequestType, Unit, UnitAmount};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use std::collections::VecDeque;
use std::io::Write as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest bulk string accepted in a reply.
pub const BULK_MAX: usize = 64 << 20;
/// Most elements of one reply array.
pub const ARRAY_MAX: usize = 1 << 20;
/// Deepest nesting of reply arrays.
pub const DEPTH_MAX: usize = 16;
/// Longest header line (type byte to CRLF).
pub const LINE_MAX: usize = 64 << 10;
/// How long a request's hold is remembered for retransmissions (Reckon's default window).
pub const WINDOW_S: u64 = 600;

/// A RESP2 reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// `+OK`.
    Simple(String),
    /// `-ERR ...`.
    Error(String),
    /// `:42`.
    Integer(i64),
    /// `$3\r\nabc` (`None`: the null bulk string `$-1`).
    Bulk(Option<Vec<u8>>),
    /// `*2\r\n...` (`None`: the null array `*-1`).
    Array(Option<Vec<Value>>),
}

/// A reply that breaks the protocol or its bounds.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("RESP: {0}")]
pub struct RespError(pub String);

/// Appends a command (an array of bulk strings) to `out`.
pub fn encode_command(out: &mut BytesMut, args: &[&[u8]]) {
    header(out, b'*', args.len());
    for a in args {
        header(out, b'$', a.len());
        out.put_slice(a);
        out.put_slice(b"\r\n");
    }
}

fn header(out: &mut BytesMut, kind: u8, n: usize) {
    let mut digits = [0u8; 20];
    let mut cursor = std::io::Cursor::new(&mut digits[..]);
    let _ = write!(cursor, "{n}");
    let len = cursor.position() as usize;
    out.put_u8(kind);
    out.put_slice(&digits[..len]);
    out.put_slice(b"\r\n");
}

/// Decodes one reply from the start of `buf`: `Ok(None)` if it is not all
/// there yet, else the reply and the bytes it used.
pub fn decode(buf: &[u8]) -> Result<Option<(Value, usize)>, RespError> {
    decode_at(buf, 0, 0)
}

fn line(buf: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, RespError> {
    let window = &buf[at..buf.len().min(at + LINE_MAX + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Some((&window[..i], at + i + 2))),
        None if window.len() >= LINE_MAX + 2 => {
            Err(RespError(format!("a line longer than {LINE_MAX} bytes")))
        }
        None => Ok(None),
    }
}

fn number(text: &[u8]) -> Result<i64, RespError> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| RespError(format!("not a number: {:?}", String::from_utf8_lossy(text))))
}

fn decode_at(buf: &[u8], at: usize, depth: usize) -> Result<Option<(Value, usize)>, RespError> {
    if depth > DEPTH_MAX {
        return Err(RespError(format!("arrays nested deeper than {DEPTH_MAX}")));
    }
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let Some((text, next)) = line(buf, at + 1)? else {
        return Ok(None);
    };
    let string = |t: &[u8]| String::from_utf8_lossy(t).into_owned();
    match kind {
        b'+' => Ok(Some((Value::Simple(string(text)), next - at))),
        b'-' => Ok(Some((Value::Error(string(text)), next - at))),
        b':' => Ok(Some((Value::Integer(number(text)?), next - at))),
        b'$' => {
            let n = number(text)?;
            if n == -1 {
                return Ok(Some((Value::Bulk(None), next - at)));
            }
            if n < 0 || n as usize > BULK_MAX {
                return Err(RespError(format!("bulk string of length {n}")));
            }
            let end = next + n as usize;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(RespError("bulk string not followed by CRLF".into()));
            }
            Ok(Some((
                Value::Bulk(Some(buf[next..end].to_vec())),
                end + 2 - at,
            )))
        }
        b'*' => {
            let n = number(text)?;
            if n == -1 {
                return Ok(Some((Value::Array(None), next - at)));
            }
            if n < 0 || n as usize > ARRAY_MAX {
                return Err(RespError(format!("array of length {n}")));
            }
            let mut items = Vec::with_capacity((n as usize).min(1024));
            let mut pos = next;
            for _ in 0..n {
                match decode_at(buf, pos, depth + 1)? {
                    Some((v, used)) => {
                        items.push(v);
                        pos += used;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Value::Array(Some(items)), pos - at)))
        }
        other => Err(RespError(format!("unknown reply type byte 0x{other:02x}"))),
    }
}

/// Reserves: holds `amount` if the balance not yet held covers it (else
/// -1); a retransmission gets the first answer.
pub const RESERVE_LUA: &str = r#"
local prior = redis.call('HGET', KEYS[2], 'granted')
if prior then return tonumber(prior) end
local acct = redis.call('HMGET', KEYS[1], 'balance', 'held')
if not acct[1] then return redis.error_reply('USER_UNKNOWN') end
local amount = tonumber(ARGV[1])
local granted = amount
if tonumber(acct[1]) - tonumber(acct[2] or '0') < amount then granted = -1 end
if granted > 0 then redis.call('HINCRBY', KEYS[1], 'held', granted) end
redis.call('HSET', KEYS[2], 'granted', granted)
redis.call('EXPIRE', KEYS[2], ARGV[2])
return granted
"#;

/// Commits `used` of a hold (≤ what was held), releases the rest; a
/// retransmission gets the first answer.
pub const COMMIT_LUA: &str = r#"
local h = redis.call('HMGET', KEYS[2], 'granted', 'used')
if not h[1] then return redis.error_reply('UNKNOWN_SESSION') end
if h[2] then return tonumber(h[2]) end
local granted = tonumber(h[1])
local used = tonumber(ARGV[1])
if granted < 0 then return redis.error_reply('NOTHING_HELD') end
if used > granted then return redis.error_reply('USED_ABOVE_GRANT') end
redis.call('HINCRBY', KEYS[1], 'held', -granted)
redis.call('HINCRBY', KEYS[1], 'balance', -used)
redis.call('HSET', KEYS[2], 'used', used)
return used
"#;

/// The SHA1s Redis gave the loaded scripts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scripts {
    /// [`RESERVE_LUA`].
    pub reserve: String,
    /// [`COMMIT_LUA`].
    pub commit: String,
}

/// A plain request-reply Redis connection, for setup and verification.
pub struct RedisConn {
    stream: TcpStream,
    input: BytesMut,
}

impl RedisConn {
    /// Connects.
    pub async fn connect(addr: &str) -> Result<RedisConn, String> {
        let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(RedisConn {
            stream,
            input: BytesMut::with_capacity(64 * 1024),
        })
    }

    /// Sends many commands at once and reads their replies in order.
    pub async fn pipeline(&mut self, commands: &[Vec<Vec<u8>>]) -> Result<Vec<Value>, String> {
        let mut out = BytesMut::new();
        for c in commands {
            let args: Vec<&[u8]> = c.iter().map(|a| a.as_slice()).collect();
            encode_command(&mut out, &args);
        }
        self.stream
            .write_all(&out)
            .await
            .map_err(|e| e.to_string())?;
        let mut replies = Vec::with_capacity(commands.len());
        while replies.len() < commands.len() {
            match decode(&self.input).map_err(|e| e.to_string())? {
                Some((v, used)) => {
                    self.input.advance(used);
                    replies.push(v);
                }
                None => {
                    if self
                        .stream
                        .read_buf(&mut self.input)
                        .await
                        .map_err(|e| e.to_string())?
                        == 0
                    {
                        return Err("Redis closed the connection".into());
                    }
                }
            }
        }
        Ok(replies)
    }

    /// One command.
    pub async fn call(&mut self, args: &[&str]) -> Result<Value, String> {
        let c = vec![args.iter().map(|a| a.as_bytes().to_vec()).collect()];
        Ok(self.pipeline(&c).await?.remove(0))
    }

    /// Loads both scripts.
    pub async fn load_scripts(&mut self) -> Result<Scripts, String> {
        let sha = |v: Value| match v {
            Value::Bulk(Some(s)) => String::from_utf8(s).map_err(|e| e.to_string()),
            other => Err(format!("SCRIPT LOAD answered {other:?}")),
        };
        let reserve = sha(self.call(&["SCRIPT", "LOAD", RESERVE_LUA]).await?)?;
        let commit = sha(self.call(&["SCRIPT", "LOAD", COMMIT_LUA]).await?)?;
        Ok(Scripts { reserve, commit })
    }
}

/// Which script a command in flight runs.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Op {
    Reserve,
    Commit,
}

/// Turns reserve-commit requests into `EVALSHA` calls and their replies
/// into the CCAs Reckon would give.
pub(crate) struct RespTransport {
    scripts: Scripts,
    order: VecDeque<(u32, Op)>,
    frames: u64,
    key_a: Vec<u8>,
    key_b: Vec<u8>,
}

fn amount_of(list: &[UnitAmount]) -> u64 {
    list.first()
        .and_then(|a| a.amount.trunc().to_u64())
        .unwrap_or(0)
}

impl RespTransport {
    /// A transport calling these scripts.
    pub fn new(scripts: Scripts) -> RespTransport {
        RespTransport {
            scripts,
            order: VecDeque::new(),
            frames: 0,
            key_a: Vec::new(),
            key_b: Vec::new(),
        }
    }

    fn answer(op: Op, v: Value) -> Event2 {
        match (op, v) {
            (Op::Reserve, Value::Integer(n)) if n > 0 => Event2::Cca(cca(
                ResultCode::SUCCESS,
                vec![UnitAmount::new(Unit::CREDITS, Decimal::from(n))],
            )),
            (Op::Reserve, Value::Integer(_)) => {
                Event2::Cca(cca(ResultCode::CREDIT_LIMIT_REACHED, Vec::new()))
            }
            (Op::Commit, Value::Integer(_)) => Event2::Cca(cca(ResultCode::SUCCESS, Vec::new())),
            // Redis 7 puts "ERR " before a script's own error code.
            (_, Value::Error(e)) => Event2::Failed(format!(
                "redis {}",
                e.trim_start_matches("ERR ")
                    .split_whitespace()
                    .next()
                    .unwrap_or("error")
            )),
            (_, other) => Event2::Failed(format!("unexpected redis reply {other:?}")),
        }
    }
}

enum Event2 {
    Cca(Message),
    Failed(String),
}

fn cca(code: ResultCode, granted: Vec<UnitAmount>) -> Message {
    let services = if code.is_success() {
        vec![ServiceAnswer {
            service_id: wl::RESERVE_SERVICE,
            result_code: code,
            granted,
            validity_time_s: 0,
            final_unit_action: None,
            redirect: String::new(),
            denial: None,
        }]
    } else {
        Vec::new()
    };
    Message::Cca(Cca {
        result_code: code,
        session_id: String::new(),
        request_number: 0,
        services,
        balance: Vec::new(),
        price: Vec::new(),
    })
}

impl Transport for RespTransport {
    fn send<'a>(
        &mut self,
        group: &[u32],
        message: impl Fn(u32) -> &'a Message,
        out: &mut BytesMut,
    ) -> Result<(), String> {
        // Refuse the whole group before writing any of it.
        for &lane in group {
            match message(lane) {
                Message::Ccr(c)
                    if matches!(
                        c.request_type,
                        RequestType::Initial | RequestType::Terminate
                    ) => {}
                Message::Ccr(c) => {
                    return Err(format!(
                        "{:?}: only the reserve-commit flow runs on Redis",
                        c.request_type
                    ))
                }
                _ => return Err("only credit-control requests go to Redis".into()),
            }
        }
        for &lane in group {
            let Message::Ccr(c) = message(lane) else {
                continue;
            };
            let s = c.services.first();
            let (op, sha, amount) = match c.request_type {
                RequestType::Initial => (
                    Op::Reserve,
                    &self.scripts.reserve,
                    s.map_or(0, |s| amount_of(&s.requested)),
                ),
                RequestType::Terminate => (
                    Op::Commit,
                    &self.scripts.commit,
                    s.map_or(0, |s| amount_of(&s.used)),
                ),
                _ => continue,
            };
            self.key_a.clear();
            let _ = write!(self.key_a, "acct:{}", c.account);
            self.key_b.clear();
            let _ = write!(self.key_b, "hold:{}", c.session_id);
            let mut num = [0u8; 20];
            let mut cur = std::io::Cursor::new(&mut num[..]);
            let _ = write!(cur, "{amount}");
            let n = cur.position() as usize;
            let mut win = [0u8; 20];
            let mut cur = std::io::Cursor::new(&mut win[..]);
            let _ = write!(cur, "{WINDOW_S}");
            let w = cur.position() as usize;
            encode_command(
                out,
                &[
                    b"EVALSHA",
                    sha.as_bytes(),
                    b"2",
                    &self.key_a,
                    &self.key_b,
                    &num[..n],
                    &win[..w],
                ],
            );
            self.order.push_back((lane, op));
            self.frames += 1;
        }
        Ok(())
    }

    fn decode(
        &mut self,
        input: &mut BytesMut,
        _out: &mut BytesMut,
        events: &mut Vec<Event>,
    ) -> Result<(), String> {
        while let Some((v, used)) = decode(input).map_err(|e| e.to_string())? {
            input.advance(used);
            let Some((lane, op)) = self.order.pop_front() else {
                events.push(Event::Stray(format!("redis reply nobody waits for: {v:?}")));
                continue;
            };
            events.push(match RespTransport::answer(op, v) {
                Event2::Cca(message) => Event::Answer {
                    lane,
                    message,
                    in_batch: false,
                },
                Event2::Failed(name) => Event::Failed { lane, name },
            });
        }
        Ok(())
    }

    fn abandon(&mut self) -> Vec<u32> {
        self.order.drain(..).map(|(l, _)| l).collect()
    }

    fn frames(&self) -> u64 {
        self.frames
    }
}

/// Checks the options a Redis run can honour.
pub fn validate(config: &LoadConfig) -> Result<(), LoadError> {
    config.validate_shape()?;
    if config.mix.flows() != vec![wl::Flow::ReserveCommit] {
        return Err(LoadError::Config(format!(
            "--mix {}: Redis runs the reserve-commit flow only",
            config.mix
        )));
    }
    if config.batch > 1 {
        return Err(LoadError::Config(
            "--batch: Redis has no BATCH frames; it pipelines up to --depth commands per connection".into(),
        ));
    }
    if config.think_ms > 0 {
        return Err(LoadError::Config(
            "--think-ms: not used against Redis (the flow has no think time)".into(),
        ));
    }
    Ok(())
}

/// Sets every account's balance (and no hold), in pipelined chunks.
pub async fn provision(config: &LoadConfig) -> Result<crate::report::Provisioning, LoadError> {
    let started = std::time::Instant::now();
    let mut conn = RedisConn::connect(&config.server)
        .await
        .map_err(|e| LoadError::Connect {
            server: config.server.clone(),
            reason: e,
        })?;
    let mut created = 0;
    let mut first = config.account_base;
    let end = config.account_base + config.accounts;
    while first < end {
        let last = (first + 1000).min(end);
        let commands: Vec<Vec<Vec<u8>>> = (first..last)
            .map(|a| {
                vec![
                    b"HSET".to_vec(),
                    format!("acct:{a}").into_bytes(),
                    b"balance".to_vec(),
                    config.balance.to_string().into_bytes(),
                    b"held".to_vec(),
                    b"0".to_vec(),
                ]
            })
            .collect();
        for r in conn
            .pipeline(&commands)
            .await
            .map_err(LoadError::Provision)?
        {
            match r {
                Value::Integer(_) => created += 1,
                other => return Err(LoadError::Provision(format!("HSET answered {other:?}"))),
            }
        }
        first = last;
    }
    Ok(crate::report::Provisioning {
        skipped: false,
        accounts_created: created,
        accounts_existing: 0,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Per account: (balance, held) in `credits`.
pub async fn read_balances(config: &LoadConfig) -> Result<Vec<(Decimal, Decimal)>, LoadError> {
    let mut conn = RedisConn::connect(&config.server)
        .await
        .map_err(|e| LoadError::Verify(e.to_string()))?;
    let mut cells = Vec::with_capacity(config.accounts as usize);
    let mut first = config.account_base;
    let end = config.account_base + config.accounts;
    let num = |v: &Value| match v {
        Value::Bulk(Some(b)) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .map(Decimal::from),
        _ => None,
    };
    while first < end {
        let last = (first + 1000).min(end);
        let commands: Vec<Vec<Vec<u8>>> = (first..last)
            .map(|a| {
                vec![
                    b"HMGET".to_vec(),
                    format!("acct:{a}").into_bytes(),
                    b"balance".to_vec(),
                    b"held".to_vec(),
                ]
            })
            .collect();
        let replies = conn.pipeline(&commands).await.map_err(LoadError::Verify)?;
        for (a, r) in (first..last).zip(replies) {
            match &r {
                Value::Array(Some(items)) if items.len() == 2 => {
                    match (num(&items[0]), num(&items[1])) {
                        (Some(b), Some(h)) => cells.push((b, h)),
                        _ => return Err(LoadError::Verify(format!("account {a}: {r:?}"))),
                    }
                }
                _ => return Err(LoadError::Verify(format!("account {a}: {r:?}"))),
            }
        }
        first = last;
    }
    Ok(cells)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(args: &[&str]) -> Vec<u8> {
        let mut out = BytesMut::new();
        let a: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
        encode_command(&mut out, &a);
        out.to_vec()
    }

    #[test]
    fn commands_encode_as_arrays_of_bulk_strings() {
        assert_eq!(enc(&["PING"]), b"*1\r\n$4\r\nPING\r\n".to_vec());
        assert_eq!(
            enc(&["HSET", "acct:7", "balance", ""]),
            b"*4\r\n$4\r\nHSET\r\n$6\r\nacct:7\r\n$7\r\nbalance\r\n$0\r\n\r\n".to_vec()
        );
        let mut out = BytesMut::new();
        encode_command(&mut out, &[b"SET", b"k", b"a\r\nb"]);
        assert_eq!(&out[..], b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\na\r\nb\r\n");
    }

    #[test]
    fn replies_decode_whole_or_not_at_all() {
        let cases: Vec<(&[u8], Value)> = vec![
            (b"+OK\r\n", Value::Simple("OK".into())),
            (
                b"-ERR no such script\r\n",
                Value::Error("ERR no such script".into()),
            ),
            (b":-1\r\n", Value::Integer(-1)),
            (b":4096\r\n", Value::Integer(4096)),
            (b"$-1\r\n", Value::Bulk(None)),
            (b"$0\r\n\r\n", Value::Bulk(Some(Vec::new()))),
            (b"$5\r\na\r\nbc\r\n", Value::Bulk(Some(b"a\r\nbc".to_vec()))),
            (b"*-1\r\n", Value::Array(None)),
            (
                b"*3\r\n$4\r\n1000\r\n$-1\r\n*1\r\n:7\r\n",
                Value::Array(Some(vec![
                    Value::Bulk(Some(b"1000".to_vec())),
                    Value::Bulk(None),
                    Value::Array(Some(vec![Value::Integer(7)])),
                ])),
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                decode(bytes),
                Ok(Some((want.clone(), bytes.len()))),
                "{bytes:?}"
            );
            // Every strict prefix is incomplete, never an error or a wrong value.
            for cut in 0..bytes.len() {
                assert_eq!(decode(&bytes[..cut]), Ok(None), "{bytes:?} cut at {cut}");
            }
            // Followed by more, it uses only its own bytes.
            let mut more = bytes.to_vec();
            more.extend_from_slice(b":1\r\n");
            assert_eq!(decode(&more), Ok(Some((want, bytes.len()))));
        }
    }

    #[test]
    fn bad_replies_are_errors_not_panics() {
        for bad in [
            &b"?x\r\n"[..],
            b":12a\r\n",
            b"$-2\r\n",
            b"$3\r\nabcXY",
            b"*-5\r\n",
            b"$99999999999\r\n",
            b"*2000000\r\n",
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
        let mut deep = Vec::new();
        for _ in 0..40 {
            deep.extend_from_slice(b"*1\r\n");
        }
        deep.extend_from_slice(b":1\r\n");
        assert!(decode(&deep).is_err());
        let long = vec![b'+'; LINE_MAX + 10];
        assert!(decode(&long).is_err());
    }

    #[test]
    fn transport_maps_the_flow_to_evalsha_and_replies_to_ccas() {
        let scripts = Scripts {
            reserve: "r".repeat(40),
            commit: "c".repeat(40),
        };
        let mut t = RespTransport::new(scripts);
        let initial = wl::ccr(
            "s1",
            RequestType::Initial,
            0,
            77,
            wl::RESERVE_SERVICE,
            &[(Unit::CREDITS, 1000)],
            &[],
        );
        let terminate = wl::ccr(
            "s1",
            RequestType::Terminate,
            1,
            77,
            wl::RESERVE_SERVICE,
            &[],
            &[(Unit::CREDITS, 0)],
        );
        let msgs = [initial, terminate];
        let mut out = BytesMut::new();
        t.send(&[3, 4], |l| &msgs[(l - 3) as usize], &mut out)
            .unwrap();
        let (first, used) = decode(&out).unwrap().unwrap();
        let bulk = |s: &str| Value::Bulk(Some(s.as_bytes().to_vec()));
        assert_eq!(
            first,
            Value::Array(Some(vec![
                bulk("EVALSHA"),
                bulk(&"r".repeat(40)),
                bulk("2"),
                bulk("acct:77"),
                bulk("hold:s1"),
                bulk("1000"),
                bulk("600"),
            ]))
        );
        let (second, _) = decode(&out[used..]).unwrap().unwrap();
        let Value::Array(Some(items)) = second else {
            panic!()
        };
        assert_eq!(items[1], bulk(&"c".repeat(40)));
        assert_eq!(items[5], bulk("0"), "a commit of nothing used");
        let mut input = BytesMut::from(&b":1000\r\n-USED_ABOVE_GRANT\r\n:5\r\n"[..]);
        let mut events = Vec::new();
        t.decode(&mut input, &mut BytesMut::new(), &mut events)
            .unwrap();
        match &events[0] {
            Event::Answer {
                lane: 3,
                message: Message::Cca(c),
                ..
            } => {
                assert!(c.result_code.is_success());
                assert_eq!(c.services[0].granted[0].amount, Decimal::from(1000));
            }
            _ => panic!("first event"),
        }
        assert!(
            matches!(&events[1], Event::Failed { lane: 4, name } if name == "redis USED_ABOVE_GRANT")
        );
        assert!(
            matches!(&events[2], Event::Stray(_)),
            "a reply nobody waits for"
        );
        // A refused reservation is CREDIT_LIMIT_REACHED.
        t.send(&[3], |l| &msgs[(l - 3) as usize], &mut BytesMut::new())
            .unwrap();
        let mut events = Vec::new();
        t.decode(
            &mut BytesMut::from(&b":-1\r\n"[..]),
            &mut BytesMut::new(),
            &mut events,
        )
        .unwrap();
        assert!(
            matches!(&events[0], Event::Answer { message: Message::Cca(c), .. } if c.result_code == ResultCode::CREDIT_LIMIT_REACHED)
        );
        // Other request types are refused, not sent.
        let event = wl::ccr(
            "e",
            RequestType::Event,
            0,
            1,
            30,
            &[(Unit::REQUESTS, 1)],
            &[],
        );
        assert!(t.send(&[0], |_| &event, &mut BytesMut::new()).is_err());
    }
}
