//! One credit-control request from arrival to answer: consistency rules,
//! retransmissions, dispatch by request type.

#[allow(unused_imports)]
use super::*;

impl Engine {
    /// The consistency rules of the protocol (SPEC 7.3): a request that
    /// breaks one is refused whole and changes nothing.
    pub(super) fn validate(&self, ccr: &CreditControlRequest) -> Result<(), u32> {
        use result_code::{INVALID_AVP_VALUE, MISSING_AVP};
        if ccr.session_id.is_empty() {
            return Err(MISSING_AVP);
        }
        if ccr.session_id.len() > SESSION_ID_LEN_MAX || ccr.services.len() > SERVICES_MAX {
            return Err(INVALID_AVP_VALUE);
        }
        if (ccr.request_type == RequestType::Event) != (ccr.event_action != EventAction::None) {
            return Err(INVALID_AVP_VALUE);
        }
        if matches!(ccr.request_type, RequestType::Initial | RequestType::Event)
            && ccr.request_number != 0
        {
            return Err(INVALID_AVP_VALUE);
        }
        let needs_service = matches!(ccr.request_type, RequestType::Initial)
            || matches!(
                ccr.event_action,
                EventAction::DirectDebit | EventAction::Refund | EventAction::PriceEnquiry
            );
        if needs_service && ccr.services.is_empty() {
            return Err(MISSING_AVP);
        }
        for (i, s) in ccr.services.iter().enumerate() {
            if ccr.services[..i].iter().any(|o| o.service == s.service) {
                return Err(INVALID_AVP_VALUE);
            }
            if s.requested.len() > UNITS_PER_SERVICE_MAX || s.used.len() > UNITS_PER_SERVICE_MAX {
                return Err(INVALID_AVP_VALUE);
            }
            for list in [&s.requested, &s.used] {
                for (j, (unit, q)) in list.iter().enumerate() {
                    if q.is_sign_negative() || list[..j].iter().any(|(u, _)| u == unit) {
                        return Err(INVALID_AVP_VALUE);
                    }
                }
            }
            if ccr.request_type == RequestType::Initial && !s.used.is_empty() {
                return Err(INVALID_AVP_VALUE);
            }
            if ccr.request_type == RequestType::Terminate && !s.requested.is_empty() {
                return Err(INVALID_AVP_VALUE);
            }
        }
        Ok(())
    }

    pub(super) fn credit_control(
        &mut self,
        now: Timestamp,
        caller: Caller,
        ccr: &CreditControlRequest,
    ) -> CreditControlAnswer {
        self.forget_answers(now);
        // Retransmission of an answered request: the stored answer.
        if let Some((_, answer)) = self
            .answers
            .get(&(ccr.session_id.clone(), ccr.request_number))
        {
            return answer.clone();
        }
        if let Some(session) = self.sessions.get(&ccr.session_id) {
            if session.last_number == ccr.request_number {
                // The session's last request again, but its answer has aged
                // out of the window: refuse rather than apply it twice.
                return CreditControlAnswer::error(result_code::UNABLE_TO_COMPLY);
            }
        }
        if let Err(code) = self.validate(ccr) {
            return CreditControlAnswer::error(code);
        }
        self.changed = false;
        if self.ledger.ledger.account(ccr.account).is_none()
            || self.authorise(caller, ccr.account).is_err()
        {
            // Another organisation's account is reported as unknown: its
            // existence is not the caller's business.
            return CreditControlAnswer::error(result_code::USER_UNKNOWN);
        }
        let answer = match ccr.request_type {
            RequestType::Initial => self.initial(now, ccr),
            RequestType::Update => self.update(now, ccr),
            RequestType::Terminate => self.terminate(now, ccr),
            RequestType::Event => self.event(now, ccr),
        };
        // Every answer is kept for the window, so a retransmission of any
        // earlier request of a session (not only the last) gets its answer.
        self.remember_answer(now, ccr, &answer);
        answer
    }

    pub(super) fn finish_answer(&self, services: Vec<ServiceAnswer>) -> CreditControlAnswer {
        // A request that changed anything succeeded as a request; the
        // per-service codes tell how each service fared. Only a request
        // that changed nothing carries a failure code of its own.
        let code = if self.changed
            || services.is_empty()
            || services
                .iter()
                .any(|s| s.result_code == result_code::SUCCESS)
        {
            result_code::SUCCESS
        } else {
            services[0].result_code
        };
        CreditControlAnswer {
            result_code: code,
            services,
            balance: Vec::new(),
            price: Vec::new(),
        }
    }
}
