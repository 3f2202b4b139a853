//! `wxdispatch probe`: asks the worker's own HTTP port whether it is ready, and answers with the
//! exit code alone. Images without a shell or curl (the project's is built `FROM scratch`) can
//! still run it as a health check or a Kubernetes `exec` probe.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Options of `wxdispatch probe`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The worker's HTTP address, as the worker reads it; an unspecified host (0.0.0.0, [::])
    /// means this machine.
    #[arg(long, env = "WXD_HTTP_ADDR", default_value = "0.0.0.0:9090")]
    pub addr: String,
    /// The path to ask: /readyz (connected and consuming) or /healthz (alive).
    #[arg(long, default_value = "/readyz")]
    pub path: String,
    /// Give up after this long (connect, request and answer together).
    #[arg(long, default_value_t = 2000, value_name = "MS")]
    pub timeout_ms: u64,
}

/// Exit code 0 when `GET path` answers 200, else 1 with one line on stderr saying why.
pub(crate) fn run(args: &Args) -> i32 {
    match status(args) {
        Ok(200) => 0,
        Ok(code) => {
            eprintln!("probe: {} answered {code}", args.path);
            1
        }
        Err(e) => {
            eprintln!("probe: {}: {e}", args.addr);
            1
        }
    }
}

/// The HTTP status of `GET path` on `addr`.
fn status(args: &Args) -> std::io::Result<u16> {
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let addr = local(
        args.addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address"))?,
    );
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    // One write: `write!` on a socket sends each formatted piece on its own, and a server that
    // answers after the first piece and closes would fail the rest with a broken pipe.
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n",
        args.path
    );
    stream.write_all(request.as_bytes())?;
    // The status line is all we need: "HTTP/1.1 200 OK".
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < 12 {
        let n = stream.read(&mut head[len..])?;
        if n == 0 {
            break;
        }
        len += n;
    }
    parse_status(&head[..len])
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer"))
}

/// A listener on 0.0.0.0 or [::] is reached on the loopback address.
fn local(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => {
            SocketAddr::from(([127, 0, 0, 1], a.port()))
        }
        SocketAddr::V6(a) if a.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port()))
        }
        other => other,
    }
}

fn parse_status(head: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(head).ok()?;
    let mut words = line.split_whitespace();
    words.next().filter(|w| w.starts_with("HTTP/"))?;
    words.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-shot server answering `answer` to the first request.
    fn serve_once(answer: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            // The whole request head, as a real server reads it, before answering.
            let mut head = Vec::new();
            let mut buf = [0u8; 512];
            while !head.ends_with(b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = s.write_all(answer.as_bytes());
        });
        format!("0.0.0.0:{}", addr.port())
    }

    fn args(addr: String) -> Args {
        Args {
            addr,
            path: "/readyz".into(),
            timeout_ms: 2000,
        }
    }

    #[test]
    fn ready_is_0_and_anything_else_is_1() {
        assert_eq!(run(&args(serve_once("HTTP/1.1 200 OK\r\n\r\nready\n"))), 0);
        assert_eq!(
            run(&args(serve_once(
                "HTTP/1.1 503 Service Unavailable\r\n\r\n"
            ))),
            1
        );
        assert_eq!(run(&args(serve_once("garbage"))), 1);
        // Nothing listening.
        let free = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert_eq!(run(&args(free.to_string())), 1);
    }

    #[test]
    fn status_lines_parse() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 503 x"), Some(503));
        assert_eq!(parse_status(b"SSH-2.0"), None);
    }
}
