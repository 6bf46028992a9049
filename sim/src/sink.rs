//! `reckon-sim sink`: a stand-in server that answers every credit-control
//! request SUCCESS at once, granting what was asked, and stores nothing.
//!
//! It exists to measure the load tool itself: driven against the sink, the
//! generator's throughput and CPU per request show its own ceiling on this
//! machine, far above what any real server here reaches, so a reader can
//! tell how much of a real run's CPU the generator took. It speaks the
//! native protocol's HELLO, PING, CCR and BATCH (anything else gets ERROR
//! UNEXPECTED_KIND) and accepts any credential. Frames are bounded by the
//! default maximum frame length; a malformed frame closes its connection.

use bytes::{Buf, BytesMut};
use reckon_protocol::codes::{ErrorCode, ResultCode};
use reckon_protocol::frame::{decode_frame_with_limit, Frame};
use reckon_protocol::limits::DEFAULT_MAX_FRAME;
use reckon_protocol::message::{
    BatchResult, Cca, Ccr, ErrorReply, HelloOk, Message, ServiceAnswer,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The answer the sink gives a CCR: SUCCESS, every service granted what it asked for.
pub fn answer(c: &Ccr) -> Message {
    Message::Cca(Cca {
        result_code: ResultCode::SUCCESS,
        session_id: c.session_id.clone(),
        request_number: c.request_number,
        services: c
            .services
            .iter()
            .map(|s| ServiceAnswer {
                service_id: s.service_id,
                result_code: ResultCode::SUCCESS,
                granted: s.requested.clone(),
                validity_time_s: 0,
                final_unit_action: None,
                redirect: String::new(),
                denial: None,
            })
            .collect(),
        balance: Vec::new(),
        price: Vec::new(),
    })
}

fn reply(body: Message) -> Option<Message> {
    let unexpected = |kind| {
        Message::Error(ErrorReply {
            code: ErrorCode::UNEXPECTED_KIND,
            message: format!("the sink answers CCR and BATCH only, not {kind:?}"),
        })
    };
    Some(match body {
        Message::Hello(_) => Message::HelloOk(HelloOk {
            version: 1,
            org_id: 0,
            is_admin: true,
            max_frame: DEFAULT_MAX_FRAME,
            keepalive_s: 0,
            server_name: format!("reckon-sim sink {}", env!("CARGO_PKG_VERSION")),
        }),
        Message::Ping => Message::Pong,
        Message::Pong => return None,
        Message::Ccr(c) => answer(&c),
        Message::Batch(b) => Message::BatchResult(BatchResult {
            entries: b
                .entries
                .iter()
                .map(|e| match e {
                    Message::Ccr(c) => answer(c),
                    other => unexpected(other.kind()),
                })
                .collect(),
        }),
        other => unexpected(other.kind()),
    })
}

async fn connection(mut sock: TcpStream) {
    let _ = sock.set_nodelay(true);
    let mut input = BytesMut::with_capacity(64 * 1024);
    let mut out = BytesMut::with_capacity(64 * 1024);
    loop {
        loop {
            match decode_frame_with_limit(&input, DEFAULT_MAX_FRAME) {
                Ok(Some((frame, used))) => {
                    input.advance(used);
                    if let Some(body) = reply(frame.body) {
                        if Frame::new(frame.request_id, body).encode(&mut out).is_err() {
                            return;
                        }
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        if !out.is_empty() {
            if sock.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        match sock.read_buf(&mut input).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Answers every connection on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener) {
    while let Ok((sock, _)) = listener.accept().await {
        tokio::spawn(connection(sock));
    }
}
