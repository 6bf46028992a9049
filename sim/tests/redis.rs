//! `reckon-sim redis` against a real redis-server on 127.0.0.1, when one is
//! installed (the suite does not depend on Redis: without `redis-server` on
//! the PATH this test says so and passes). The Lua scripts must do
//! Reckon's reserve/commit work exactly: hold only what the balance not yet
//! held covers, commit at most what was held and release the rest, and
//! answer a retransmission with its first answer without applying it twice.

use reckon_sim::load::{self, LoadConfig};
use reckon_sim::report;
use reckon_sim::resp::{RedisConn, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

struct Redis {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn redis_server() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join("redis-server"))
        .find(|p| p.is_file())
}

async fn start_redis(binary: &std::path::Path) -> Redis {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(binary)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ])
        .args(["--daemonize", "no", "--protected-mode", "yes"])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}");
    let started = Instant::now();
    loop {
        if let Ok(mut c) = RedisConn::connect(&addr).await {
            if c.call(&["PING"]).await == Ok(Value::Simple("PONG".into())) {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "redis did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Redis {
        child,
        addr,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lua_flow_does_reckons_reserve_commit_work() {
    let Some(binary) = redis_server() else {
        eprintln!("redis-server is not installed: skipping (scripts/redis_compare.sh installs it)");
        return;
    };
    let redis = start_redis(&binary).await;
    let mut c = RedisConn::connect(&redis.addr).await.unwrap();
    let scripts = c.load_scripts().await.unwrap();
    c.call(&["HSET", "acct:1", "balance", "1000", "held", "0"])
        .await
        .unwrap();
    let reserve = |session: &str, amount: &str| {
        [
            "EVALSHA",
            &scripts.reserve,
            "2",
            "acct:1",
            &format!("hold:{session}"),
            amount,
            "600",
        ]
        .map(str::to_string)
    };
    let commit = |session: &str, used: &str| {
        [
            "EVALSHA",
            &scripts.commit,
            "2",
            "acct:1",
            &format!("hold:{session}"),
            used,
            "600",
        ]
        .map(str::to_string)
    };
    let call = |args: [String; 7]| {
        let addr = redis.addr.clone();
        async move {
            let mut c = RedisConn::connect(&addr).await.unwrap();
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            c.call(&a).await.unwrap()
        }
    };
    let balance = || {
        let addr = redis.addr.clone();
        async move {
            let mut c = RedisConn::connect(&addr).await.unwrap();
            c.call(&["HMGET", "acct:1", "balance", "held"])
                .await
                .unwrap()
        }
    };
    // Redis 7 puts "ERR " before a script's error_reply.
    let refused = |v: Value, code: &str| match v {
        Value::Error(e) => assert_eq!(e.trim_start_matches("ERR "), code),
        other => panic!("{other:?} where {code} was due"),
    };
    let bulk = |s: &str| Value::Bulk(Some(s.as_bytes().to_vec()));
    let pair = |b: &str, h: &str| Value::Array(Some(vec![bulk(b), bulk(h)]));

    assert_eq!(call(reserve("a", "700")).await, Value::Integer(700));
    assert_eq!(balance().await, pair("1000", "700"));
    // A retransmitted reserve: the same grant, held once.
    assert_eq!(call(reserve("a", "700")).await, Value::Integer(700));
    assert_eq!(balance().await, pair("1000", "700"));
    // More than the balance not yet held: refused, nothing held.
    assert_eq!(call(reserve("b", "400")).await, Value::Integer(-1));
    assert_eq!(balance().await, pair("1000", "700"));
    // Committing more than was held is refused and changes nothing.
    refused(call(commit("a", "701")).await, "USED_ABOVE_GRANT");
    assert_eq!(balance().await, pair("1000", "700"));
    // Commit 250 of 700: debited 250, the rest released; a retransmitted
    // commit gets the same answer and debits nothing more.
    assert_eq!(call(commit("a", "250")).await, Value::Integer(250));
    assert_eq!(balance().await, pair("750", "0"));
    assert_eq!(call(commit("a", "250")).await, Value::Integer(250));
    assert_eq!(call(commit("a", "100")).await, Value::Integer(250));
    assert_eq!(balance().await, pair("750", "0"));
    // No hold, no commit; the refused reserve holds nothing to commit.
    refused(call(commit("nobody", "1")).await, "UNKNOWN_SESSION");
    refused(call(commit("b", "1")).await, "NOTHING_HELD");
    // The hold is remembered for the window, then forgotten.
    assert_eq!(
        c.call(&["TTL", "hold:a"]).await.unwrap(),
        Value::Integer(600)
    );

    // The generator's run, checked against the balances Redis holds.
    let config = LoadConfig {
        server: redis.addr.clone(),
        accounts: 50,
        account_base: 100,
        connections: 2,
        depth: 16,
        threads: 2,
        duration: Duration::from_secs(1),
        mix: "reserve-commit=1".parse().unwrap(),
        balance: 1_000_000_000,
        verify: true,
        progress: false,
        ..LoadConfig::default()
    };
    let r = load::run_redis(&config, CancellationToken::new())
        .await
        .unwrap()
        .report;
    print!("{}", report::summary(&r));
    assert_eq!(r.config.target, "redis");
    assert!(r.requests > 100, "{}", r.requests);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.flows_completed["reserve-commit"] * 2, r.requests);
    let v = r.verification.as_ref().unwrap();
    assert!(v.exact && v.held_after == 0, "{v:?}");
    assert_eq!(r.throughput.requests.iter().sum::<u64>(), r.requests);
    // Options Redis cannot honour are refused.
    for bad in [
        LoadConfig {
            batch: 8,
            ..config.clone()
        },
        LoadConfig {
            mix: "event=1".parse().unwrap(),
            ..config.clone()
        },
    ] {
        assert!(load::run_redis(&bad, CancellationToken::new())
            .await
            .is_err());
    }
}
