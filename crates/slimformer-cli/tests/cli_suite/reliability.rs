//! The server under conditions a deployment meets: a log reader that stalls.

use super::serve::{fixture, Server};
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

/// A server of the fixture BERT started with `args`, and its address.
fn start_with(args: &[&str]) -> (Server, String) {
    let model = fixture("bert-base");
    let mut all = vec![model.to_str().unwrap()];
    all.extend_from_slice(args);
    let server = Server::start(&all);
    let addr = server.url("").trim_start_matches("http://").to_string();
    (server, addr)
}

fn metric(addr: &str, name: &str) -> f64 {
    let text = ureq::get(&format!("http://{addr}/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name}"))
        .parse()
        .unwrap()
}

/// Whether the server closed the connection: a read gives end of file (or a reset)
/// instead of waiting.
fn closed_by_server(stream: &mut std::net::TcpStream) -> bool {
    use std::io::Read;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 512];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            // A response (408) before the close is fine; keep reading to the end.
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

fn tokenize_ok(addr: &str) -> bool {
    ureq::post(&format!("http://{addr}/v1/tokenize"))
        .timeout(Duration::from_secs(5))
        .set("Content-Type", "application/json")
        .send_string(r#"{"inputs": "a well-behaved client"}"#)
        .is_ok_and(|r| r.status() == 200)
}

#[test]
fn slow_and_idle_clients_are_cut_off_while_others_are_served() {
    use std::io::Write;
    let (server, addr) = start_with(&[
        "--header-read-timeout",
        "2",
        "--body-read-timeout",
        "2",
        "--idle-timeout",
        "3",
    ]);
    // Slowloris: request heads that never end; idle: connections that say nothing;
    // a body that stops halfway.
    let mut slow: Vec<std::net::TcpStream> = (0..100)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            s.write_all(b"POST /v1/tokenize HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .unwrap();
            s
        })
        .collect();
    let mut idle: Vec<std::net::TcpStream> = (0..100)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    let mut body = std::net::TcpStream::connect(&addr).unwrap();
    body.write_all(
        b"POST /v1/tokenize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"inputs\"",
    )
    .unwrap();
    assert!(tokenize_ok(&addr), "a good client beside them");
    // The server has taken them all (a busy machine accepts the last ones a little later).
    let held = (0..30).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        metric(&addr, "slimformer_connections_open") >= 200.0
    });
    assert!(held, "the server never held the 200 connections");

    // Within the timeouts (and a margin), every one of them is closed by the server.
    std::thread::sleep(Duration::from_secs(6));
    for (i, s) in slow.iter_mut().enumerate() {
        assert!(closed_by_server(s), "slow header connection {i} still open");
    }
    for (i, s) in idle.iter_mut().enumerate() {
        assert!(closed_by_server(s), "idle connection {i} still open");
    }
    let mut answer = String::new();
    {
        use std::io::Read;
        body.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = body.read_to_string(&mut answer);
    }
    assert!(answer.starts_with("HTTP/1.1 408"), "slow body: {answer:?}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(tokenize_ok(&addr));
    let open = metric(&addr, "slimformer_connections_open");
    assert!(open <= 2.0, "{open} connections still counted open");
    drop(server);
}

#[test]
fn past_the_connection_limit_new_connections_are_closed_at_once() {
    let (server, addr) = start_with(&["--max-connections", "20", "--idle-timeout", "2"]);
    let held: Vec<std::net::TcpStream> = (0..20)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = std::net::TcpStream::connect(&addr).unwrap();
    assert!(closed_by_server(&mut extra), "the 21st connection was kept");
    // Once the idle ones are closed, clients are served again, and the refusal counted.
    drop(held);
    let served = (0..30).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        tokenize_ok(&addr)
    });
    assert!(
        served,
        "no client was served after the held connections closed"
    );
    assert!(metric(&addr, "slimformer_connections_refused_total") >= 1.0);
    drop(server);
}

/// A request's id (the client's X-Request-Id, or the server's own) is in its error
/// body, its response header and every log line it causes.
#[test]
fn request_ids_reach_error_bodies_and_every_log_line() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_slimformer"))
        .args([
            "--log-format",
            "json",
            "serve",
            "--port",
            "0",
            "--log-texts",
        ])
        .arg(fixture("bert-base"))
        .env("SLIMFORMER_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("listening") {
        line.clear();
        stdout.read_line(&mut line).unwrap();
    }
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let base = format!("http://{}", v["listening"].as_str().unwrap());
    let post = |id: &str, body: &str| match ureq::post(&format!("{base}/v1/embed"))
        .set("Content-Type", "application/json")
        .set("X-Request-Id", id)
        .send_string(body)
    {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    let bad = post("bad-request-7", r#"{"inputs": ""}"#);
    assert_eq!(bad.status(), 422);
    assert_eq!(bad.header("x-request-id"), Some("bad-request-7"));
    let body: serde_json::Value = serde_json::from_str(&bad.into_string().unwrap()).unwrap();
    assert_eq!(body["request_id"], "bad-request-7", "{body}");
    assert_eq!(
        post("good-request-8", r#"{"inputs": "hello"}"#).status(),
        200
    );
    // SIGTERM: the server stops and writes out its queued log lines.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let mut logs = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut logs).unwrap();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("good-request-8"))
        .collect();
    // The request line and the texts line (logged inside the request's span).
    assert!(
        lines.iter().any(|l| l.contains("\"inputs\""))
            && lines.iter().any(|l| l.contains("\"request\"")),
        "log lines of the request: {lines:#?}\nall: {logs}"
    );
}

/// One HTTPS request over rustls that trusts only `ca`; the response as text.
fn https_get(addr: &str, path: &str, ca: &rustls::pki_types::CertificateDer<'static>) -> String {
    use std::io::{Read, Write};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let connection = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    let _ = tls.read_to_string(&mut response);
    response
}

#[test]
fn tls_serves_https_with_a_generated_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();

    let (server, addr) = start_with(&[
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
    ]);
    let reply = https_get(&addr, "/health", cert.der());
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("\"ok\""), "{reply}");
    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = ureq::get(&format!("http://{addr}/health"))
        .timeout(Duration::from_secs(5))
        .call();
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");
    drop(server);

    // A key that is not PEM stops the start, naming the file.
    std::fs::write(&key_path, "not a key").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_slimformer"))
        .args(["serve", "--port", "0"])
        .arg(fixture("bert-base"))
        .args([
            "--tls-cert",
            cert_path.to_str().unwrap(),
            "--tls-key",
            key_path.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("key.pem") && err.contains("private key"),
        "{err}"
    );
}
