//! `slimformer probe URL`: an HTTP GET that exits 0 on a 200, so a container
//! image with nothing but the binary can still have a health check.

use anyhow::{bail, Context};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args)]
pub struct ProbeArgs {
    /// The address to GET: http://HOST:PORT/PATH (plain HTTP; no TLS). Default:
    /// this machine's server, http://127.0.0.1:$SLIMFORMER_PORT/ready (port 8080
    /// when the variable is unset), which answers 200 once a model is loaded.
    pub url: Option<String>,
    /// Seconds to wait for the connection and the answer.
    #[arg(long, default_value_t = 3.0)]
    pub timeout: f64,
}

/// Where a plain-HTTP URL points.
#[derive(Debug, PartialEq)]
struct Target {
    host: String,
    port: u16,
    path: String,
}

fn parse_url(url: &str) -> anyhow::Result<Target> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("{url:?}: only http:// addresses can be probed");
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    // A bracketed IPv6 literal keeps its colons.
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => {
            let port = port
                .parse()
                .with_context(|| format!("{url:?}: the port {port:?} is not a number"))?;
            (host, port)
        }
        _ => (authority, 80),
    };
    if host.is_empty() {
        bail!("{url:?}: no host");
    }
    Ok(Target {
        host: host.trim_start_matches('[').trim_end_matches(']').into(),
        port,
        path: path.into(),
    })
}

/// The status code of an HTTP response's first line.
fn status_of(response: &[u8]) -> Option<u16> {
    let line = response.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

pub fn probe(args: ProbeArgs) -> anyhow::Result<ExitCode> {
    if !(args.timeout > 0.0 && args.timeout.is_finite()) {
        bail!("--timeout must be a positive number of seconds");
    }
    let timeout = Duration::from_secs_f64(args.timeout);
    let url = args.url.unwrap_or_else(|| {
        let port = std::env::var("SLIMFORMER_PORT").unwrap_or_else(|_| "8080".into());
        format!("http://127.0.0.1:{port}/ready")
    });
    let target = parse_url(&url)?;
    // A numeric address needs no resolver, which a static binary in an empty
    // image does not have.
    let addrs: Vec<SocketAddr> = match target.host.parse::<std::net::IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, target.port)],
        Err(_) => (target.host.as_str(), target.port)
            .to_socket_addrs()
            .with_context(|| format!("{}: cannot resolve the host", url))?
            .collect(),
    };
    let addr = addrs
        .first()
        .with_context(|| format!("{}: the host has no address", url))?;
    let mut stream = TcpStream::connect_timeout(addr, timeout)
        .with_context(|| format!("{}: cannot connect", url))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let host_header = if target.host.contains(':') {
        format!("[{}]:{}", target.host, target.port)
    } else {
        format!("{}:{}", target.host, target.port)
    };
    write!(
        stream,
        "GET {} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: slimformer-probe\r\nConnection: close\r\n\r\n",
        target.path
    )
    .with_context(|| format!("{}: cannot send the request", url))?;
    // The status line is all that is needed; read a little more than it.
    let mut response = Vec::new();
    let mut chunk = [0u8; 512];
    while !response.contains(&b'\n') && response.len() < 8192 {
        let n = stream
            .read(&mut chunk)
            .with_context(|| format!("{}: no answer", url))?;
        if n == 0 {
            break;
        }
        response.extend_from_slice(&chunk[..n]);
    }
    match status_of(&response) {
        Some(200) => Ok(ExitCode::SUCCESS),
        Some(code) => {
            eprintln!("slimformer: probe: {} answered {code}", url);
            Ok(ExitCode::FAILURE)
        }
        None => bail!("{}: the answer is not HTTP", url),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_port_and_path() {
        let t = parse_url("http://127.0.0.1:8080/health").unwrap();
        assert_eq!(
            t,
            Target {
                host: "127.0.0.1".into(),
                port: 8080,
                path: "/health".into()
            }
        );
        let t = parse_url("http://example.org").unwrap();
        assert_eq!((t.port, t.path.as_str()), (80, "/"));
        let t = parse_url("http://[::1]:9000/ready").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 9000));
        assert!(parse_url("https://x/").is_err());
        assert!(parse_url("http://:80/").is_err());
        assert!(parse_url("http://h:port/").is_err());
    }

    #[test]
    fn the_status_comes_from_the_first_line() {
        assert_eq!(status_of(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            status_of(b"HTTP/1.1 503 Service Unavailable\r\n\r\n"),
            Some(503)
        );
        assert_eq!(status_of(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_of(b""), None);
    }
}
