//! Fault injection for the relay's tests: TCP proxies in front of the S3 server that stall,
//! swallow, cut or count what passes, and fake backends that answer one way or record what
//! they are sent. Each listens on 127.0.0.1 and a free port and returns its address.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// Reads from `s` into `buf` until it holds a whole request head; returns where the head
/// ends, or `None` when the connection ends first.
pub async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(i + 4);
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A backend that answers every request with `status` and an S3 error document, counting
/// the requests.
pub async fn answering_backend(status: u16, code: &'static str) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(end) = read_head(&mut s, &mut buf).await else {
                        return;
                    };
                    let is_head = buf.starts_with(b"HEAD ");
                    buf.drain(..end);
                    seen.fetch_add(1, Ordering::SeqCst);
                    let doc = format!(
                        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected</Message><RequestId>r1</RequestId></Error>"
                    );
                    let mut resp = format!(
                        "HTTP/1.1 {status} Injected\r\nContent-Type: application/xml\r\nx-amz-request-id: r1\r\nContent-Length: {}\r\n\r\n",
                        doc.len()
                    );
                    if !is_head {
                        resp.push_str(&doc);
                    }
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), count)
}

/// A proxy to `target` that passes everything up, and only the first `pass` bytes down, then
/// holds the connection open without sending more.
pub async fn stalling_proxy(target: std::net::SocketAddr, pass: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(target).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = tokio::io::copy(&mut cr, &mut sw);
                let down = async {
                    let mut sent = 0;
                    let mut buf = vec![0u8; 16 * 1024];
                    while sent < pass {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n.min(pass - sent),
                        };
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        sent += n;
                    }
                    std::future::pending::<()>().await;
                };
                tokio::select! {
                    _ = up => std::future::pending::<()>().await,
                    _ = down => {}
                }
            });
        }
    });
    format!("http://{addr}")
}

/// A proxy to `target` whose client-to-server direction is `up`; answers come down as they
/// are. A connection ends when either direction does.
pub async fn upstream_proxy<F, Fut>(target: std::net::SocketAddr, up: F) -> String
where
    F: Fn(OwnedReadHalf, OwnedWriteHalf) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    proxy(target, up, |mut sr, mut cw| async move {
        let _ = tokio::io::copy(&mut sr, &mut cw).await;
    })
    .await
}

/// A proxy to `target` whose directions are `up` (client to server) and `down`. A connection
/// ends when either direction does.
async fn proxy<U, UF, D, DF>(target: std::net::SocketAddr, up: U, down: D) -> String
where
    U: Fn(OwnedReadHalf, OwnedWriteHalf) -> UF + Clone + Send + 'static,
    UF: std::future::Future<Output = ()> + Send + 'static,
    D: Fn(OwnedReadHalf, OwnedWriteHalf) -> DF + Clone + Send + 'static,
    DF: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (up, down) = (up.clone(), down.clone());
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(target).await else {
                    return;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::select! {
                    () = down(sr, cw) => {}
                    () = up(cr, sw) => {}
                }
            });
        }
    });
    format!("http://{addr}")
}

/// A proxy to `target` that sends S3's answers on in 4 KiB writes, each its own segment, and
/// waits 30 ms after every `pause_every` bytes: an S3 server that sends small frames and
/// sometimes stalls.
pub async fn small_frames_proxy(target: std::net::SocketAddr, pause_every: usize) -> String {
    let up = |mut cr: OwnedReadHalf, mut sw: OwnedWriteHalf| async move {
        let _ = tokio::io::copy(&mut cr, &mut sw).await;
    };
    proxy(target, up, move |mut sr, mut cw| async move {
        cw.as_ref().set_nodelay(true).unwrap();
        let mut buf = vec![0u8; 4096];
        let mut since_pause = 0;
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if cw.write_all(&buf[..n]).await.is_err() {
                return;
            }
            since_pause += n;
            if since_pause >= pause_every {
                since_pause = 0;
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
    })
    .await
}

/// A proxy to `target` that passes the first `pass` bytes up, then stops reading (the
/// connection stays open).
pub async fn swallowing_proxy(target: std::net::SocketAddr, pass: usize) -> String {
    upstream_proxy(target, move |mut cr, mut sw| async move {
        let mut sent = 0;
        let mut buf = vec![0u8; 16 * 1024];
        while sent < pass {
            let n = match cr.read(&mut buf[..(pass - sent).min(16 * 1024)]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
            sent += n;
        }
        std::future::pending::<()>().await;
    })
    .await
}

/// A proxy to `target` that reads everything sent up and passes none of it on: a backend that
/// takes a whole request and never answers.
pub async fn silent_proxy(target: std::net::SocketAddr) -> String {
    upstream_proxy(target, |mut cr, sw| async move {
        let _open = sw; // dropped, it would end the connection to the server
        let mut buf = vec![0u8; 64 * 1024];
        while matches!(cr.read(&mut buf).await, Ok(n) if n > 0) {}
        std::future::pending::<()>().await;
    })
    .await
}

/// A proxy to `target` that cuts the first connection to carry more than `cut_after` bytes
/// up, once; everything else passes.
pub async fn cut_once_proxy(target: std::net::SocketAddr, cut_after: usize) -> String {
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    upstream_proxy(target, move |mut cr, mut sw| {
        let done = done.clone();
        async move {
            let mut sent = 0;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match cr.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                sent += n;
                if sent > cut_after && !done.swap(true, Ordering::SeqCst) {
                    return; // cut: both halves are dropped
                }
                if sw.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    })
    .await
}

/// A backend that answers every request `200` with an ETag, reading and keeping each
/// request's head (names lowercased) and skipping its body.
pub async fn recording_backend() -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let Some(end) = read_head(&mut s, &mut buf).await else {
                    return;
                };
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                let mut body = buf.len() - end;
                let mut chunk = [0u8; 4096];
                while body < length {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => body += n,
                    }
                }
                seen.lock().unwrap().push(head);
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nETag: \"e1\"\r\nContent-Length: 0\r\n\r\n")
                    .await;
            });
        }
    });
    (format!("http://{addr}"), heads)
}

/// A proxy to `target` counting the connections made to it; with `idle`, it closes a
/// connection that carried nothing either way for that long (as S3 closes idle ones).
pub async fn counting_proxy(
    target: std::net::SocketAddr,
    idle: Option<Duration>,
) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(target).await else {
                    return;
                };
                let (mut up, mut down) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
                let idle = idle.unwrap_or(Duration::from_secs(3600));
                loop {
                    tokio::select! {
                        n = client.read(&mut up) => match n {
                            Ok(0) | Err(_) => return,
                            Ok(n) => if server.write_all(&up[..n]).await.is_err() { return },
                        },
                        n = server.read(&mut down) => match n {
                            Ok(0) | Err(_) => return,
                            Ok(n) => if client.write_all(&down[..n]).await.is_err() { return },
                        },
                        () = tokio::time::sleep(idle) => return,
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), count)
}
