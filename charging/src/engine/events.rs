//! One-shot EVENT requests: direct debit, refund, balance check, price
//! enquiry.

#[allow(unused_imports)]
use super::*;

impl Engine {
    pub(super) fn event(
        &mut self,
        now: Timestamp,
        ccr: &CreditControlRequest,
    ) -> CreditControlAnswer {
        let mut answer = CreditControlAnswer::error(result_code::SUCCESS);
        match ccr.event_action {
            EventAction::DirectDebit => {
                let mut session = Session {
                    account: ccr.account,
                    last_number: ccr.request_number,
                    grants: Vec::new(),
                    expires_at: now,
                    dirty: false,
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
                    let available = self
                        .ledger
                        .ledger
                        .available(now, ccr.account, *unit, *service)
                        .unwrap_or(Amount::ZERO);
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
                        return CreditControlAnswer::error(result_code::CREDIT_LIMIT_REACHED);
                    }
                }
                let mut services = Vec::new();
                for service in &ccr.services {
                    let debit = ServiceRequest {
                        service: service.service,
                        requested: Vec::new(),
                        used: event_units(service).to_vec(),
                    };
                    let code = self.settle(now, ccr, &mut session, &debit);
                    services.push(ServiceAnswer {
                        service: service.service,
                        result_code: code,
                        granted: debit.used,
                        validity_time_s: 0,
                        final_unit_action: FinalUnitAction::None,
                    });
                }
                answer = self.finish_answer(services);
            }
            EventAction::Refund => {
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
                                reason: Arc::from(format!("refund for session {}", ccr.session_id)),
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
                    });
                }
                answer = self.finish_answer(services);
            }
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

/// The units an EVENT acts on: `requested` (RFC 4006's Requested-Service-
/// Unit for direct debiting), or `used` when a client reports those.
pub(super) fn event_units(service: &ServiceRequest) -> &[Quantity] {
    if service.requested.is_empty() {
        &service.used
    } else {
        &service.requested
    }
}
