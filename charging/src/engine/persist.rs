//! The engine as a journaled machine: logging, replay, checkpoints,
//! restore and invariant checks.

#[allow(unused_imports)]
use super::*;

impl Machine for Engine {
    type Request = EngineRequest;
    type Response = EngineResponse;

    fn apply(
        &mut self,
        now: Timestamp,
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
        encode_request(&request, log);
        self.handle(now, request)
    }

    fn replay(&mut self, now: Timestamp, payload: &[u8]) -> Result<(), String> {
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
                let caller = decode_caller(&mut r).map_err(|e| e.to_string())?;
                let ccr = decode_ccr(&mut r).map_err(|e| e.to_string())?;
                self.handle(now, EngineRequest::CreditControl(caller, ccr));
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

    fn checkpoint(&mut self, now: Timestamp) -> Vec<SnapshotWrite> {
        self.forget_answers(now);
        let mut writes = self.ledger.checkpoint_writes(now);
        let session_key = |id: &str| {
            let mut k = vec![ENGINE_TAG, b's'];
            k.extend_from_slice(id.as_bytes());
            k
        };
        for id in std::mem::take(&mut self.dirty_sessions) {
            match self.sessions.get_mut(&id) {
                Some(session) => {
                    session.dirty = false;
                    let mut v = Vec::new();
                    encode_session(&mut v, session);
                    writes.push((session_key(&id), Some(v)));
                }
                None => writes.push((session_key(&id), None)),
            }
        }
        let mut blob = Vec::new();
        let mut newest = Timestamp(0);
        for key in std::mem::take(&mut self.answers_added) {
            if let Some((at, answer)) = self.answers.get(&key) {
                blob.bytes16(key.0.as_bytes());
                blob.u32(key.1);
                blob.time(*at);
                encode_answer(&mut blob, answer);
                newest = newest.max(*at);
            }
        }
        let blob_key = |seq: u64| {
            let mut k = vec![ENGINE_TAG, b'a'];
            k.extend_from_slice(&seq.to_be_bytes());
            k
        };
        if !blob.is_empty() {
            writes.push((blob_key(self.checkpoint_seq), Some(blob)));
            self.answer_blobs.push((self.checkpoint_seq, newest));
        }
        let window = self.config.answer_window_ms;
        self.answer_blobs.retain(|(seq, newest)| {
            let keep = newest.plus_ms(window) > now;
            if !keep {
                writes.push((blob_key(*seq), None));
            }
            keep
        });
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
        meta.time(self.answers_forgotten_below);
        writes.push((vec![ENGINE_TAG, b'0'], Some(meta)));
        writes
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
        let mut answers: Vec<(Timestamp, Arc<str>, u32, CreditControlAnswer)> = Vec::new();
        for (k, v) in engine_pairs {
            let mut r = Reader::new(&v);
            match k.get(1) {
                Some(b's') => {
                    let id: Arc<str> =
                        Arc::from(std::str::from_utf8(&k[2..]).map_err(|e| e.to_string())?);
                    let session = decode_session(&mut r).map_err(|e| e.to_string())?;
                    engine
                        .supervision
                        .push(Reverse((session.expires_at, id.clone())));
                    engine.sessions.insert(id, session);
                }
                Some(b'a') => {
                    let seq = u64::from_be_bytes(k[2..].try_into().map_err(|_| "answer blob key")?);
                    let mut newest = Timestamp(0);
                    while !r.is_empty() {
                        let id = std::str::from_utf8(
                            r.bytes16(SESSION_ID_LEN_MAX).map_err(|e| e.to_string())?,
                        )
                        .map_err(|e| e.to_string())?;
                        let number = r.u32().map_err(|e| e.to_string())?;
                        let at = r.time().map_err(|e| e.to_string())?;
                        let answer = decode_answer(&mut r).map_err(|e| e.to_string())?;
                        newest = newest.max(at);
                        answers.push((at, Arc::from(id), number, answer));
                    }
                    engine.answer_blobs.push((seq, newest));
                }
                Some(b'0') => {
                    engine.checkpoint_seq = r.u64().map_err(|e| e.to_string())?;
                    engine.answers_forgotten_below = r.time().map_err(|e| e.to_string())?;
                }
                Some(b'c') => {
                    engine.config = decode_config(&mut r).map_err(|e| e.to_string())?;
                    engine.config_dirty = false;
                }
                Some(b'r') => {
                    let n = r.u32().map_err(|e| e.to_string())? as usize;
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
        answers.sort_by_key(|(at, id, n, _)| (*at, id.clone(), *n));
        for (at, id, number, answer) in answers {
            if at < engine.answers_forgotten_below {
                continue;
            }
            engine.answers.insert((id.clone(), number), (at, answer));
            engine.answer_order.push_back((at, id, number));
        }
        Ok(engine)
    }

    fn check(&self) -> Result<(), String> {
        self.ledger.ledger.check_invariants()?;
        for (id, session) in &self.sessions {
            for g in &session.grants {
                if let Some(r) = g.reservation {
                    if self.ledger.ledger.reservation(r).is_none() {
                        // A grant whose reservation lapsed is harmless (the
                        // ledger expired it); note it rather than refuse.
                        tracing::debug!(session = %id, reservation = r.0, "grant's reservation already expired");
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
