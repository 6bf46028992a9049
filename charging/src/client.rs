//! An async client for the native protocol, with pipelining.
//!
//! One connection carries many requests at once: every call gets a fresh
//! request id, the frame is written, and the answer (which may arrive out
//! of order) is routed back to the caller by that id. `Client` is cheap to
//! clone; clones share the connection.

use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use reckon_protocol::codec::ReckonCodec;
use reckon_protocol::frame::Frame;
use reckon_protocol::message::{
    Alert, AlertSubscribe, AlertSubscribed, ErrorReply, Hello, HelloOk, Message,
};
use reckon_protocol::ProtocolError;
use reckon_protocol::{PROTOCOL_VERSION, PROTOCOL_VERSION_MIN};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{FramedRead, FramedWrite};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting or writing failed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The server answered the handshake with an error.
    #[error("handshake refused: {0}")]
    Handshake(String),
    /// The connection closed before the answer came.
    #[error("connection closed before the answer arrived")]
    Closed,
    /// The server sent something unexpected.
    #[error("protocol: {0}")]
    Protocol(String),
    /// No answer within the client's timeout; the outcome is unknown:
    /// resend the same request (same op id or session id and number).
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
}

/// How long [`Client::connect`] waits for the connection and handshake, and
/// [`Client::call`] for an answer, unless told otherwise.
pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Message>>>>;
/// Where pushed alerts go, once subscribed.
type AlertRoute = Arc<Mutex<Option<mpsc::UnboundedSender<Alert>>>>;

/// A connection to a Reckon server.
#[derive(Clone)]
pub struct Client {
    out: mpsc::UnboundedSender<Frame>,
    pending: Pending,
    /// Set (before the pending answers are dropped) once the connection is
    /// gone, so a call made afterwards fails at once instead of waiting.
    closed: Arc<std::sync::atomic::AtomicBool>,
    timeout: std::time::Duration,
    next_id: Arc<AtomicU64>,
    alerts: AlertRoute,
    op_base: u128,
    op_counter: Arc<AtomicU64>,
    /// What the server said in the handshake.
    pub hello: HelloOk,
}

fn random_u128() -> u128 {
    use std::io::Read;
    let mut raw = [0u8; 16];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .is_err()
    {
        // Fall back on time and pid: unique enough for op id prefixes.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return (t.as_nanos() << 32) ^ std::process::id() as u128;
    }
    u128::from_le_bytes(raw)
}

impl Client {
    /// Connects and authenticates with a credential, waiting at most
    /// [`DEFAULT_TIMEOUT`].
    pub async fn connect(addr: &str, credential: &str) -> Result<Client, ClientError> {
        Self::connect_with_timeout(addr, credential, DEFAULT_TIMEOUT).await
    }

    /// Connects and authenticates; `timeout` bounds the handshake and, from
    /// then on, every call.
    pub async fn connect_with_timeout(
        addr: &str,
        credential: &str,
        timeout: std::time::Duration,
    ) -> Result<Client, ClientError> {
        Self::connect_version(addr, credential, timeout, PROTOCOL_VERSION).await
    }

    /// Connects offering protocol versions 1..=`max_version` (1: an older
    /// client, whose CCRs carry no attributes).
    pub async fn connect_version(
        addr: &str,
        credential: &str,
        timeout: std::time::Duration,
        max_version: u16,
    ) -> Result<Client, ClientError> {
        tokio::time::timeout(timeout, Self::open(addr, credential, timeout, max_version))
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
    }

    async fn open(
        addr: &str,
        credential: &str,
        timeout: std::time::Duration,
        max_version: u16,
    ) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (read, write) = stream.into_split();
        let mut frames = FramedRead::new(read, ReckonCodec::new());
        let mut sink = FramedWrite::new(write, ReckonCodec::new());
        sink.send(Frame::new(
            1,
            Message::Hello(Hello {
                min_version: PROTOCOL_VERSION_MIN,
                max_version,
                credential: credential.to_string(),
                client_name: format!("reckon-client {}", env!("CARGO_PKG_VERSION")),
            }),
        ))
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let hello = match frames.next().await {
            Some(Ok(Frame {
                body: Message::HelloOk(ok),
                ..
            })) => ok,
            Some(Ok(Frame {
                body: Message::Error(e),
                ..
            })) => {
                return Err(ClientError::Handshake(format!(
                    "{} ({})",
                    e.message,
                    e.code.name().unwrap_or("unknown code")
                )))
            }
            Some(Ok(other)) => {
                return Err(ClientError::Protocol(format!(
                    "unexpected {:?}",
                    other.kind()
                )))
            }
            Some(Err(e)) => return Err(ClientError::Protocol(e.to_string())),
            None => return Err(ClientError::Closed),
        };
        frames.decoder_mut().set_max_frame(hello.max_frame);
        sink.encoder_mut().set_max_frame(hello.max_frame);
        frames.decoder_mut().set_version(hello.version);
        sink.encoder_mut().set_version(hello.version);
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let (out, mut out_rx) = mpsc::unbounded_channel::<Frame>();
        let refusals = pending.clone();
        tokio::spawn(async move {
            while let Some(frame) = out_rx.recv().await {
                let id = frame.request_id;
                match sink.feed(frame).await {
                    Ok(()) => {}
                    Err(ProtocolError::Io(_)) => return,
                    Err(e) => {
                        // A request the protocol cannot carry (a string or
                        // list over its limit, attributes on a version-1
                        // connection): nothing was written, so the caller
                        // gets the ERROR a server would answer and the
                        // connection goes on.
                        if let Some(waiter) = refusals.lock().remove(&id) {
                            let _ = waiter.send(Message::Error(ErrorReply {
                                code: e.code(),
                                message: e.to_string(),
                            }));
                        }
                        continue;
                    }
                }
                if out_rx.is_empty() && SinkExt::<Frame>::flush(&mut sink).await.is_err() {
                    return;
                }
            }
        });
        let routes = pending.clone();
        let alerts: AlertRoute = Arc::new(Mutex::new(None));
        let pushed = alerts.clone();
        // Weak: the reader must not keep the writer (and so the
        // connection) alive once every `Client` handle is dropped.
        let pong = out.downgrade();
        let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader_closed = closed.clone();
        tokio::spawn(async move {
            while let Some(Ok(frame)) = frames.next().await {
                if matches!(frame.body, Message::Ping) {
                    if let Some(pong) = pong.upgrade() {
                        let _ = pong.send(Frame::new(frame.request_id, Message::Pong));
                    }
                    continue;
                }
                if let (0, Message::Alert(a)) = (frame.request_id, &frame.body) {
                    if let Some(route) = pushed.lock().as_ref() {
                        let _ = route.send(a.clone());
                    }
                    continue;
                }
                if let Some(waiter) = routes.lock().remove(&frame.request_id) {
                    let _ = waiter.send(frame.body);
                }
            }
            // Connection gone: every waiter learns it by its sender dropping,
            // and later calls by the flag (set first, see `call`).
            reader_closed.store(true, Ordering::SeqCst);
            routes.lock().clear();
            pushed.lock().take();
        });
        Ok(Client {
            out,
            pending,
            closed,
            timeout,
            next_id: Arc::new(AtomicU64::new(2)),
            alerts,
            op_base: random_u128() & !(u64::MAX as u128),
            op_counter: Arc::new(AtomicU64::new(1)),
            hello,
        })
    }

    /// Subscribes to spend-control alerts after `after` (protocol version
    /// 3): the server's answer, and the alerts as they arrive (the backlog
    /// first); the receiver ends when the connection does. A later
    /// subscription replaces this one.
    pub async fn subscribe_alerts(
        &self,
        after: u64,
    ) -> Result<(AlertSubscribed, mpsc::UnboundedReceiver<Alert>), ClientError> {
        let (tx, rx) = mpsc::unbounded_channel();
        // Routed before asking: the server pushes right after its answer.
        *self.alerts.lock() = Some(tx);
        match self
            .call(Message::AlertSubscribe(AlertSubscribe { after }))
            .await?
        {
            Message::AlertSubscribed(s) => Ok((s, rx)),
            Message::Error(e) => Err(ClientError::Protocol(format!(
                "{}: {}",
                e.code.name().unwrap_or("error"),
                e.message
            ))),
            other => Err(ClientError::Protocol(format!(
                "unexpected {:?}",
                other.kind()
            ))),
        }
    }

    /// A fresh operation id for an idempotent admin request; reuse the same
    /// id when retrying the same request.
    pub fn new_op_id(&self) -> u128 {
        self.op_base | self.op_counter.fetch_add(1, Ordering::Relaxed) as u128
    }

    /// Sends one request and waits for its answer (other calls may be in
    /// flight on the same connection meanwhile).
    pub async fn call(&self, message: Message) -> Result<Message, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(id, tx);
        // Checked after inserting: the reader sets the flag before it drops
        // the pending answers, so either it drops ours or we see the flag.
        if self.closed.load(Ordering::SeqCst) || self.out.send(Frame::new(id, message)).is_err() {
            self.pending.lock().remove(&id);
            return Err(ClientError::Closed);
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(answer) => answer.map_err(|_| ClientError::Closed),
            Err(_) => {
                self.pending.lock().remove(&id);
                Err(ClientError::Timeout(self.timeout))
            }
        }
    }

    /// Whether the connection is known to be gone.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Sends many requests in one BATCH frame; answers come in order.
    pub async fn batch(&self, entries: Vec<Message>) -> Result<Vec<Message>, ClientError> {
        match self
            .call(Message::Batch(reckon_protocol::message::Batch { entries }))
            .await?
        {
            Message::BatchResult(r) => Ok(r.entries),
            Message::Error(e) => Err(ClientError::Protocol(format!(
                "{} ({})",
                e.message,
                e.code.name().unwrap_or("unknown code")
            ))),
            other => Err(ClientError::Protocol(format!(
                "unexpected {:?}",
                other.kind()
            ))),
        }
    }
}
