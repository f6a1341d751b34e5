//! A loopback HTTP/1.1 proxy that injects faults between a store and its server: at random,
//! it resets connections (before forwarding a request, or after the server answered) and
//! answers `500` (without forwarding, or in place of the server's success). The fault tests
//! of the network backends run their stores through it and then check, over a clean
//! connection, that every operation left either its whole result or nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Result;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy did, for the test's report and its check that faults were injected.
#[derive(Debug, Default)]
pub struct Counts {
    /// Requests received.
    pub requests: AtomicU64,
    /// Connections reset before the request was forwarded.
    pub resets_before: AtomicU64,
    /// Connections reset after the server answered (it applied the request).
    pub resets_after: AtomicU64,
    /// `500` answers without forwarding.
    pub errors_before: AtomicU64,
    /// `500` answers in place of the server's success (it applied the request).
    pub errors_after: AtomicU64,
}

impl Counts {
    /// All faults injected.
    pub fn faults(&self) -> u64 {
        [
            &self.resets_before,
            &self.resets_after,
            &self.errors_before,
            &self.errors_after,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        write!(
            f,
            "{} requests, {} reset before, {} reset after, {} 500 before, {} 500 after",
            n(&self.requests),
            n(&self.resets_before),
            n(&self.resets_after),
            n(&self.errors_before),
            n(&self.errors_after)
        )
    }
}

/// Which requests may meet a fault, and how often.
#[derive(Clone, Copy)]
pub struct Plan {
    /// Probability (in percent) that an eligible request meets a fault.
    pub percent: u64,
    /// Whether a request (its head and body) is eligible.
    pub eligible: fn(head: &[u8], body: &[u8]) -> bool,
}

impl Plan {
    /// Every request is eligible.
    pub fn all(percent: u64) -> Plan {
        Plan {
            percent,
            eligible: |_, _| true,
        }
    }
}

/// One HTTP/1.1 message head plus its body.
struct Message {
    head: Vec<u8>,
    body: Vec<u8>,
    status: u16,
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Reads one message; `None` at a clean end of the connection. `no_body` for responses to
/// `HEAD` and for statuses without a body.
async fn read_message<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    response_to_head: bool,
) -> Result<Option<Message>> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = r.read_until(b'\n', &mut line).await?;
        if n == 0 {
            if head.is_empty() {
                return Ok(None);
            }
            anyhow::bail!("connection closed inside a message head");
        }
        head.extend_from_slice(&line);
        if line == b"\r\n" || line == b"\n" {
            break;
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let first = text.lines().next().unwrap_or_default().to_owned();
    let status = if first.starts_with("HTTP/") {
        first
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    } else {
        0
    };
    let no_body =
        response_to_head || status == 204 || status == 304 || (100..200).contains(&status);
    let mut body = Vec::new();
    if !no_body {
        if header(&text, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            // Keep the chunked framing as is; just find its end.
            loop {
                let mut size_line = Vec::new();
                r.read_until(b'\n', &mut size_line).await?;
                body.extend_from_slice(&size_line);
                let size = usize::from_str_radix(
                    String::from_utf8_lossy(&size_line)
                        .trim()
                        .split(';')
                        .next()
                        .unwrap_or("0"),
                    16,
                )?;
                let mut chunk = vec![0u8; size + 2];
                r.read_exact(&mut chunk).await?;
                body.extend_from_slice(&chunk);
                if size == 0 {
                    break;
                }
            }
        } else if let Some(len) = header(&text, "content-length") {
            let len: usize = len.parse()?;
            body.resize(len, 0);
            r.read_exact(&mut body).await?;
        } else if status != 0 {
            // A response without length: until the server closes.
            r.read_to_end(&mut body).await?;
        }
    }
    Ok(Some(Message { head, body, status }))
}

/// Drops a connection with a TCP reset.
fn reset(s: TcpStream) {
    let _ = s.set_zero_linger();
    drop(s);
}

async fn serve(
    client: TcpStream,
    upstream: String,
    counts: Arc<Counts>,
    plan: Plan,
    seed: u64,
) -> Result<()> {
    let mut rng = seed | 1;
    let mut roll = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % 100
    };
    let mut reader = BufReader::new(client);
    while let Some(req) = read_message(&mut reader, false).await? {
        counts.requests.fetch_add(1, Ordering::Relaxed);
        let is_head = req.head.starts_with(b"HEAD ");
        let r = roll();
        let fault = r < plan.percent && (plan.eligible)(&req.head, &req.body);
        let kind = roll() % 4;
        if fault && kind == 0 {
            counts.resets_before.fetch_add(1, Ordering::Relaxed);
            reset(reader.into_inner());
            return Ok(());
        }
        if fault && kind == 1 {
            counts.errors_before.fetch_add(1, Ordering::Relaxed);
            let body = b"<Error><Code>InternalError</Code><Message>injected</Message></Error>";
            let resp = format!(
                "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let c = reader.get_mut();
            c.write_all(resp.as_bytes()).await?;
            c.write_all(body).await?;
            continue;
        }
        let mut up = BufReader::new(TcpStream::connect(&upstream).await?);
        up.get_mut().write_all(&req.head).await?;
        up.get_mut().write_all(&req.body).await?;
        let Some(resp) = read_message(&mut up, is_head).await? else {
            reset(reader.into_inner());
            return Ok(());
        };
        if fault && kind == 2 {
            // The server applied the request; the client never hears.
            counts.resets_after.fetch_add(1, Ordering::Relaxed);
            reset(reader.into_inner());
            return Ok(());
        }
        if fault && kind == 3 && resp.status < 300 {
            // The server applied the request; the client hears it failed.
            counts.errors_after.fetch_add(1, Ordering::Relaxed);
            let body = b"<Error><Code>InternalError</Code><Message>injected</Message></Error>";
            let out = format!(
                "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let c = reader.get_mut();
            c.write_all(out.as_bytes()).await?;
            c.write_all(body).await?;
            continue;
        }
        let c = reader.get_mut();
        c.write_all(&resp.head).await?;
        c.write_all(&resp.body).await?;
    }
    Ok(())
}

/// Starts the proxy in front of `upstream` (`host:port`) on a loopback port, injecting faults
/// by `plan`; returns the port. It runs until the runtime ends.
pub async fn start(upstream: String, counts: Arc<Counts>, plan: Plan) -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        let mut n = 0u64;
        while let Ok((sock, _)) = listener.accept().await {
            n += 1;
            let (up, counts) = (upstream.clone(), counts.clone());
            let seed = rand::random::<u64>() ^ n;
            tokio::spawn(async move {
                let _ = serve(sock, up, counts, plan, seed).await;
            });
        }
    });
    Ok(port)
}
