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
        // A refund continues the numbering of the session it refunds.
        if (ccr.request_type == RequestType::Initial
            || (ccr.request_type == RequestType::Event && ccr.event_action != EventAction::Refund))
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
                    // Finer than the ledger holds, or beyond its range:
                    // refused, never rounded.
                    if q.normalize().scale() > Amount::SCALE || Amount::from_decimal(*q).is_err() {
                        return Err(INVALID_AVP_VALUE);
                    }
                    if !self.knows_unit(*unit) {
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
            if s.report_only && (ccr.request_type != RequestType::Update || !s.requested.is_empty())
            {
                return Err(INVALID_AVP_VALUE);
            }
        }
        if !ccr.attributes.is_empty() {
            self.validate_attributes(ccr)?;
        }
        Ok(())
    }

    /// Answers one credit-control request. The order matters for tenancy:
    /// the request is checked and its caller authorised for the account
    /// before anything keyed by the client's ids is looked at, and those
    /// keys carry the account's organisation.
    pub(super) fn credit_control(
        &mut self,
        now: Timestamp,
        caller: Caller,
        ccr: &CreditControlRequest,
    ) -> CreditControlAnswer {
        let window = self.config.answer_window_ms;
        self.answers.forget(now, window);
        self.record.clear();
        self.closing = None;
        if let Err(code) = self.validate(ccr) {
            return CreditControlAnswer::error(code);
        }
        // Pricing reads them from here (no allocation when there are none).
        self.request_attributes.clone_from(&ccr.attributes);
        let planted_lookup_first = self.planted == Some(PlantedBug::AnswersBeforeAuthorisation);
        let Some(org) = (if planted_lookup_first {
            self.ledger.ledger.root_of(ccr.account)
        } else {
            self.authorised_org(caller, ccr.account)
        }) else {
            // Another organisation's account is reported as unknown: its
            // existence is not the caller's business.
            return CreditControlAnswer::error(result_code::USER_UNKNOWN);
        };
        let key: SessionKey = (org, ccr.session_id.clone());
        let answer_key = self.answers.key(org, &ccr.session_id, ccr.request_number);
        if let Some(lsn) = self.answers.get(answer_key) {
            return self.remembered(lsn, org, ccr);
        }
        if planted_lookup_first && self.authorised_org(caller, ccr.account).is_none() {
            return CreditControlAnswer::error(result_code::USER_UNKNOWN);
        }
        if ccr.timestamp_ms != 0
            && (ccr.timestamp_ms.saturating_add(window) <= now.0
                || ccr.timestamp_ms > now.0.saturating_add(future_skew_ms(window))
                || ccr.timestamp_ms <= self.answers.forgotten_up_to().0)
        {
            // A retransmission older than the window could no longer be
            // recognised: refuse it rather than apply it a second time.
            return CreditControlAnswer::error(result_code::REQUEST_TOO_OLD);
        }
        self.changed = false;
        self.cause = request_ref(org, &ccr.session_id, ccr.request_number);
        let answer = match ccr.request_type {
            RequestType::Initial => self.initial(now, &key, ccr),
            RequestType::Update => self.update(now, &key, ccr),
            RequestType::Terminate => self.terminate(now, &key, ccr),
            RequestType::Event => self.event(now, caller, &key, ccr),
        };
        // Remember what changed state, and credit decisions that changed
        // nothing (a late duplicate of a refused debit must not succeed
        // after a top-up behind the client's back). Sequence errors are not
        // remembered: the same request in its proper turn is valid.
        let decision = matches!(
            answer.result_code,
            result_code::CREDIT_LIMIT_REACHED
                | result_code::END_USER_SERVICE_DENIED
                | result_code::RATING_FAILED
                | result_code::REFUND_NOT_COVERED
        );
        let mutating = ccr.request_type != RequestType::Event
            || matches!(
                ccr.event_action,
                EventAction::DirectDebit | EventAction::Refund
            );
        if mutating && (self.changed || decision) {
            // The record logged for this request holds its answer: the
            // index remembers only where it is.
            let lsn = self.take_lsn();
            self.record.u8(ENGINE_TAG);
            self.record.u8(REC_CCR);
            encode_caller(&mut self.record, caller);
            encode_ccr(&mut self.record, ccr);
            let closing = self.closing.take();
            answers::encode_recorded(
                &mut self.record,
                &answer,
                closing.as_ref().map(|(a, c)| (*a, c.as_slice())),
            );
            let at = now.max(Timestamp(ccr.timestamp_ms));
            self.answers.insert(at, answer_key, lsn);
            if !self.replaying {
                self.recent.push(lsn, now, &self.record);
            }
        }
        self.cause = OpId::SERVER;
        answer
    }

    /// The answer to a request whose key is remembered: the original for a
    /// retransmission, a refusal for ids reused with other content.
    fn remembered(
        &self,
        lsn: u64,
        org: AccountId,
        ccr: &CreditControlRequest,
    ) -> CreditControlAnswer {
        let Some((_, payload)) = self.read_record(lsn) else {
            // Not readable yet (its group commit is slow) or any more: never
            // answered with something else, never applied twice.
            tracing::warn!(lsn, session = %ccr.session_id, "a remembered answer could not be read back; answering TOO_BUSY");
            return CreditControlAnswer::error(result_code::TOO_BUSY);
        };
        match answers::decode_ccr_record(&payload) {
            Ok(Some((_, original, Some(recorded))))
                if original.session_id == ccr.session_id
                    && original.request_number == ccr.request_number
                    && self.ledger.ledger.root_of(original.account) == Some(org) =>
            {
                if request_digest(&original) == request_digest(ccr) {
                    recorded.answer
                } else {
                    CreditControlAnswer::error(result_code::REQUEST_ID_REUSED)
                }
            }
            Ok(Some(_)) => {
                // Another request under the same 64-bit key: practically
                // never; refuse this one for now rather than guess.
                CreditControlAnswer::error(result_code::TOO_BUSY)
            }
            _ => {
                tracing::error!(lsn, "a remembered record does not decode");
                CreditControlAnswer::error(result_code::TOO_BUSY)
            }
        }
    }

    /// What a refund of (org, session) may give back after its request
    /// `number`: read from that request's record. `Err` when the record
    /// cannot be read back.
    pub(super) fn refundable_after(
        &self,
        org: AccountId,
        session: &str,
        number: u32,
    ) -> Result<Option<(AccountId, Vec<sessions::Charge>)>, ()> {
        let key = self.answers.key(org, session, number);
        let Some(lsn) = self.answers.get(key) else {
            return Ok(None);
        };
        let (_, payload) = self.read_record(lsn).ok_or(())?;
        match answers::decode_ccr_record(&payload) {
            Ok(Some((_, original, Some(recorded))))
                if &*original.session_id == session && original.request_number == number =>
            {
                Ok(recorded.charges)
            }
            Ok(_) => Ok(None),
            Err(_) => Err(()),
        }
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
