//! Who may act on which account.

#[allow(unused_imports)]
use super::*;

impl Engine {
    /// The organisation of `account` when it exists and the caller may act
    /// on it; `None` otherwise (another tenant's account looks absent).
    pub(super) fn authorised_org(&self, caller: Caller, account: AccountId) -> Option<AccountId> {
        let root = self.ledger.ledger.root_of(account)?;
        match caller {
            Caller::Admin => Some(root),
            Caller::Org(org) if org == root => Some(root),
            Caller::Org(_) => None,
        }
    }

    /// Whether a unit was declared: built in, configured, priced, or named
    /// by a rate card. Undeclared units are refused so that a typo never
    /// opens a bucket nobody will draw on.
    pub(super) fn knows_unit(&self, unit: Unit) -> bool {
        self.known_units.contains(&unit)
    }

    /// Rebuilds the set [`Engine::knows_unit`] reads, after the
    /// configuration or the rate cards changed.
    pub(super) fn refresh_units(&mut self) {
        let mut units: HashSet<Unit> = BUILTIN_UNITS
            .iter()
            .filter_map(|u| Unit::new(u).ok())
            .collect();
        units.extend(self.config.units.iter().copied());
        for p in &self.config.prices {
            units.insert(p.unit);
            units.insert(p.charge_unit);
        }
        for p in &self.config.policies {
            units.insert(p.default_unit);
        }
        for card in self.rates.cards() {
            for version in card.versions() {
                for name in [version.charge_unit().as_str(), version.currency().as_str()] {
                    if let Ok(u) = Unit::new(name) {
                        units.insert(u);
                    }
                }
                for service in version.service_ids() {
                    for u in version.units_of(service) {
                        if let Ok(u) = Unit::new(u.as_str()) {
                            units.insert(u);
                        }
                    }
                }
            }
        }
        self.known_units = units;
    }

    /// The unit an admin operation would create or move, if any.
    fn unit_of(command: &Command) -> Option<Unit> {
        match command {
            Command::Credit { unit, .. }
            | Command::SetLimit { unit, .. }
            | Command::Reserve { unit, .. } => Some(*unit),
            Command::GrantBucket { spec, .. } => Some(spec.unit),
            _ => None,
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
                // An organisation budgets its own departments and keys,
                // never its own root: a cap the operator set on the
                // organisation is not the organisation's to lift.
                LedgerRequest::Apply(op) => match &op.command {
                    Command::SetLimit { account, .. }
                        if *account != org && self.ledger.ledger.root_of(*account) == Some(org) =>
                    {
                        None
                    }
                    _ => return EngineResponse::Forbidden,
                },
                LedgerRequest::Totals | LedgerRequest::StateDigest => {
                    return EngineResponse::Forbidden
                }
                LedgerRequest::Account(a) => Some(*a),
                LedgerRequest::Available { account, .. } => Some(*account),
                LedgerRequest::Reservation(r) => {
                    self.ledger.ledger.reservation(*r).map(|v| v.account)
                }
                LedgerRequest::Reservations { account, .. } => Some(*account),
            };
            match (&request, target) {
                (LedgerRequest::Apply(_), _) => {}
                (_, Some(a)) if self.ledger.ledger.root_of(a) == Some(org) => {}
                _ => return EngineResponse::NotFound,
            }
        }
        if let LedgerRequest::Apply(op) = &request {
            if let Some(unit) = Self::unit_of(&op.command) {
                if !self.knows_unit(unit) {
                    return EngineResponse::UnknownUnit(unit);
                }
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
                EngineResponse::Ledger(self.ledger.apply(now, 0, read, &mut reads_log_nothing))
            }
        }
    }
}
