//! The engine as a journaled machine: logging, replay, checkpoints,
//! restore and invariant checks.

#[allow(unused_imports)]
use super::*;

/// A checkpoint begun and not yet fully encoded: the sessions left to
/// look at, those written as they changed, the ledger's part once
/// complete, and the writes so far.
pub(super) struct PendingCheckpoint {
    /// Sessions still marked with this epoch hold the state to write.
    pub(super) epoch: u64,
    /// Sessions opened (true) or changed or ended (false) in the epoch.
    keys: Vec<(SessionKey, bool)>,
    /// Sessions written before they changed (few: those open when the
    /// checkpoint began and changed while it was encoded).
    pub(super) saved_on_change: HashSet<SessionKey>,
    ledger: Option<Vec<SnapshotWrite>>,
    writes: Vec<SnapshotWrite>,
}

impl PendingCheckpoint {
    /// Writes a session's state as it was when the checkpoint began
    /// (`None`: it did not exist).
    pub(super) fn save_session(&mut self, key: &SessionKey, session: Option<&Session>) {
        let value = session.map(|s| {
            let mut v = Vec::new();
            encode_session(&mut v, s);
            v
        });
        self.writes.push((session_key(b's', key), value));
    }
}

impl Machine for Engine {
    type Request = EngineRequest;
    type Response = EngineResponse;

    fn apply(
        &mut self,
        now: Timestamp,
        lsn: u64,
        request: EngineRequest,
        log: &mut Vec<u8>,
    ) -> EngineResponse {
        if let EngineRequest::Ledger(_, LedgerRequest::Apply(op)) = &request {
            if op.op == OpId::SERVER && matches!(op.command, Command::Sweep) {
                // Server-issued expiry sweep.
                log.u8(ENGINE_TAG);
                log.u8(REC_LEDGER);
                encode_caller(log, Caller::Admin);
                op.encode(log);
                return EngineResponse::Ledger(LedgerResponse::Applied(
                    self.ledger.ledger.apply(now, op),
                ));
            }
        }
        // Requests that break the protocol's consistency rules change
        // nothing and are never logged: whatever reaches the log decodes
        // within the same limits on replay.
        if let EngineRequest::CreditControl(_, ccr) = &request {
            if let Err(code) = self.validate(ccr) {
                return EngineResponse::CreditControl(CreditControlAnswer::error(code));
            }
        }
        if let EngineRequest::Configure(config) = &request {
            if let Err(e) = config.validate() {
                return EngineResponse::ConfigRefused(e);
            }
        }
        if let EngineRequest::Gauges { digest } = request {
            return EngineResponse::Gauges(self.gauges(lsn - 1, digest));
        }
        if let EngineRequest::CreditControl(caller, ccr) = &request {
            // A credit-control request is logged with its answer when it is
            // remembered (the record the answer index points at); one that
            // changed state without being remembered is logged bare; one
            // that changed nothing is not logged.
            self.lsn_hint = Some(lsn);
            self.changed = false;
            let response = self.handle(now, request.clone());
            self.lsn_hint = None;
            if !self.record.is_empty() {
                log.extend_from_slice(&self.record);
            } else if self.changed {
                log.u8(ENGINE_TAG);
                log.u8(REC_CCR);
                encode_caller(log, *caller);
                encode_ccr(log, ccr);
            }
            return response;
        }
        encode_request(&request, log);
        self.handle(now, request)
    }

    fn replay(&mut self, now: Timestamp, lsn: u64, payload: &[u8]) -> Result<(), String> {
        let mut r = Reader::new(payload);
        let tag = r.u8().map_err(|e| e.to_string())?;
        if tag == reckon_balances::machine::LEDGER_TAG {
            return self.ledger.replay_payload(now, payload);
        }
        if tag != ENGINE_TAG {
            return Err(format!("unknown log record tag {tag}"));
        }
        match r.u8().map_err(|e| e.to_string())? {
            REC_CCR => {
                // The answer logged after the request is recomputed.
                let (caller, ccr, _) = answers::decode_ccr_record(payload)
                    .map_err(|e| e.to_string())?
                    .ok_or("not a credit-control record")?;
                self.lsn_hint = Some(lsn);
                self.replaying = true;
                self.handle(now, EngineRequest::CreditControl(caller, ccr));
                self.replaying = false;
                self.lsn_hint = None;
                return Ok(());
            }
            REC_LEDGER => {
                let caller = decode_caller(&mut r).map_err(|e| e.to_string())?;
                let op = Operation::decode(&mut r).map_err(|e| e.to_string())?;
                if op.op == OpId::SERVER {
                    let _ = self.ledger.ledger.apply(now, &op);
                } else {
                    self.handle(now, EngineRequest::Ledger(caller, LedgerRequest::Apply(op)));
                }
            }
            REC_SUPERVISE => {
                self.supervise(now);
            }
            REC_CONFIG => {
                let config = decode_config(&mut r).map_err(|e| e.to_string())?;
                self.handle(now, EngineRequest::Configure(config));
            }
            REC_RATECARD => {
                let caller = decode_caller(&mut r).map_err(|e| e.to_string())?;
                let (_, op, name, text) = decode_rate_file(&mut r).map_err(|e| e.to_string())?;
                self.handle(
                    now,
                    EngineRequest::ApplyRateCard {
                        caller,
                        op,
                        name,
                        text,
                    },
                );
            }
            other => return Err(format!("unknown engine record {other}")),
        }
        r.finish().map_err(|e| e.to_string())
    }

    fn recall(&mut self, now: Timestamp, lsn: u64, payload: &[u8]) -> Result<(), String> {
        // The snapshot covers this record's effects; what memory keeps
        // outside it is where its answer is.
        let Some((_, ccr, Some(_))) =
            answers::decode_ccr_record(payload).map_err(|e| e.to_string())?
        else {
            return Ok(());
        };
        let Some(org) = self.ledger.ledger.root_of(ccr.account) else {
            return Err(format!(
                "record {lsn} names account {} the snapshot does not hold",
                ccr.account.0
            ));
        };
        self.answers.forget(now, self.config.answer_window_ms);
        let key = self.answers.key(org, &ccr.session_id, ccr.request_number);
        let at = now.max(Timestamp(ccr.timestamp_ms));
        if at.plus_ms(self.config.answer_window_ms) > now && at > self.answers.forgotten_up_to() {
            self.answers.insert(at, key, lsn);
        }
        Ok(())
    }

    fn log_retention_ms(&self) -> u64 {
        // Remembered answers are read back from the log for the window
        // after the later of their answer and their request's stamp.
        let window = self.config.answer_window_ms;
        window + future_skew_ms(window)
    }

    fn attach_log(&mut self, reader: reckon_balances::journal::LogReader) {
        self.log = Some(reader);
        self.recent.bound(answers::RECENT_BYTES_MAX);
    }

    fn checkpoint_begin(&mut self, now: Timestamp) {
        if self.pending.is_some() {
            return;
        }
        let window = self.config.answer_window_ms;
        self.answers.forget(now, window);
        self.ledger.checkpoint_begin(now);
        let epoch = self.session_epoch;
        self.session_epoch = match epoch.wrapping_add(1) {
            0 => 1,
            e => e,
        };
        let mut writes = Vec::new();
        if self.rates_dirty {
            self.rates_dirty = false;
            let mut v = Vec::new();
            v.u32(self.rate_files.len() as u32);
            for f in &self.rate_files {
                encode_rate_file(&mut v, f.at, f.op, &f.name, &f.text);
            }
            writes.push((vec![ENGINE_TAG, b'r'], Some(v)));
        }
        if self.config_dirty {
            self.config_dirty = false;
            let mut v = Vec::new();
            encode_config(&mut v, &self.config);
            writes.push((vec![ENGINE_TAG, b'c'], Some(v)));
        }
        self.checkpoint_seq += 1;
        let mut meta = Vec::new();
        meta.u64(self.checkpoint_seq);
        meta.time(self.answers.forgotten_up_to());
        writes.push((vec![ENGINE_TAG, b'0'], Some(meta)));
        self.pending = Some(Box::new(PendingCheckpoint {
            epoch,
            keys: std::mem::take(&mut self.dirty_sessions),
            saved_on_change: HashSet::new(),
            ledger: None,
            writes,
        }));
    }

    fn checkpoint_step(&mut self, budget: usize) -> Option<Vec<SnapshotWrite>> {
        let Some(mut p) = self.pending.take() else {
            return Some(Vec::new());
        };
        if p.ledger.is_none() {
            p.ledger = self.ledger.ledger.checkpoint_step(budget);
        }
        let mut left = budget;
        while left > 0 {
            let Some((key, opened)) = p.keys.pop() else {
                break;
            };
            left -= 1;
            match self.sessions.get_mut(&key) {
                // Open when the checkpoint began: its mark says whether it
                // still holds the state to write (else that was written
                // when it changed, or by an earlier entry).
                Some(session) if session.born <= p.epoch => {
                    if session.mark == p.epoch {
                        p.save_session(&key, Some(session));
                        session.mark = 0;
                    }
                }
                // Opened in the epoch and gone (or replaced) since: never in
                // a checkpoint, or written when it ended.
                _ if opened => {}
                // A session the snapshot may hold changed or ended, and no
                // session of that id was open when the checkpoint began,
                // unless it was written as it ended.
                _ => {
                    if !p.saved_on_change.contains(&key) {
                        p.save_session(&key, None);
                    }
                }
            }
        }
        if p.keys.is_empty() {
            if let Some(mut writes) = p.ledger.take() {
                // Keys are disjoint: append the shorter list to the longer.
                if writes.len() < p.writes.len() {
                    std::mem::swap(&mut writes, &mut p.writes);
                }
                writes.append(&mut p.writes);
                return Some(writes);
            }
        }
        self.pending = Some(p);
        None
    }

    fn checkpoint_background(&mut self) -> Option<reckon_balances::journal::Deferred> {
        Some(self.ledger.audit_encoder())
    }

    fn restore(pairs: &mut dyn Iterator<Item = SnapshotPair>) -> Result<Self, String> {
        let mut engine_pairs = Vec::new();
        let mut ledger_pairs = pairs.filter_map(|(k, v)| {
            if k.first() == Some(&ENGINE_TAG) {
                engine_pairs.push((k, v));
                None
            } else {
                Some((k, v))
            }
        });
        let ledger = LedgerMachine::restore_pairs(&mut ledger_pairs)?;
        drop(ledger_pairs);
        let mut engine = Engine::new(ledger, EngineConfig::default());
        let text = |e: DecodeError| e.to_string();
        for (k, v) in engine_pairs {
            let mut r = Reader::new(&v);
            match k.get(1) {
                Some(b's') => {
                    let key = decode_session_key(&k)?;
                    let session = decode_session(&mut r).map_err(text)?;
                    engine
                        .supervision
                        .push(Reverse((session.expires_at, key.clone())));
                    engine.sessions.insert(key, session);
                }
                Some(b'0') => {
                    engine.checkpoint_seq = r.u64().map_err(text)?;
                    engine.answers.set_forgotten_up_to(r.time().map_err(text)?);
                }
                Some(b'c') => {
                    engine.config = decode_config(&mut r).map_err(text)?;
                    engine.config_dirty = false;
                    engine.answers.set_cap(engine.config.answers_max as usize);
                }
                Some(b'r') => {
                    let n = r.u32().map_err(text)? as usize;
                    if n > RATE_FILES_MAX {
                        return Err("too many rate card files".into());
                    }
                    for _ in 0..n {
                        let (at, op, name, text) =
                            decode_rate_file(&mut r).map_err(|e| e.to_string())?;
                        // Re-applying each file at its own time rebuilds the
                        // book, the active card and the stored results.
                        engine.apply_rate_card(at, op, name, text);
                    }
                    engine.rates_dirty = false;
                }
                _ => return Err("unknown engine snapshot key".into()),
            }
        }
        engine.refresh_units();
        Ok(engine)
    }

    fn check(&self) -> Result<(), String> {
        self.ledger.ledger.check_invariants()?;
        for (key, session) in &self.sessions {
            for g in &session.grants {
                if let Some(r) = g.reservation {
                    if self.ledger.ledger.reservation(r).is_none() {
                        // A grant whose reservation lapsed is harmless (the
                        // ledger expired it); note it rather than refuse.
                        tracing::debug!(org = key.0 .0, session = %key.1, reservation = r.0, "grant's reservation already expired");
                    }
                }
            }
        }
        Ok(())
    }

    fn due(&self, now: Timestamp) -> Option<EngineRequest> {
        if self.supervision_due(now) {
            return Some(EngineRequest::Supervise);
        }
        self.ledger
            .due_sweep(now)
            .map(|op| EngineRequest::Ledger(Caller::Admin, LedgerRequest::Apply(op)))
    }
}

/// Snapshot key of a session (`kind` b's') or an ended session (b'x'):
/// the organisation, big-endian, then the id.
fn session_key(kind: u8, key: &SessionKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(10 + key.1.len());
    k.push(ENGINE_TAG);
    k.push(kind);
    k.extend_from_slice(&key.0 .0.to_be_bytes());
    k.extend_from_slice(key.1.as_bytes());
    k
}

fn decode_session_key(k: &[u8]) -> Result<SessionKey, String> {
    if k.len() < 10 || k.len() > 10 + SESSION_ID_LEN_MAX {
        return Err("bad session key".into());
    }
    let org = u64::from_be_bytes(k[2..10].try_into().map_err(|_| "bad session key")?);
    let id = std::str::from_utf8(&k[10..]).map_err(|e| e.to_string())?;
    Ok((AccountId(org), Arc::from(id)))
}
