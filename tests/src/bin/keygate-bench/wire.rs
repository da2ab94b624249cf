//! A lean HTTP/1.1 client for the login load: requests encoded once, kept connections, and a
//! response read to its `Content-Length` without parsing the body. The load generator shares
//! the two CPUs with the server's hashing threads, so every microsecond it spends per sign-in
//! comes off Keygate's side of the ratio to raw argon2id; reqwest with a JSON parse of each
//! answer spent about 0.3 ms per sign-in.

use anyhow::{Context, Result, bail, ensure};
use std::net::SocketAddr;
use std::sync::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest response head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// Kept connections to one server, each used by one request at a time.
#[derive(Debug)]
pub struct Client {
    addr: SocketAddr,
    idle: Mutex<Vec<Conn>>,
}

#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    /// Bytes read past the previous response (none from a well-behaved server).
    buf: Vec<u8>,
}

/// A JSON `POST` to `path` on `host`, encoded once.
pub fn post_json(host: &str, path: &str, body: &serde_json::Value) -> Vec<u8> {
    let body = body.to_string();
    format!(
        "POST {path} HTTP/1.1\r\nhost: {host}\r\nuser-agent: keygate-bench\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl Client {
    /// A client of the server at `base_url` (`http://HOST:PORT`).
    pub fn new(base_url: &str) -> Result<Self> {
        let authority = base_url
            .strip_prefix("http://")
            .with_context(|| format!("{base_url} is not an http:// URL"))?;
        Ok(Self {
            addr: authority.parse().context("the server's address")?,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// The `host` header's value for this server.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Sends `request` (from [`post_json`]) on a kept connection (a new one when none is
    /// free) and reads the answer; fails unless its status is `status`.
    pub async fn expect(&self, request: &[u8], status: u16) -> Result<()> {
        let kept = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let mut conn = match kept {
            Some(c) => c,
            None => Conn {
                stream: TcpStream::connect(self.addr).await?,
                buf: Vec::with_capacity(4096),
            },
        };
        let (got, keep) = conn.exchange(request).await?;
        if keep && let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
        ensure!(got == status, "the server answered {got}, not {status}");
        Ok(())
    }
}

impl Conn {
    /// One request and its response: the status, and whether the connection may be kept.
    async fn exchange(&mut self, request: &[u8]) -> Result<(u16, bool)> {
        self.stream.write_all(request).await?;
        let head_end = loop {
            if let Some(at) = find(&self.buf, b"\r\n\r\n") {
                break at + 4;
            }
            ensure!(
                self.buf.len() < MAX_HEAD,
                "a response head over {MAX_HEAD} bytes"
            );
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                bail!("the server closed the connection");
            }
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).context("a response head")?;
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.strip_prefix("HTTP/1.1 "))
            .and_then(|l| l.get(..3))
            .and_then(|s| s.parse::<u16>().ok())
            .with_context(|| format!("a status line: {head:?}"))?;
        let (mut length, mut close) = (None, false);
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.parse::<usize>().context("content-length")?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                bail!("a response with transfer-encoding {value}: only content-length is read");
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            }
        }
        let total = head_end + length.context("a response without content-length")?;
        while self.buf.len() < total {
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                bail!("the server closed the connection inside a response");
            }
        }
        self.buf.drain(..total);
        Ok((status, !close))
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response split across reads, then a second one on the same connection; a
    /// `Connection: close` answer is not kept.
    #[tokio::test]
    async fn reads_responses_to_their_length_and_keeps_the_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            for answer in [
                &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel"[..],
                &b"lo"[..],
                &b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}"[..],
            ] {
                if !answer.starts_with(b"lo") {
                    let _ = s.read(&mut buf).await.unwrap();
                }
                s.write_all(answer).await.unwrap();
                s.flush().await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        });
        let client = Client::new(&format!("http://{addr}")).unwrap();
        let request = post_json(&client.host(), "/x", &serde_json::json!({"a": 1}));
        assert!(String::from_utf8_lossy(&request).ends_with("content-length: 7\r\n\r\n{\"a\":1}"));
        client.expect(&request, 200).await.unwrap();
        assert_eq!(client.idle.lock().unwrap().len(), 1);
        let err = client.expect(&request, 200).await.unwrap_err();
        assert!(err.to_string().contains("429"), "{err}");
        assert!(client.idle.lock().unwrap().is_empty());
        server.await.unwrap();
    }
}
