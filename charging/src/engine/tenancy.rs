//! Who may act on which account.

#[allow(unused_imports)]
use super::*;

impl Engine {
    pub(super) fn authorise(&self, caller: Caller, account: AccountId) -> Result<(), ()> {
        match caller {
            Caller::Admin => Ok(()),
            Caller::Org(org) => match self.ledger.ledger.root_of(account) {
                Some(root) if root == org => Ok(()),
                _ => Err(()),
            },
        }
    }

    /// Admin operations and reads of the ledger, within what the caller may
    /// see.
    pub(super) fn handle_ledger(
        &mut self,
        now: Timestamp,
        caller: Caller,
        request: LedgerRequest,
    ) -> EngineResponse {
        if let Caller::Org(org) = caller {
            // Organisation credentials read their own subtree; changes need
            // an admin credential. Accounts outside the subtree look absent.
            let target = match &request {
                LedgerRequest::Apply(_) | LedgerRequest::Totals | LedgerRequest::StateDigest => {
                    return EngineResponse::Forbidden
                }
                LedgerRequest::Account(a) => Some(*a),
                LedgerRequest::Available { account, .. } => Some(*account),
                LedgerRequest::Reservation(r) => {
                    self.ledger.ledger.reservation(*r).map(|v| v.account)
                }
                LedgerRequest::Reservations { account, .. } => Some(*account),
            };
            match target {
                Some(a) if self.ledger.ledger.root_of(a) == Some(org) => {}
                _ => return EngineResponse::NotFound,
            }
        }
        match request {
            // The engine logs the whole request itself; the ledger's own
            // log encoding of the operation would be thrown away.
            LedgerRequest::Apply(op) => {
                EngineResponse::Ledger(LedgerResponse::Applied(self.ledger.ledger.apply(now, &op)))
            }
            read => {
                let mut reads_log_nothing = Vec::new();
                EngineResponse::Ledger(self.ledger.apply(now, read, &mut reads_log_nothing))
            }
        }
    }
}
