//! The README's walk-through, run as written: every `$ reckon ...` line of
//! the "Try it" section is executed in order against one data directory,
//! and its output must be what the README shows. A `$ reckon serve ...`
//! line (re)starts the server as written (on a free port).
//!
//! `RECKON_README_RECORD=1` prints what each command printed instead of
//! failing, to update the README after a deliberate change.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

struct Step {
    command: Vec<String>,
    expected: Vec<String>,
}

fn steps(readme: &str) -> Vec<Step> {
    let start = readme.find("## Try it").expect("a Try it section");
    let rest = &readme[start..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    let section = &rest[..end];
    let mut steps: Vec<Step> = Vec::new();
    let mut in_block = false;
    for line in section.lines() {
        if line.starts_with("```") {
            in_block = !in_block && line.trim() == "```text";
            continue;
        }
        if !in_block {
            continue;
        }
        if let Some(command) = line.strip_prefix("$ ") {
            let command = command.split('#').next().unwrap_or("").trim();
            steps.push(Step {
                command: command.split_whitespace().map(str::to_string).collect(),
                expected: Vec::new(),
            });
        } else if let Some(step) = steps.last_mut() {
            step.expected.push(line.trim_end().to_string());
        }
    }
    steps
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Paths in the README are relative to the repository's root.
fn from_root(args: &[String]) -> Vec<String> {
    args.iter()
        .map(|a| {
            let p = repo_root().join(a);
            if a.contains('/') && p.exists() {
                p.display().to_string()
            } else {
                a.clone()
            }
        })
        .collect()
}

fn start_server(cwd: &Path, args: &[String]) -> (Child, String) {
    let args = from_root(args);
    let mut child = Command::new(env!("CARGO_BIN_EXE_reckon"))
        .args(&args)
        .args(["--listen", "127.0.0.1:0"])
        .current_dir(cwd)
        .env("RECKON_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the server exited before listening")
            .unwrap();
        if let Some(addr) = line.strip_prefix("reckon listening on ") {
            break addr.trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

fn stop(child: &mut Child) {
    // SIGTERM: the server drains, checkpoints and exits.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}

#[test]
fn the_readme_walkthrough_gives_the_output_it_shows() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let steps = steps(&readme);
    assert!(
        steps.len() > 20,
        "the walk-through has {} steps",
        steps.len()
    );
    let record = std::env::var("RECKON_README_RECORD").is_ok();
    let dir = tempfile::tempdir().unwrap();
    let mut server: Option<(Child, String)> = None;
    let mut mismatches = Vec::new();
    for step in &steps {
        assert_eq!(step.command[0], "reckon", "{:?}", step.command);
        if step.command.get(1).map(String::as_str) == Some("serve") {
            if let Some((mut child, _)) = server.take() {
                stop(&mut child);
            }
            server = Some(start_server(dir.path(), &step.command[1..]));
            continue;
        }
        let addr = &server.as_ref().expect("a `reckon serve` line first").1;
        let output = Command::new(env!("CARGO_BIN_EXE_reckon"))
            .args(from_root(&step.command[1..]))
            .current_dir(dir.path())
            .env("RECKON_SERVER", addr)
            .env_remove("RECKON_TOKEN")
            .output()
            .unwrap();
        let mut got: Vec<String> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|l| l.trim_end().to_string())
            .collect();
        got.extend(
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .filter(|l| l.starts_with("reckon: "))
                .map(|l| l.trim_end().to_string()),
        );
        let expected: Vec<String> = step
            .expected
            .iter()
            .filter(|l| !l.trim().is_empty())
            .cloned()
            .collect();
        if record {
            println!("$ {}", step.command.join(" "));
            for l in &got {
                println!("{l}");
            }
        } else if got != expected {
            mismatches.push(format!(
                "$ {}\n  README shows:\n    {}\n  it printed:\n    {}",
                step.command.join(" "),
                expected.join("\n    "),
                got.join("\n    ")
            ));
        }
    }
    if let Some((mut child, _)) = server.take() {
        stop(&mut child);
    }
    assert!(
        mismatches.is_empty(),
        "the README's walk-through differs from what the commands print:\n{}",
        mismatches.join("\n")
    );
}
