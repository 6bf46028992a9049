//! Remembered answers, for retransmissions.

#[allow(unused_imports)]
use super::*;

impl Engine {
    pub(super) fn remember_answer(
        &mut self,
        now: Timestamp,
        ccr: &CreditControlRequest,
        answer: &CreditControlAnswer,
    ) {
        let key = (ccr.session_id.clone(), ccr.request_number);
        self.answers.insert(key.clone(), (now, answer.clone()));
        self.answer_order
            .push_back((now, ccr.session_id.clone(), ccr.request_number));
        self.answers_added.push(key);
    }

    pub(super) fn forget_answers(&mut self, now: Timestamp) {
        // Remember the bound, so a restore never brings back an answer the
        // live engine had already forgotten.
        if let Some(bound) = now.0.checked_sub(self.config.answer_window_ms) {
            self.answers_forgotten_below = self.answers_forgotten_below.max(Timestamp(bound + 1));
        }
        while let Some((at, _, _)) = self.answer_order.front() {
            if at.plus_ms(self.config.answer_window_ms) > now {
                break;
            }
            if let Some((_, session, number)) = self.answer_order.pop_front() {
                self.answers.remove(&(session, number));
            }
        }
    }
}
