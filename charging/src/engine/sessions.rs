//! Charging sessions: INITIAL, UPDATE, TERMINATE, grants, settlement of
//! used units, supervision of silent sessions.

#[allow(unused_imports)]
use super::*;

/// One (service, unit) grant of a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Grant {
    pub(super) service: ServiceId,
    pub(super) unit: Unit,
    pub(super) reservation: Option<ReservationId>,
    /// When the grant was made: usage reported against it is rated over
    /// [granted_at, report time], so a tariff change in between splits it.
    pub(super) granted_at: Timestamp,
}

/// What a session (or event) was charged for one (service, unit), net of
/// refunds: what an organisation may still have refunded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Charge {
    pub(super) service: ServiceId,
    /// The unit used (e.g. tokens_out).
    pub(super) unit: Unit,
    /// The unit debited for it (e.g. USD).
    pub(super) charge_unit: Unit,
    /// The account the usage was charged to.
    pub(super) account: AccountId,
    /// Units charged and not refunded.
    pub(super) units: Decimal,
    /// Amount collected and not refunded.
    pub(super) amount: Amount,
}

/// Adds collected usage to a session's charges.
pub(super) fn add_charge(charges: &mut Vec<Charge>, new: Charge) {
    match charges.iter_mut().find(|c| {
        c.service == new.service && c.unit == new.unit && c.charge_unit == new.charge_unit
    }) {
        Some(c) => {
            c.units += new.units;
            c.amount = Amount::from_nanos(c.amount.nanos() + new.amount.nanos());
        }
        None => charges.push(new),
    }
}

/// An open charging session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Session {
    pub(super) account: AccountId,
    pub(super) last_number: u32,
    pub(super) grants: Vec<Grant>,
    pub(super) expires_at: Timestamp,
    /// Usage collected so far (refundable once the session has ended).
    pub(super) charges: Vec<Charge>,
    /// The checkpoint epoch this session was last changed in; 0 when clean
    /// (see [`Engine::take_session`]).
    pub(super) mark: u64,
    /// The checkpoint epoch it opened in (0: restored). One that ends in
    /// the epoch it opened in was never in a checkpoint.
    pub(super) born: u64,
}

impl Engine {
    /// Marks a session changed for the next checkpoint.
    pub(super) fn mark(&mut self, key: &SessionKey) {
        if let Some(s) = self.sessions.get_mut(key) {
            if s.mark != self.session_epoch {
                s.mark = self.session_epoch;
                self.dirty_sessions.push((key.clone(), false));
            }
        }
    }

    /// Notes that a session ended (it is no longer in the map).
    pub(super) fn ended(&mut self, key: &SessionKey, session: &Session) {
        // Opened since the last checkpoint began: no checkpoint holds it,
        // so there is nothing to delete (most short sessions).
        if session.born != self.session_epoch {
            self.dirty_sessions.push((key.clone(), false));
        }
    }

    /// Takes a session out to change or end it. While a checkpoint is being
    /// encoded, a session it must still write is written first, as it was
    /// when the checkpoint began (copy on write).
    pub(super) fn take_session(&mut self, key: &SessionKey) -> Option<Session> {
        let session = self.sessions.remove(key)?;
        if let Some(pending) = self.pending.as_mut() {
            if session.mark == pending.epoch
                && self.planted != Some(PlantedBug::CheckpointWithoutCopy)
            {
                pending.save_session(key, Some(&session));
                pending.saved_on_change.insert(key.clone());
            }
        }
        Some(session)
    }

    pub(super) fn initial(
        &mut self,
        now: Timestamp,
        key: &SessionKey,
        ccr: &CreditControlRequest,
    ) -> CreditControlAnswer {
        if self.sessions.contains_key(key) {
            // Session ids are never reused (an ended session's INITIAL is
            // remembered: the answer index refuses its id).
            return CreditControlAnswer::error(result_code::REQUEST_ID_REUSED);
        }
        if self.sessions.len() >= SESSIONS_MAX {
            return CreditControlAnswer::error(result_code::TOO_BUSY);
        }
        let mut session = Session {
            account: ccr.account,
            last_number: ccr.request_number,
            grants: Vec::new(),
            expires_at: now,
            charges: Vec::new(),
            mark: self.session_epoch,
            born: self.session_epoch,
        };
        let mut answers = Vec::with_capacity(ccr.services.len());
        let mut validity_max = 0u32;
        for service in &ccr.services {
            let answer = self.grant(now, ccr, &mut session, service);
            validity_max = validity_max.max(answer.validity_time_s);
            answers.push(answer);
        }
        let answer = self.finish_answer(answers);
        if answer.result_code != result_code::SUCCESS {
            // Refused as a whole: nothing was applied, so no session opens
            // (a retransmission gets this answer from the answer store).
            return answer;
        }
        session.expires_at =
            now.plus_ms((validity_max as u64 + self.config.supervision_grace_s as u64) * 1000);
        self.watch(session.expires_at, key);
        self.sessions.insert(key.clone(), session);
        self.dirty_sessions.push((key.clone(), true));
        self.changed = true;
        answer
    }

    /// Reserves the next grant of every unit a service asks for.
    pub(super) fn grant(
        &mut self,
        now: Timestamp,
        ccr: &CreditControlRequest,
        session: &mut Session,
        service: &ServiceRequest,
    ) -> ServiceAnswer {
        let wanted: Vec<Quantity> = if service.requested.is_empty() {
            let p = self.policy(service.service, None);
            vec![(p.default_unit, p.default_grant)]
        } else {
            service.requested.clone()
        };
        let mut granted = Vec::with_capacity(wanted.len());
        let mut result = result_code::SUCCESS;
        let mut denial = None;
        let mut final_units = false;
        let mut validity = u32::MAX;
        for (unit, asked) in wanted {
            let policy = self.policy(service.service, Some(unit));
            let asked = asked.min(policy.max_grant).trunc();
            validity = validity.min(policy.validity_s);
            let (charge_unit, per_unit) = self.tariff(service.service, unit, now);
            let want_money = match self.cost(&per_unit, asked) {
                Ok(m) => m,
                Err(code) => {
                    result = code;
                    continue;
                }
            };
            if self.ledger.ledger.inactive_ancestor(ccr.account).is_some() {
                result = result_code::END_USER_SERVICE_DENIED;
                continue;
            }
            // Size the grant from what the account can spend now, so a low
            // balance yields a smaller grant rather than a refusal.
            let (available, bound_by) = match self.ledger.ledger.availability(
                now,
                ccr.account,
                charge_unit,
                Some(service.service),
            ) {
                Ok(a) => (a.amount, a.bound_by),
                Err(_) => (Amount::ZERO, None),
            };
            let units = self
                .units_for(&per_unit, available.min(want_money))
                .min(asked);
            if units < asked {
                final_units = true;
            }
            let money = self.cost(&per_unit, units).unwrap_or(Amount::ZERO);
            if units.is_zero() || money.is_zero() {
                if units.is_zero() && result == result_code::SUCCESS {
                    result = result_code::CREDIT_LIMIT_REACHED;
                    denial = Some(Denial::bounded_by(bound_by));
                }
                if units.is_zero() {
                    continue;
                }
            }
            let reserve = Command::Reserve {
                account: ccr.account,
                unit: charge_unit,
                amount: money.max(Amount::from_nanos(1)),
                min_amount: money.max(Amount::from_nanos(1)),
                service: Some(service.service),
                expires_at: now.plus_ms(
                    (policy.validity_s as u64 + self.config.supervision_grace_s as u64) * 1000,
                ),
            };
            match self.ledger_apply(now, reserve) {
                Ok(Outcome::Reserved { reservation, .. }) => {
                    granted.push((unit, units));
                    session
                        .grants
                        .retain(|g| !(g.service == service.service && g.unit == unit));
                    session.grants.push(Grant {
                        service: service.service,
                        unit,
                        reservation: Some(reservation),
                        granted_at: now,
                    });
                }
                Ok(_) => result = result_code::UNABLE_TO_COMPLY,
                Err(
                    ref e @ (LedgerError::InsufficientFunds { .. }
                    | LedgerError::LimitExceeded { .. }),
                ) => {
                    if result == result_code::SUCCESS {
                        result = result_code::CREDIT_LIMIT_REACHED;
                        denial = Denial::of(e);
                    }
                }
                Err(LedgerError::AccountNotActive { .. }) => {
                    result = result_code::END_USER_SERVICE_DENIED
                }
                Err(LedgerError::AccountNotFound(_)) => result = result_code::USER_UNKNOWN,
                Err(_) => result = result_code::UNABLE_TO_COMPLY,
            }
        }
        if result != result_code::SUCCESS && !granted.is_empty() {
            // Some units granted, some not: the grant stands, the client is
            // told the rest of the credit is gone.
            final_units = true;
            result = result_code::SUCCESS;
        }
        ServiceAnswer {
            service: service.service,
            result_code: result,
            granted,
            validity_time_s: if validity == u32::MAX { 0 } else { validity },
            final_unit_action: if final_units {
                self.config.final_unit_action
            } else {
                FinalUnitAction::None
            },
            denial: denial.filter(|_| result != result_code::SUCCESS),
        }
    }

    /// Debits the cost of used units from a service's grants; returns the
    /// per-service result (CREDIT_LIMIT_REACHED when usage exceeded what
    /// could be collected).
    pub(super) fn settle(
        &mut self,
        now: Timestamp,
        ccr: &CreditControlRequest,
        session: &mut Session,
        service: &ServiceRequest,
    ) -> u32 {
        let mut result = result_code::SUCCESS;
        for (unit, used) in &service.used {
            let (charge_unit, mut per_unit) = self.tariff(service.service, *unit, now);
            // Usage under a grant is rated over the time since the grant, so
            // a tariff change in between prices each side at its own rate.
            let granted_at = session
                .grants
                .iter()
                .find(|g| g.service == service.service && g.unit == *unit)
                .map(|g| g.granted_at);
            if let (Some(since), Rate::Card { at, span_ms, .. }) = (granted_at, &mut per_unit) {
                if since < now {
                    *at = since.0;
                    *span_ms = now.0 - since.0;
                }
            }
            let reservation = session
                .grants
                .iter_mut()
                .find(|g| g.service == service.service && g.unit == *unit)
                .and_then(|g| g.reservation.take());
            let cost = match self.cost(&per_unit, *used) {
                Ok(c) => c,
                Err(code) => {
                    // Usage that cannot be priced is never free: the grant
                    // reserved for it is taken in full.
                    result = code;
                    if let Some(r) = reservation {
                        let remaining = self
                            .ledger
                            .ledger
                            .reservation(r)
                            .map(|v| v.remaining)
                            .unwrap_or(Amount::ZERO);
                        if self
                            .ledger_apply(
                                now,
                                Command::Commit {
                                    reservation: r,
                                    used: remaining,
                                    release_rest: true,
                                },
                            )
                            .is_ok()
                            && remaining.is_positive()
                        {
                            add_charge(
                                &mut session.charges,
                                Charge {
                                    service: service.service,
                                    unit: *unit,
                                    charge_unit,
                                    account: ccr.account,
                                    units: *used,
                                    amount: remaining,
                                },
                            );
                        }
                        tracing::warn!(session = %ccr.session_id, unit = %unit, "usage could not be priced; the whole grant was charged");
                    }
                    continue;
                }
            };
            let mut left = cost;
            if let Some(r) = reservation {
                let remaining = self
                    .ledger
                    .ledger
                    .reservation(r)
                    .map(|v| v.remaining)
                    .unwrap_or(Amount::ZERO);
                let covered = left.min(remaining);
                if self
                    .ledger_apply(
                        now,
                        Command::Commit {
                            reservation: r,
                            used: covered,
                            release_rest: true,
                        },
                    )
                    .is_ok()
                {
                    left = Amount::from_nanos(left.nanos() - covered.nanos());
                }
            }
            if left.is_positive() {
                // Usage beyond the grant (or after the grant lapsed) is still
                // charged: debit what the account can pay now.
                let reserved = self.ledger_apply(
                    now,
                    Command::Reserve {
                        account: ccr.account,
                        unit: charge_unit,
                        amount: left,
                        min_amount: Amount::from_nanos(1),
                        service: Some(service.service),
                        expires_at: now.plus_ms(60_000),
                    },
                );
                if let Ok(Outcome::Reserved {
                    reservation,
                    granted,
                    ..
                }) = reserved
                {
                    let _ = self.ledger_apply(
                        now,
                        Command::Commit {
                            reservation,
                            used: granted,
                            release_rest: true,
                        },
                    );
                    left = Amount::from_nanos(left.nanos() - granted.nanos());
                }
                if left.is_positive() {
                    tracing::warn!(session = %ccr.session_id, uncollected = %left, unit = %charge_unit, "usage exceeded available credit");
                    result = result_code::CREDIT_LIMIT_REACHED;
                }
            }
            let collected = Amount::from_nanos(cost.nanos() - left.nanos());
            if collected.is_positive() {
                add_charge(
                    &mut session.charges,
                    Charge {
                        service: service.service,
                        unit: *unit,
                        charge_unit,
                        account: ccr.account,
                        units: *used,
                        amount: collected,
                    },
                );
            }
        }
        result
    }

    pub(super) fn release_grants(&mut self, now: Timestamp, grants: &mut [Grant]) {
        for g in grants.iter_mut() {
            if let Some(r) = g.reservation.take() {
                let _ = self.ledger_apply(now, Command::Release { reservation: r });
            }
        }
    }

    pub(super) fn check_sequence(
        &self,
        key: &SessionKey,
        ccr: &CreditControlRequest,
    ) -> Result<(), CreditControlAnswer> {
        match self.sessions.get(key) {
            None => Err(CreditControlAnswer::error(result_code::UNKNOWN_SESSION_ID)),
            Some(s) if s.account != ccr.account => {
                Err(CreditControlAnswer::error(result_code::INVALID_AVP_VALUE))
            }
            // Not after the last answered request: out of order, or the
            // last request again after its answer aged out (never applied
            // twice).
            Some(s) if ccr.request_number <= s.last_number => {
                Err(CreditControlAnswer::error(result_code::UNABLE_TO_COMPLY))
            }
            Some(_) => Ok(()),
        }
    }

    pub(super) fn update(
        &mut self,
        now: Timestamp,
        key: &SessionKey,
        ccr: &CreditControlRequest,
    ) -> CreditControlAnswer {
        if let Err(a) = self.check_sequence(key, ccr) {
            return a;
        }
        let Some(mut session) = self.take_session(key) else {
            return CreditControlAnswer::error(result_code::UNKNOWN_SESSION_ID);
        };
        self.changed = true;
        let mut answers = Vec::with_capacity(ccr.services.len());
        let mut validity_max = 0u32;
        for service in &ccr.services {
            let settled = self.settle(now, ccr, &mut session, service);
            let mut answer = if service.report_only {
                // Usage reported, no more asked for: the rest of the grant
                // goes back and the service holds nothing until it asks.
                let mut grants = std::mem::take(&mut session.grants);
                let (mine, others): (Vec<Grant>, Vec<Grant>) =
                    grants.drain(..).partition(|g| g.service == service.service);
                session.grants = others;
                let mut mine = mine;
                self.release_grants(now, &mut mine);
                ServiceAnswer {
                    service: service.service,
                    result_code: result_code::SUCCESS,
                    granted: Vec::new(),
                    validity_time_s: 0,
                    final_unit_action: FinalUnitAction::None,
                    denial: None,
                }
            } else {
                self.grant(now, ccr, &mut session, service)
            };
            if settled != result_code::SUCCESS && answer.result_code == result_code::SUCCESS {
                answer.result_code = settled;
                answer.final_unit_action = self.config.final_unit_action;
            }
            validity_max = validity_max.max(answer.validity_time_s);
            answers.push(answer);
        }
        let answer = self.finish_answer(answers);
        session.last_number = ccr.request_number;
        // Supervision never comes earlier than before: services this UPDATE
        // did not mention keep their grants and their validity.
        session.expires_at =
            session.expires_at.max(now.plus_ms(
                (validity_max.max(1) as u64 + self.config.supervision_grace_s as u64) * 1000,
            ));
        self.watch(session.expires_at, key);
        self.sessions.insert(key.clone(), session);
        self.mark(key);
        answer
    }

    pub(super) fn terminate(
        &mut self,
        now: Timestamp,
        key: &SessionKey,
        ccr: &CreditControlRequest,
    ) -> CreditControlAnswer {
        if let Err(a) = self.check_sequence(key, ccr) {
            return a;
        }
        let Some(mut session) = self.take_session(key) else {
            return CreditControlAnswer::error(result_code::UNKNOWN_SESSION_ID);
        };
        self.changed = true;
        self.ended(key, &session);
        let mut answers = Vec::with_capacity(ccr.services.len());
        for service in &ccr.services {
            let code = self.settle(now, ccr, &mut session, service);
            answers.push(ServiceAnswer {
                service: service.service,
                result_code: code,
                granted: Vec::new(),
                validity_time_s: 0,
                final_unit_action: FinalUnitAction::None,
                denial: None,
            });
        }
        self.release_grants(now, &mut session.grants);
        let mut answer = self.finish_answer(answers);
        // Terminating always succeeds as a request; per-service codes say
        // whether all usage could be collected.
        answer.result_code = result_code::SUCCESS;
        // Logged with the answer: what a refund of this session may give back.
        self.closing = Some((session.account, session.charges));
        answer
    }

    /// Supervises a session from `at`. Entries of sessions that ended or
    /// moved on are dropped lazily; when they outnumber the live sessions
    /// the queue is rebuilt, so its memory follows the sessions open, not
    /// the sessions of the last supervision period.
    fn watch(&mut self, at: Timestamp, key: &SessionKey) {
        self.supervision.push(Reverse((at, key.clone())));
        if self.supervision.len() > 2 * self.sessions.len() + 4096 {
            self.supervision = self
                .sessions
                .iter()
                .map(|(k, s)| Reverse((s.expires_at, k.clone())))
                .chain(std::iter::once(Reverse((at, key.clone()))))
                .collect();
        }
    }

    /// Releases the grants of sessions silent past their supervision time.
    pub(super) fn supervise(&mut self, now: Timestamp) -> usize {
        let mut expired = 0;
        while let Some(Reverse((at, id))) = self.supervision.peek().cloned() {
            if at > now || expired >= 4096 {
                break;
            }
            self.supervision.pop();
            let silent = self.sessions.get(&id).is_some_and(|s| s.expires_at == at);
            if !silent {
                continue;
            }
            if let Some(mut session) = self.take_session(&id) {
                self.cause = request_ref(id.0, &id.1, u32::MAX);
                self.release_grants(now, &mut session.grants);
                self.cause = OpId::SERVER;
                self.ended(&id, &session);
                expired += 1;
                tracing::debug!(org = id.0 .0, session = %id.1, "session supervision expired; grants released");
            }
        }
        expired
    }

    pub(super) fn supervision_due(&self, now: Timestamp) -> bool {
        self.supervision
            .peek()
            .is_some_and(|Reverse((at, _))| *at <= now)
    }
}
