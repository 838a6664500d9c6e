//! The operator's HTTP endpoint (`metrics.bind`): `GET /metrics` in Prometheus text format, and
//! `GET /health`: 200 when the database answers, 503 with the reason when it does not.
//!
//! A small HTTP/1.1 server is enough for a scraper and a load balancer's probe: one request per
//! connection, headers read up to a limit, the answer closes the connection.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::engine::Engine;

/// Request head bytes read at most.
const MAX_HEAD: usize = 8 << 10;
/// A client gets this long to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `/health` waits for the database.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, engine: Arc<Engine>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(answer(stream, engine.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(mut stream: TcpStream, engine: Arc<Engine>) {
    let Ok(Some(path)) = tokio::time::timeout(READ_TIMEOUT, read_request(&mut stream)).await else {
        let _ = respond(&mut stream, "400 Bad Request", "text/plain", "bad request\n").await;
        return;
    };
    let result = match path.as_deref() {
        Ok("/metrics") => respond(&mut stream, "200 OK", "text/plain; version=0.0.4", &engine.render_metrics()).await,
        Ok("/health") => match engine.health(HEALTH_TIMEOUT).await {
            Ok(()) => respond(&mut stream, "200 OK", "text/plain", "ok\n").await,
            Err(reason) => {
                respond(&mut stream, "503 Service Unavailable", "text/plain", &format!("database: {reason}\n")).await
            }
        },
        Ok(_) => respond(&mut stream, "404 Not Found", "text/plain", "try /metrics or /health\n").await,
        Err(()) => respond(&mut stream, "405 Method Not Allowed", "text/plain", "GET only\n").await,
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "metrics endpoint: writing the answer failed");
    }
}

/// The path of a GET request (`Err` for another method); `None` when the request is unreadable.
async fn read_request(stream: &mut TcpStream) -> Option<Result<String, ()>> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 || head.len() + n > MAX_HEAD {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = std::str::from_utf8(&head).ok()?.lines().next()?;
    let mut parts = line.split(' ');
    let (method, target) = (parts.next()?, parts.next()?);
    let path = target.split('?').next().unwrap_or(target).to_owned();
    Some(if method == "GET" { Ok(path) } else { Err(()) })
}

async fn respond(stream: &mut TcpStream, status: &str, content_type: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
