//! `slimformer serve` inside a cgroup with a memory limit, as `docker run --memory` or
//! `systemd-run -p MemoryMax=` puts it: the server finds the limit itself, plans within
//! it, answers what fits, refuses the rest (429 for now, 413 for ever), and is never
//! the out-of-memory killer's; its peak resident memory stays within its plan.
//!
//! Needs a writable cgroup memory controller (root). Where there is none the test says
//! so and passes, unless SLIMFORMER_REQUIRE_CGROUP=1 (as `.ci/run` sets it), where it fails.

use crate::serve::Server;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A memory cgroup of this test, removed when dropped.
struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    fn new(limit: u64) -> Result<Cgroup, String> {
        let name = format!("slimformer-test-{}", std::process::id());
        let v2 = Path::new("/sys/fs/cgroup");
        let v2_has_memory = std::fs::read_to_string(v2.join("cgroup.subtree_control"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"));
        // Nested in this process's own group, so that its limits still hold.
        let own = |v2: bool| -> String {
            let groups = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
            groups
                .lines()
                .filter_map(|l| l.splitn(3, ':').nth(2).map(|p| (l, p)))
                .find(|(l, _)| {
                    if v2 {
                        l.starts_with("0::")
                    } else {
                        l.split(':')
                            .nth(1)
                            .is_some_and(|c| c.split(',').any(|c| c == "memory"))
                    }
                })
                .map(|(_, p)| p.trim_start_matches('/').to_string())
                .unwrap_or_default()
        };
        let (dir, limit_file) = if v2_has_memory {
            (v2.join(own(true)).join(&name), "memory.max")
        } else {
            (
                Path::new("/sys/fs/cgroup/memory")
                    .join(own(false))
                    .join(&name),
                "memory.limit_in_bytes",
            )
        };
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let group = Cgroup { dir };
        std::fs::write(group.dir.join(limit_file), limit.to_string())
            .map_err(|e| format!("{limit_file}: {e}"))?;
        Ok(group)
    }

    /// `command` started inside the group: a shell moves itself in, then execs it.
    fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"echo $$ > "$0" && exec "$@""#)
            .arg(self.dir.join("cgroup.procs"))
            .arg(program)
            .args(args);
        cmd
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn minilm() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/all-MiniLM-L6-v2")
}

fn peak_resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// `n` texts of about `words` tokens each.
fn texts(n: usize, words: usize) -> Vec<String> {
    let sentence = "It is a truth universally acknowledged that a single man in possession of a good fortune must be in want of a wife";
    let pool: Vec<&str> = sentence.split(' ').collect();
    (0..n)
        .map(|i| {
            (0..words)
                .map(|j| pool[(i + j) % pool.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

#[test]
fn under_a_cgroup_memory_limit_requests_are_refused_not_killed() {
    const LIMIT: u64 = 360 << 20;
    let group = match Cgroup::new(LIMIT) {
        Ok(g) => g,
        Err(e) if std::env::var("SLIMFORMER_REQUIRE_CGROUP").as_deref() != Ok("1") => {
            eprintln!("skipped: no writable memory cgroup here ({e})");
            return;
        }
        Err(e) => panic!("SLIMFORMER_REQUIRE_CGROUP=1 but no memory cgroup could be made: {e}"),
    };
    let model = minilm();
    let cmd = group.command(
        env!("CARGO_BIN_EXE_slimformer"),
        &["serve", model.to_str().unwrap(), "--port", "0"],
    );
    let (mut server, line) = Server::spawn(cmd);

    // The limit was found in the cgroup, and the plan is within it: forward passes of
    // the default 16,384 tokens would not fit beside the weights, so they are split.
    let plan = &line["memory"];
    assert_eq!(plan["limit_bytes"], LIMIT, "{line}");
    assert!(
        plan["max_batch_tokens"].as_u64().unwrap() < 16_384,
        "{plan}"
    );
    let budget = plan["request_budget_bytes"].as_u64().unwrap();
    let headroom = plan["reload_headroom_bytes"].as_u64().unwrap();
    assert!(budget > 0 && budget < LIMIT, "{plan}");

    // Twelve clients at once, each wanting every token's vector of 32 texts: a few fit
    // the budget at a time, the others are told to come back.
    let body = serde_json::json!({"inputs": texts(32, 60)});
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..12)
            .map(|_| s.spawn(|| server.post("/embed_all", body.clone()).status))
            .collect();
        clients.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    let later = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!(ok + later, 12, "only 200 and 429 expected: {statuses:?}");
    assert!(ok >= 1 && later >= 1, "{statuses:?}");

    // One request larger than the whole budget (32 texts of 256 tokens, MiniLM's
    // longest) can never run: 413, with what it needs.
    let huge = server.post("/embed_all", serde_json::json!({"inputs": texts(32, 500)}));
    assert_eq!(huge.status, 413, "{}", huge.body);
    assert!(huge.body.contains("of memory"), "{}", huge.body);

    // Alive, answering, and within its plan: the peak never reached the headroom kept
    // for a reload's second copy of the weights.
    assert!(server.alive(), "the server was killed");
    assert_eq!(
        server
            .post("/embed", serde_json::json!({"inputs": "still here"}))
            .status,
        200
    );
    let peak = peak_resident_bytes(server.pid());
    assert!(
        peak <= LIMIT - headroom,
        "peak resident {peak} bytes, over the plan's {} (limit {LIMIT} less the reload headroom {headroom})",
        LIMIT - headroom
    );
    let metrics = server.call("GET", "/metrics", None, None).body;
    let refusals: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("slimformer_memory_refusals_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(refusals as usize, later + 1, "{metrics}");
    drop(server);
}
