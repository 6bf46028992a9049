//! Runs the durable ledger on a local data directory and walks one
//! inference request through it: account → top-up → reserve → commit →
//! balance. Run it twice: the second run recovers the first run's state.
//!
//! `cargo run --release -p reckon-balances --example ledger -- [DATA_DIR]`

use reckon_balances::journal::{system_clock, Journal, JournalConfig};
use reckon_balances::machine::{LedgerMachine, LedgerRequest, LedgerResponse};
use reckon_balances::{
    AccountId, Amount, Command, CreditKind, LedgerError, OpId, Operation, Outcome, Unit,
};

fn apply(j: &Journal<LedgerMachine>, op: u128, command: Command) -> Result<Outcome, LedgerError> {
    match j.call(LedgerRequest::Apply(Operation {
        op: OpId(op),
        command,
    })) {
        Ok(LedgerResponse::Applied(result)) => result,
        other => panic!("journal failed: {other:?}"),
    }
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "reckon-data".into());
    let (journal, report) =
        match Journal::<LedgerMachine>::open(JournalConfig::new(&dir), system_clock()) {
            Ok(opened) => opened,
            Err(e) => {
                eprintln!("cannot open the ledger in {dir}: {e}");
                std::process::exit(1);
            }
        };
    println!(
        "ledger open in {dir}: snapshot at log position {}, {} records replayed, {} ms",
        report.snapshot_lsn, report.replayed, report.elapsed_ms
    );
    // Op ids unique per run, so every run is a new request.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        << 8;
    let org = AccountId(1000);
    let key = AccountId(1001);
    match apply(
        &journal,
        run + 1,
        Command::CreateAccount {
            account: org,
            parent: None,
            draws_on_parent: false,
        },
    ) {
        Ok(_) => println!("created organisation {}", org.0),
        Err(LedgerError::AccountExists(_)) => println!("organisation {} exists already", org.0),
        Err(e) => panic!("{e}"),
    }
    match apply(
        &journal,
        run + 2,
        Command::CreateAccount {
            account: key,
            parent: Some(org),
            draws_on_parent: true,
        },
    ) {
        Ok(_) => println!("created API key account {} under {}", key.0, org.0),
        Err(LedgerError::AccountExists(_)) => println!("API key account {} exists already", key.0),
        Err(e) => panic!("{e}"),
    }
    let topup = Command::Credit {
        account: org,
        unit: Unit::USD,
        amount: "25.00".parse().unwrap(),
        bucket: None,
        kind: CreditKind::TopUp,
        reason: "prepaid wallet".into(),
    };
    if let Ok(Outcome::BalanceChanged { balance, .. }) = apply(&journal, run + 3, topup) {
        println!("topped up the organisation wallet by 25.00 USD: balance {balance} USD");
    }
    // An inference request: reserve the price of 4,096 output tokens at
    // 0.000015 USD each, then commit the 1,213 actually produced.
    let price = |tokens: i64| Amount::from_nanos(tokens as i128 * 15_000);
    let reserved = apply(
        &journal,
        run + 4,
        Command::Reserve {
            account: key,
            unit: Unit::USD,
            amount: price(4096),
            min_amount: price(4096),
            service: None,
            expires_at: reckon_balances::Timestamp((run >> 8) as u64 / 1_000_000 + 60_000),
        },
    )
    .expect("reserve");
    let Outcome::Reserved {
        reservation,
        granted,
        holds,
    } = reserved
    else {
        unreachable!()
    };
    println!(
        "reserved {granted} USD for 4096 tokens (reservation {}, held on bucket {:?})",
        reservation.0, holds[0].bucket
    );
    let committed = apply(
        &journal,
        run + 5,
        Command::Commit {
            reservation,
            used: price(1213),
            release_rest: true,
        },
    )
    .expect("commit");
    if let Outcome::Committed {
        debited, released, ..
    } = committed
    {
        println!(
            "committed 1213 tokens: debited {} USD, released {released} USD",
            debited[0].amount
        );
    }
    if let Ok(LedgerResponse::Account(Some(view))) = journal.call(LedgerRequest::Account(org)) {
        for b in view.buckets {
            println!(
                "organisation balance: {} {} (held {}, available {})",
                b.amount, b.unit, b.held, b.available
            );
        }
    }
    journal.shutdown();
}
