//! The server under conditions a deployment meets: a log reader that stalls.

use super::serve::fixture;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The server's logs go to a pipe that nobody reads (a stalled log shipper): once
/// the pipe is full, requests still get answered, and the lost lines are counted.
#[test]
fn a_stalled_log_reader_never_stops_the_server() {
    for format in ["text", "json"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_slimformer"))
            .args(["--log-format", format, "serve", "--port", "0"])
            .arg(fixture("bert-base"))
            .env("SLIMFORMER_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Read the address line, then never read either pipe again.
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        while !line.contains("listening") {
            line.clear();
            stdout.read_line(&mut line).unwrap();
        }
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let base = format!("http://{}", v["listening"].as_str().unwrap());
        let _stderr = child.stderr.take();

        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(10))
            .build();
        for i in 0..5000 {
            let reply = agent
                .post(&format!("{base}/v1/tokenize"))
                .set("Content-Type", "application/json")
                .send_string(r#"{"inputs": "a request whose log line nobody reads"}"#);
            assert!(
                reply.as_ref().is_ok_and(|r| r.status() == 200),
                "{format}: request {i} failed: {reply:?}"
            );
        }
        let metrics = agent
            .get(&format!("{base}/metrics"))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        let dropped: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("slimformer_log_lines_dropped_total "))
            .expect("the dropped-lines counter")
            .parse()
            .unwrap();
        // 5,000 request lines of ~150 bytes overflow a 64 KiB pipe and the 2,048-line queue.
        assert!(
            dropped > 0.0,
            "{format}: no line dropped, so the test did not stall the log"
        );
        let _ = child.kill();
        let _ = child.wait();
        drop(stdout);
    }
}
