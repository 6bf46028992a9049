//! One-shot EVENT requests: direct debit, refund, balance check, price
//! enquiry.
//!
//! Refunds can never create money. A refund names the session (or event)
//! that was charged, in the CCR's session id, with the next request number
//! of that session (the first refund of an event is number 1). It gives
//! back at most what that session collected and has not had refunded, per
//! (service, unit), to the accounts it was drawn from, in proportion to the
//! units refunded (all remaining units: exactly the remaining amount). An
//! organisation credential may refund only that way; a refund that no
//! recorded charge covers is refused with `REFUND_NOT_COVERED` and changes
//! nothing. Only an admin may credit without a recorded charge (a goodwill
//! refund, priced at the current tariff).

#[allow(unused_imports)]
use super::*;

impl Engine {
    pub(super) fn event(
        &mut self,
        now: Timestamp,
        caller: Caller,
        key: &SessionKey,
        ccr: &CreditControlRequest,
    ) -> CreditControlAnswer {
        let mut answer = CreditControlAnswer::error(result_code::SUCCESS);
        let denied = matches!(
            ccr.event_action,
            EventAction::DirectDebit | EventAction::CheckBalance | EventAction::PriceEnquiry
        ) && self.ledger.ledger.inactive_ancestor(ccr.account).is_some();
        if denied {
            return CreditControlAnswer::error(result_code::END_USER_SERVICE_DENIED);
        }
        match ccr.event_action {
            EventAction::DirectDebit => return self.direct_debit(now, key, ccr),
            EventAction::Refund => return self.refund(now, caller, key, ccr),
            EventAction::CheckBalance => {
                let mut units: Vec<Unit> = Vec::new();
                for service in &ccr.services {
                    for (unit, _) in service.requested.iter().chain(&service.used) {
                        let (charge_unit, _) = self.tariff(service.service, *unit, now);
                        if !units.contains(&charge_unit) {
                            units.push(charge_unit);
                        }
                    }
                }
                if units.is_empty() {
                    // Every unit the account can spend: its own buckets and
                    // those up the chain it draws on.
                    let mut current = Some(ccr.account);
                    for _ in 0..reckon_balances::ledger::DEPTH_MAX {
                        let Some(view) = current.and_then(|a| self.ledger.ledger.account(a)) else {
                            break;
                        };
                        for b in &view.buckets {
                            if !units.contains(&b.unit) {
                                units.push(b.unit);
                            }
                        }
                        current = if view.draws_on_parent {
                            view.parent
                        } else {
                            None
                        };
                    }
                }
                for unit in units {
                    let available = self
                        .ledger
                        .ledger
                        .available(now, ccr.account, unit, None)
                        .unwrap_or(Amount::ZERO);
                    answer.balance.push((unit, available.to_decimal()));
                }
            }
            EventAction::PriceEnquiry => {
                for service in &ccr.services {
                    for (unit, units) in &service.requested {
                        let (charge_unit, per_unit) = self.tariff(service.service, *unit, now);
                        match self.cost(&per_unit, *units) {
                            Ok(c) => answer.price.push((charge_unit, c.to_decimal())),
                            Err(code) => answer.result_code = code,
                        }
                    }
                }
            }
            EventAction::None => answer.result_code = result_code::INVALID_AVP_VALUE,
        }
        answer
    }

    /// Debits every service's units at once, all or nothing.
    fn direct_debit(
        &mut self,
        now: Timestamp,
        key: &SessionKey,
        ccr: &CreditControlRequest,
    ) -> CreditControlAnswer {
        if self.sessions.contains_key(key) {
            // The id of an open session.
            return CreditControlAnswer::error(result_code::REQUEST_ID_REUSED);
        }
        let mut session = Session {
            account: ccr.account,
            last_number: ccr.request_number,
            grants: Vec::new(),
            expires_at: now,
            charges: Vec::new(),
            mark: 0,
            born: 0,
        };
        // All services or none: check every cost first.
        let mut need: Vec<(Unit, Option<ServiceId>, Amount)> = Vec::new();
        for service in &ccr.services {
            for (unit, units) in event_units(service) {
                let (charge_unit, per_unit) = self.tariff(service.service, *unit, now);
                let Ok(cost) = self.cost(&per_unit, *units) else {
                    return CreditControlAnswer::error(result_code::RATING_FAILED);
                };
                need.push((charge_unit, Some(service.service), cost));
            }
        }
        let mut total: Vec<(Unit, i128)> = Vec::new();
        for (unit, service, cost) in &need {
            let (available, bound_by) = self
                .ledger
                .ledger
                .availability(now, ccr.account, *unit, *service)
                .map_or((Amount::ZERO, None), |a| (a.amount, a.bound_by));
            let sum = match total.iter_mut().find(|(u, _)| u == unit) {
                Some((_, n)) => {
                    *n += cost.nanos();
                    *n
                }
                None => {
                    total.push((*unit, cost.nanos()));
                    cost.nanos()
                }
            };
            if *cost > available || sum > available.nanos() {
                // All or nothing: the request fails, and the service that
                // could not be paid says why.
                let mut answer = CreditControlAnswer::error(result_code::CREDIT_LIMIT_REACHED);
                answer.services.extend(service.map(|service| ServiceAnswer {
                    service,
                    result_code: result_code::CREDIT_LIMIT_REACHED,
                    granted: Vec::new(),
                    validity_time_s: 0,
                    final_unit_action: FinalUnitAction::None,
                    denial: Some(Denial::bounded_by(bound_by)),
                }));
                return answer;
            }
        }
        let mut services = Vec::new();
        for service in &ccr.services {
            let debit = ServiceRequest {
                service: service.service,
                requested: Vec::new(),
                used: event_units(service).to_vec(),
                report_only: false,
            };
            let code = self.settle(now, ccr, &mut session, &debit);
            services.push(ServiceAnswer {
                service: service.service,
                result_code: code,
                granted: debit.used,
                validity_time_s: 0,
                final_unit_action: FinalUnitAction::None,
                denial: None,
            });
        }
        let answer = self.finish_answer(services);
        // Logged with the answer: what a refund of this event may give back.
        self.closing = Some((ccr.account, session.charges));
        answer
    }

    /// Gives back what a recorded charge collected (see the module doc).
    fn refund(
        &mut self,
        now: Timestamp,
        caller: Caller,
        key: &SessionKey,
        ccr: &CreditControlRequest,
    ) -> CreditControlAnswer {
        let refuse = CreditControlAnswer::error;
        if self.sessions.contains_key(key) {
            // Still open: its usage is not final yet.
            return refuse(result_code::REFUND_NOT_COVERED);
        }
        // The charge is in the record of the session's previous request
        // (its end, or its previous refund), which this one follows.
        let found = match ccr.request_number.checked_sub(1) {
            None => Ok(None),
            Some(previous) => self.refundable_after(key.0, &key.1, previous),
        };
        let (account, lines) = match found {
            Ok(Some(record)) => record,
            Ok(None) => {
                if caller != Caller::Admin && self.planted != Some(PlantedBug::RefundWithoutCharge)
                {
                    return refuse(result_code::REFUND_NOT_COVERED);
                }
                if ccr.request_number != 0 {
                    return refuse(result_code::UNKNOWN_SESSION_ID);
                }
                return self.goodwill_refund(now, ccr);
            }
            Err(()) => {
                tracing::warn!(session = %ccr.session_id, "the charge a refund names could not be read back");
                return refuse(result_code::TOO_BUSY);
            }
        };
        if account != ccr.account {
            return refuse(result_code::INVALID_AVP_VALUE);
        }
        // A refused refund keeps the chain: the next one may follow it.
        self.closing = Some((account, lines.clone()));
        // Plan every line first: all or nothing.
        let mut lines = lines;
        let mut credits: Vec<(AccountId, Unit, Amount)> = Vec::new();
        for service in &ccr.services {
            for (unit, units) in event_units(service) {
                let mut left = *units;
                for line in lines
                    .iter_mut()
                    .filter(|c| c.service == service.service && c.unit == *unit)
                {
                    if left.is_zero() {
                        break;
                    }
                    let take = left.min(line.units);
                    if take.is_zero() {
                        continue;
                    }
                    let amount = if take == line.units {
                        line.amount
                    } else {
                        proportional(line.amount, take, line.units)
                    };
                    line.units -= take;
                    line.amount = Amount::from_nanos(line.amount.nanos() - amount.nanos());
                    left -= take;
                    if amount.is_positive() {
                        credits.push((line.account, line.charge_unit, amount));
                    }
                }
                if left.is_sign_positive() && !left.is_zero() {
                    return refuse(result_code::REFUND_NOT_COVERED);
                }
            }
        }
        let reason: Arc<str> = Arc::from(format!("refund for session {}", ccr.session_id));
        for (account, unit, amount) in credits {
            let target = self.refund_target(account, unit);
            let credited = self.ledger_apply(
                now,
                Command::Credit {
                    account: target,
                    unit,
                    amount,
                    bucket: None,
                    kind: CreditKind::Refund,
                    reason: reason.clone(),
                },
            );
            if let Err(e) = credited {
                // Balances are bounded; a credit the ledger refuses here is
                // a bug, never silently dropped money.
                tracing::error!(session = %ccr.session_id, error = %e, "refund credit refused");
            }
        }
        lines.retain(|c| !c.units.is_zero() || c.amount.is_positive());
        self.closing = Some((account, lines));
        self.changed = true;
        CreditControlAnswer {
            result_code: result_code::SUCCESS,
            services: ccr
                .services
                .iter()
                .map(|s| ServiceAnswer {
                    service: s.service,
                    result_code: result_code::SUCCESS,
                    granted: event_units(s).to_vec(),
                    validity_time_s: 0,
                    final_unit_action: FinalUnitAction::None,
                    denial: None,
                })
                .collect(),
            balance: Vec::new(),
            price: Vec::new(),
        }
    }

    /// An admin's refund with no recorded charge: the units' price now.
    fn goodwill_refund(
        &mut self,
        now: Timestamp,
        ccr: &CreditControlRequest,
    ) -> CreditControlAnswer {
        let mut services = Vec::new();
        for service in &ccr.services {
            let mut code = result_code::SUCCESS;
            for (unit, units) in event_units(service) {
                let (charge_unit, per_unit) = self.tariff(service.service, *unit, now);
                let Ok(amount) = self.cost(&per_unit, *units) else {
                    code = result_code::RATING_FAILED;
                    continue;
                };
                if amount.is_zero() {
                    continue;
                }
                let target = self.refund_target(ccr.account, charge_unit);
                let credited = self.ledger_apply(
                    now,
                    Command::Credit {
                        account: target,
                        unit: charge_unit,
                        amount,
                        bucket: None,
                        kind: CreditKind::Refund,
                        reason: Arc::from(format!("goodwill refund {}", ccr.session_id)),
                    },
                );
                if credited.is_err() {
                    code = result_code::UNABLE_TO_COMPLY;
                }
            }
            services.push(ServiceAnswer {
                service: service.service,
                result_code: code,
                granted: event_units(service).to_vec(),
                validity_time_s: 0,
                final_unit_action: FinalUnitAction::None,
                denial: None,
            });
        }
        self.finish_answer(services)
    }

    /// Where a refund goes: back up the draw chain to the first account
    /// holding a bucket of that unit (a user who draws on its organisation's
    /// wallet is refunded into that wallet), else the account itself.
    pub(super) fn refund_target(&self, account: AccountId, unit: Unit) -> AccountId {
        let mut current = account;
        for _ in 0..reckon_balances::ledger::DEPTH_MAX {
            let Some(view) = self.ledger.ledger.account(current) else {
                break;
            };
            if view.buckets.iter().any(|b| b.unit == unit && !b.expired) {
                return current;
            }
            match (view.draws_on_parent, view.parent) {
                (true, Some(parent)) => current = parent,
                _ => break,
            }
        }
        account
    }
}

/// `amount × part / whole`, rounded down to the ledger's precision and never
/// above `amount`: partial refunds never give back more than was collected.
fn proportional(amount: Amount, part: Decimal, whole: Decimal) -> Amount {
    let ratio = part
        .checked_div(whole)
        .unwrap_or(Decimal::ZERO)
        .min(Decimal::ONE);
    let value = amount
        .to_decimal()
        .checked_mul(ratio)
        .unwrap_or(Decimal::ZERO)
        .round_dp_with_strategy(Amount::SCALE, RoundingStrategy::ToZero);
    Amount::from_decimal(value)
        .unwrap_or(Amount::ZERO)
        .min(amount)
}

/// The units an EVENT acts on: `requested` (RFC 4006's Requested-Service-
/// Unit for direct debiting), or `used` when a client reports those.
pub(super) fn event_units(service: &ServiceRequest) -> &[Quantity] {
    if service.requested.is_empty() {
        &service.used
    } else {
        &service.requested
    }
}
