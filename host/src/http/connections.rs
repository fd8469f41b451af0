//! Accepting connections and serving HTTP/1.1 on them, with the bounds `axum::serve` does
//! not set: a client must send a request's head within `header_read` (an idle keep-alive
//! connection is closed after the same time), a client that stops reading what it is sent
//! is cut off once a write has waited `write_stall` (a live event stream it no longer reads
//! would otherwise hold its slot for ever), and at shutdown open connections get `drain` to
//! finish before the host stops regardless.
//!
//! hyper answers a request it cannot parse (a target beyond its 64 KiB limit, a head too
//! large, bytes that are not HTTP) itself, with an empty body, before any of our code sees
//! it. [`Connection`] puts the API's JSON error body into those answers, so every answer a
//! client gets has the shape of API.md.

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// How long connections may take.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// To send a request's head, and to stay idle between requests.
    pub header_read: Duration,
    /// For open connections to finish at shutdown.
    pub drain: Duration,
    /// The longest a write may wait for the client to take bytes before the connection is
    /// closed.
    pub write_stall: Duration,
}

/// The address of the client a request came from (a request extension).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddress(pub SocketAddr);

/// Serve `app` on `listener` until `shutdown` completes, then let open connections finish
/// for at most `limits.drain`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // wait a moment instead of spinning.
                    tracing::warn!("accepting a connection failed: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app = tower::ServiceBuilder::new()
            .map_request(move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ClientAddress(peer));
                request
            })
            .service(app.clone());
        let io = Connection::new(stream, limits.write_stall);
        let connection = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(app));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!("a connection ended with an error: {error}");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open {:?} after shutdown began; stopping anyway", limits.drain);
    }
}

/// A client's TCP connection, as hyper reads and writes it: writes that wait too long fail,
/// and hyper's own bodiless error answers get the API's JSON body.
struct Connection {
    stream: TcpStream,
    write_stall: Duration,
    /// Set while a write waits for the client; it fails when this fires.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The JSON answer written in place of hyper's own, and how much of it is out.
    replacement: Option<(Vec<u8>, usize)>,
}

impl Connection {
    fn new(stream: TcpStream, write_stall: Duration) -> Self {
        Connection { stream, write_stall, stalled: None, replacement: None }
    }

    /// A write is waiting: start its clock, or fail it once the clock has run out.
    fn waiting(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let stall = self.write_stall;
        let timer = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client took nothing for {stall:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// A write's poll, on the stall clock: it runs while the write waits and stops once it moves.
    fn timed<T>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match polled {
            Poll::Pending => {
                ready!(self.waiting(cx))?;
                Poll::Pending
            }
            done => {
                self.stalled = None;
                done
            }
        }
    }

    /// Write the rest of a replacement answer; ready once it is all out.
    fn write_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.replacement {
            if *written == bytes.len() {
                self.replacement = None;
                break;
            }
            match Pin::new(&mut self.stream).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => {
                    ready!(self.waiting(cx))?;
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// The JSON answer for one of hyper's own error answers, if `head` is one: a 4xx with no
/// body and no content type (every answer of the API's handlers has a JSON body).
fn json_answer_for(head: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?;
    let (status, code, message) = match text.get(..13)? {
        "HTTP/1.1 414 " => (
            "414 URI Too Long",
            "uri_too_long",
            "the request target is longer than the 64 KiB the host reads",
        ),
        "HTTP/1.1 431 " => (
            "431 Request Header Fields Too Large",
            "headers_too_large",
            "the request's head is larger than the host reads",
        ),
        "HTTP/1.1 400 " => ("400 Bad Request", "malformed_request", "the request is not valid HTTP/1.1"),
        _ => return None,
    };
    let lower = text.to_ascii_lowercase();
    let bodiless = lower.ends_with("\r\n\r\n") && lower.contains("\r\ncontent-length: 0\r\n");
    if !bodiless || lower.contains("\r\ncontent-type:") {
        return None;
    }
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    Some(
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.write_replacement(cx))?;
        if let Some(answer) = json_answer_for(buf) {
            this.replacement = Some((answer, 0));
            ready!(this.write_replacement(cx))?;
            return Poll::Ready(Ok(buf.len()));
        }
        let polled = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.timed(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut parts = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (parts.next(), parts.next()) {
            // A head alone may be one of hyper's own answers.
            return self.poll_write(cx, only);
        }
        let this = &mut *self;
        ready!(this.write_replacement(cx))?;
        let polled = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.timed(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.write_replacement(cx))?;
        let polled = Pin::new(&mut this.stream).poll_flush(cx);
        this.timed(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.write_replacement(cx))?;
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::json_answer_for;

    #[test]
    fn only_hypers_own_bodiless_error_answers_are_replaced() {
        let hyper_414 = b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let answer = String::from_utf8(json_answer_for(hyper_414).unwrap()).unwrap();
        assert!(answer.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{answer}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap();
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "uri_too_long");
        assert!(answer.contains(&format!("content-length: {}\r\n", body.len())));
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n";
        assert!(json_answer_for(ours).is_none(), "an answer of the API's own keeps its body");
        let with_body = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n";
        assert!(json_answer_for(with_body).is_none());
        assert!(json_answer_for(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
    }
}
