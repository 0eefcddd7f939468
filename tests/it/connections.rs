//! HTTP/1.1 connections over their life: kept alive across idle pauses (parked between
//! requests), pipelined requests, heads in pieces, `Connection: close`, the keep-alive and
//! header deadlines, an early answer to an unread body, and shutdown with parked connections.

use std::time::{Duration, Instant};

use crate::common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw HTTP/1.1 client connection (plain or TLS) that reads responses one at a time.
struct Raw<S = TcpStream> {
    s: S,
    buf: Vec<u8>,
}

/// One response: status, lowercased head, body.
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Raw {
    async fn connect(g: &TestGateway) -> Raw {
        Raw::over(TcpStream::connect(g.addr).await.unwrap())
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Raw<S> {
    fn over(s: S) -> Raw<S> {
        Raw { s, buf: Vec::new() }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.unwrap();
    }

    /// Reads one response with a `Content-Length` (within 10 s).
    async fn answer(&mut self) -> Answer {
        tokio::time::timeout(Duration::from_secs(10), self.read_answer())
            .await
            .expect("no answer within 10 s")
    }

    async fn read_answer(&mut self) -> Answer {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await;
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).to_lowercase();
        let status = head[9..12].parse().unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0);
        while self.buf.len() < end + length {
            self.fill().await;
        }
        let body = self.buf[end..end + length].to_vec();
        self.buf.drain(..end + length);
        Answer { status, head, body }
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed mid-answer");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// True when the server closed the connection (EOF or reset) within `wait`.
    async fn closed_within(&mut self, wait: Duration) -> bool {
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout(wait, self.s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(n)) => panic!(
                "unexpected bytes: {:?}",
                String::from_utf8_lossy(&chunk[..n])
            ),
            Err(_) => false,
        }
    }
}

fn get(key: &str) -> Vec<u8> {
    format!("GET /v1/objects/{key} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ADMIN}\r\n\r\n")
        .into_bytes()
}

async fn seed(g: &TestGateway, key: &str, len: usize) -> Vec<u8> {
    seed_with(&g.http, g, key, len).await
}

async fn seed_with(http: &reqwest::Client, g: &TestGateway, key: &str, len: usize) -> Vec<u8> {
    let data = random_bytes(len, 3);
    let resp = http
        .put(g.object_url(key))
        .header("authorization", bearer(ADMIN))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lives_across_idle_pauses_and_pipelined_requests() {
    let g = gateway("[server]\nheader_read_timeout = \"1s\"\nkeep_alive_timeout = \"30s\"\n").await;
    let small = seed(&g, "small", 1000).await;
    let big = seed(&g, "big", 3 * 1024 * 1024).await;
    let mut c = Raw::connect(&g).await;
    for round in 0..3 {
        c.send(&get("small")).await;
        let a = c.answer().await;
        assert_eq!((a.status, &a.body), (200, &small), "round {round}");
        // Idle for longer than the header deadline: the connection waits parked, and the
        // header deadline only runs once the next request's first byte arrives.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    // Two requests in one write, and a large answer between small ones.
    let mut both = get("big");
    both.extend(get("small"));
    c.send(&both).await;
    let a = c.answer().await;
    assert_eq!((a.status, a.body == big), (200, true));
    let a = c.answer().await;
    assert_eq!((a.status, &a.body), (200, &small));
    // A head in pieces, with pauses between them.
    let request = get("small");
    for piece in request.chunks(7) {
        c.send(piece).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a = c.answer().await;
    assert_eq!((a.status, &a.body), (200, &small));
    // An error answer and a HEAD keep the connection too.
    c.send(&get("missing")).await;
    assert_eq!(c.answer().await.status, 404);
    c.send(
        format!(
            "HEAD /v1/objects/small HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ADMIN}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    let a = tokio::time::timeout(Duration::from_secs(10), async {
        // A HEAD answer has a Content-Length but no body.
        loop {
            if let Some(i) = c.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&c.buf[..i]).to_lowercase();
                c.buf.drain(..i + 4);
                return head;
            }
            c.fill().await;
        }
    })
    .await
    .unwrap();
    assert!(a.starts_with("http/1.1 200"), "{a}");
    assert!(a.contains("content-length: 1000"), "{a}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.send(&get("small")).await;
    let a = c.answer().await;
    assert_eq!((a.status, &a.body), (200, &small));
    assert!(!a.head.contains("connection: close"), "{}", a.head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_after_keep_alive_timeout_and_on_request() {
    let g = gateway("[server]\nkeep_alive_timeout = \"1s\"\n").await;
    seed(&g, "small", 10).await;
    let mut c = Raw::connect(&g).await;
    c.send(&get("small")).await;
    assert_eq!(c.answer().await.status, 200);
    let parked = Instant::now();
    assert!(c.closed_within(Duration::from_secs(5)).await);
    let after = parked.elapsed();
    assert!(after >= Duration::from_millis(900), "{after:?}");

    // Connection: close, and HTTP/1.0 without keep-alive: answered, then closed.
    for request in [
        format!(
            "GET /v1/objects/small HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Bearer {ADMIN}\r\n\r\n"
        ),
        format!("GET /v1/objects/small HTTP/1.0\r\nAuthorization: Bearer {ADMIN}\r\n\r\n"),
    ] {
        let mut c = Raw::connect(&g).await;
        c.send(request.as_bytes()).await;
        assert_eq!(c.answer().await.status, 200);
        assert!(
            c.closed_within(Duration::from_millis(500)).await,
            "{request}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_sends_a_request_is_closed_at_the_header_deadline() {
    let g = gateway("[server]\nheader_read_timeout = \"1s\"\n").await;
    let mut c = Raw::connect(&g).await;
    assert!(c.closed_within(Duration::from_secs(5)).await);
    // Half a head, then nothing: closed too.
    let mut c = Raw::connect(&g).await;
    c.send(b"GET /v1/objects/x HTTP/1.1\r\nHo").await;
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.s.read_to_end(&mut rest)).await;
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_to_an_unread_body_keeps_the_connection_usable() {
    let g = gateway("").await;
    let small = seed(&g, "users/alice/small", 100).await;
    let mut c = Raw::connect(&g).await;
    // Over alice's 6 MiB: refused from the declared length, the body is drained.
    let body = vec![7u8; 7 * 1024 * 1024];
    c.send(
        format!(
            "PUT /v1/objects/users/alice/too-big HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ALICE}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await;
    // The answer comes before the body is read; the gateway drains the body meanwhile, so
    // the whole of it can be sent before the answer is read.
    c.s.write_all(&body).await.unwrap();
    assert_eq!(c.answer().await.status, 413);
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.send(
        format!("GET /v1/objects/users/alice/small HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ALICE}\r\n\r\n")
            .as_bytes(),
    )
    .await;
    let a = c.answer().await;
    assert_eq!((a.status, &a.body), (200, &small));
    assert!(
        g.bucket_keys()
            .await
            .iter()
            .all(|k| !k.ends_with("too-big"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_idle_connections_are_all_still_served() {
    let g = gateway("[rate_limit]\nrequests_per_second = 10000\nburst = 10000\nmax_concurrent_per_principal = 1000\n").await;
    let small = seed(&g, "small", 64).await;
    let mut conns = Vec::new();
    for _ in 0..200 {
        let mut c = Raw::connect(&g).await;
        c.send(&get("small")).await;
        assert_eq!(c.answer().await.status, 200);
        conns.push(c);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for c in conns.iter_mut().rev() {
        c.send(&get("small")).await;
    }
    for c in &mut conns {
        let a = c.answer().await;
        assert_eq!((a.status, &a.body), (200, &small));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_silent_connections_do_not_hold_up_a_shutdown() {
    let mut gw = DevGateway::start();
    let addr: std::net::SocketAddr = gw.url.trim_start_matches("http://").parse().unwrap();
    // One that never sent a byte, one parked after a request.
    let silent = TcpStream::connect(addr).await.unwrap();
    let mut parked = TcpStream::connect(addr).await.unwrap();
    parked
        .write_all(
            format!(
                "GET /v1/me HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\n\r\n",
                gw.key
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !got.ends_with(b"}") {
        let n = parked.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&chunk[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    gw.signal("-TERM");
    // The header deadline is 10 s and the shutdown grace 30 s: neither is waited for.
    let status = gw.wait(Duration::from_secs(5)).expect("exits at once");
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    drop((silent, parked));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connections_are_parked_and_resumed_too() {
    use rustls_pki_types::pem::PemObject;
    let pki = Pki::new();
    let g = gateway_tweaked(&pki.toml(None), Relay::Direct, |c| {
        c.server.header_read_timeout = portcullis::config::units::Span::secs(1)
    })
    .await;
    let small = seed_with(&pki.client(None, true), &g, "small", 700).await;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(g.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let mut c = Raw::over(tls);
    let request = get("small");
    for round in 0..3 {
        // One request, then two in one write; each time after an idle pause longer than the
        // header deadline (the connection is parked in between).
        let n = if round == 1 { 2 } else { 1 };
        c.send(&request.repeat(n)).await;
        for _ in 0..n {
            let a = c.answer().await;
            assert_eq!((a.status, &a.body), (200, &small), "round {round}");
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
}

/// An HTTP/2 client connection whose streams never open their flow-control window
/// (`SETTINGS_INITIAL_WINDOW_SIZE = 0`): the gateway can send heads, never a body byte.
async fn shut_window_h2(g: &TestGateway) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = TcpStream::connect(g.addr).await.unwrap();
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// A client whose connections come from 127.0.0.2: another address than the tests' own.
fn from_another_address() -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_streams_with_a_shut_window_take_one_address_share_and_are_reset_at_the_send_deadline() {
    let g = gateway(
        "[server]\nmax_concurrent_requests = 8\nmax_requests_per_address = 4\nbody_idle_timeout = \"1s\"\n",
    )
    .await;
    let mut attacker = shut_window_h2(&g).await;
    // No credential needed: the console's page has a body, which never gets out.
    let mut held = Vec::new();
    let mut shed = 0;
    for _ in 0..6 {
        let req = http::Request::get(format!("http://{}/", g.addr))
            .body(())
            .unwrap();
        let (resp, _) = attacker.send_request(req, true).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(5), resp)
            .await
            .expect("a head within 5 s")
            .unwrap();
        match resp.status().as_u16() {
            200 => held.push(resp.into_body()),
            503 => shed += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(
        (held.len(), shed),
        (4, 2),
        "one address gets its share, no more"
    );
    // Everyone else is still served meanwhile, a valid key included.
    let other = from_another_address();
    let resp = other
        .get(format!("{}/v1/me", g.url))
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    // The stalled streams are reset at the send deadline, and their places freed.
    let started = Instant::now();
    for mut body in held {
        let got = tokio::time::timeout(Duration::from_secs(10), body.data())
            .await
            .expect("reset within 10 s");
        let err = got
            .expect("no end of stream")
            .expect_err("no data can have come");
        assert!(err.is_reset(), "{err:?}");
    }
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        status_of(g.http.get(format!("{}/v1/me", g.url)).bearer_auth(ALICE)).await,
        reqwest::StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_nobody_reads_gives_back_its_transfer_place_at_the_send_deadline() {
    let g = gateway(
        "[server]\nbody_idle_timeout = \"1s\"\n[rate_limit]\nmax_concurrent_per_principal = 1\n",
    )
    .await;
    seed(&g, "users/alice/big", 16 * 1024 * 1024).await;
    let (mut held, _) = slow_download(&g.url, ALICE, "users/alice/big").await;
    let resp = g
        .call(reqwest::Method::HEAD, "users/alice/big", ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        reqwest::StatusCode::TOO_MANY_REQUESTS,
        "held while sending"
    );
    // The reader never reads again: the gateway closes the connection and frees the place.
    let started = Instant::now();
    eventually("alice's transfer place is given back", || async {
        status_of(g.call(reqwest::Method::HEAD, "users/alice/big", ALICE)).await
            == reqwest::StatusCode::OK
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    // What the socket still holds ends early: the connection was closed, not the body sent.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), held.read_to_end(&mut rest)).await;
    assert!(
        rest.len() < 16 * 1024 * 1024 - 16 * 1024,
        "{} bytes",
        rest.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_h2_connections_are_closed_after_the_header_and_keep_alive_deadlines() {
    let g = gateway("[server]\nheader_read_timeout = \"1s\"\nkeep_alive_timeout = \"2s\"\n").await;
    // One that never sends a request: closed at the header deadline.
    let tcp = TcpStream::connect(g.addr).await.unwrap();
    let (_silent, conn) = h2::client::handshake(tcp).await.unwrap();
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("closed within 10 s")
        .ok();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    // One that was served: closed once idle for the keep-alive timeout.
    let tcp = TcpStream::connect(g.addr).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/v1/me", g.addr))
        .header("authorization", format!("Bearer {ALICE}"))
        .body(())
        .unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        body.flow_control().release_capacity(chunk.len()).unwrap();
    }
    let served = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("closed within 10 s")
        .unwrap()
        .ok();
    let idle = served.elapsed();
    assert!(
        idle >= Duration::from_millis(1500) && idle < Duration::from_secs(6),
        "{idle:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_in_bursts_of_one_byte_chunks_all_arrive() {
    // A lost wake-up shows as a 408 at the body deadline although every byte arrived.
    let g = gateway("[server]\nbody_idle_timeout = \"3s\"\n").await;
    let uploads = (0..30).map(|i| {
        let addr = g.addr;
        tokio::spawn(async move {
            let mut raw = Raw::over(TcpStream::connect(addr).await.unwrap());
            let data = random_bytes(2000 + i * 37, i as u64);
            let mut wire = format!(
                "PUT /v1/objects/tiny/{i} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ADMIN}\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            .into_bytes();
            for b in &data {
                wire.extend_from_slice(b"1\r\n");
                wire.push(*b);
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b"0\r\n\r\n");
            // Bursts of chunks: a few writes of many chunks, then chunk by chunk.
            let (bulk, single) = wire.split_at(wire.len() / 2);
            for part in bulk.chunks(bulk.len() / 3 + 1) {
                raw.send(part).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            for part in single.chunks(6) {
                raw.send(part).await;
            }
            let answer = raw.answer().await;
            (answer.status, String::from_utf8_lossy(&answer.body).into_owned(), data)
        })
    });
    let started = Instant::now();
    for (i, upload) in uploads.collect::<Vec<_>>().into_iter().enumerate() {
        let (status, body, data) = upload.await.unwrap();
        assert_eq!(status, 200, "upload {i}: {body}");
        assert_eq!(g.fetch(&format!("tiny/{i}"), ADMIN).await, data);
    }
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_and_authorization_headers_are_read_one_way_only() {
    let g = gateway("").await;
    seed(&g, "one-way", 10).await;
    let ask = |head: String| {
        let addr = g.addr;
        async move {
            let mut raw = Raw::over(TcpStream::connect(addr).await.unwrap());
            raw.send(head.as_bytes()).await;
            let a = raw.answer().await;
            (a.status, a.head)
        }
    };
    let get = "GET /v1/objects/one-way HTTP/1.1\r\n";
    // The Bearer scheme is case-insensitive.
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let (status, _) = ask(format!(
            "{get}Host: t\r\nAuthorization: {scheme} {ADMIN}\r\n\r\n"
        ))
        .await;
        assert_eq!(status, 200, "{scheme}");
    }
    // Two Authorization headers: which one a hop in front read is anyone's guess.
    let (status, head) = ask(format!(
        "{get}Host: t\r\nAuthorization: Bearer {ADMIN}\r\nAuthorization: Bearer {READER}\r\n\r\n"
    ))
    .await;
    assert_eq!(status, 400);
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    // No Host, or two.
    let (status, _) = ask(format!("{get}Authorization: Bearer {ADMIN}\r\n\r\n")).await;
    assert_eq!(status, 400);
    let (status, _) = ask(format!(
        "{get}Host: a\r\nHost: b\r\nAuthorization: Bearer {ADMIN}\r\n\r\n"
    ))
    .await;
    assert_eq!(status, 400);
    // HTTP/1.0 may leave it out.
    let (status, _) = ask(format!(
        "GET /v1/objects/one-way HTTP/1.0\r\nAuthorization: Bearer {ADMIN}\r\n\r\n"
    ))
    .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_over_64_kib_gets_431() {
    let g = gateway("").await;
    let mut raw = Raw::connect(&g).await;
    let filler = "a".repeat(70 * 1024);
    raw.send(format!("GET /v1/objects/x HTTP/1.1\r\nHost: t\r\nX-Filler: {filler}").as_bytes())
        .await;
    // More of the head after the gateway has given up on it: the answer must still arrive,
    // not be wiped out by a reset for the bytes it left unread.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = raw.s.write_all(&[b'b'; 32 * 1024]).await;
    let answer = raw.answer().await;
    assert_eq!(answer.status, 431);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_is_400_and_closes() {
    let g = gateway("").await;
    let heads = [
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
    ];
    for framing in heads {
        // A normal request first, so the follower has a body to skip before the bad head.
        let mut raw = Raw::connect(&g).await;
        raw.send(
            format!(
                "PUT /v1/objects/fine HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ADMIN}\r\nContent-Length: 5\r\n\r\nhello"
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(raw.answer().await.status, 200);
        raw.send(
            format!(
                "PUT /v1/objects/smuggled HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ADMIN}\r\n{framing}\r\n5\r\nhello\r\n0\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        let answer = raw.answer().await;
        assert_eq!(answer.status, 400, "{framing:?}");
        assert!(answer.head.contains("connection: close"), "{}", answer.head);
        assert!(
            raw.closed_within(Duration::from_secs(5)).await,
            "{framing:?}"
        );
    }
    assert_eq!(g.bucket_keys().await, vec!["fine"]);
    eventually("the refusal is logged", || async {
        g.access_log_lines()
            .iter()
            .any(|l| l["status"] == 400 && l["error_code"] == "bad_request" && l["method"] == "PUT")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_are_closed_at_once() {
    let g = gateway("[server]\nmax_connections = 3\n").await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut raw = Raw::connect(&g).await;
        raw.send(&get("nothing")).await;
        assert_eq!(raw.answer().await.status, 404);
        held.push(raw);
    }
    let mut extra = Raw::connect(&g).await;
    assert!(extra.closed_within(Duration::from_secs(5)).await);
    // One closes: there is room again.
    drop(held.pop());
    eventually("a new connection is served", || async {
        let mut raw = Raw::connect(&g).await;
        raw.send(&get("nothing")).await;
        let mut chunk = [0u8; 12];
        matches!(
            tokio::time::timeout(Duration::from_secs(2), raw.s.read(&mut chunk)).await,
            Ok(Ok(12))
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_h2_peer_that_answers_nothing_is_dropped() {
    // A bare h2 preface and SETTINGS, then silence: no ACK, no PING answer, no request. The
    // gateway's GOAWAY waits for a PING answer that never comes; the connection must still go.
    let g = gateway("[server]\nheader_read_timeout = \"1s\"\n").await;
    let mut s = TcpStream::connect(g.addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let started = Instant::now();
    let mut sink = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut sink)).await;
    assert!(read.is_ok(), "still open after 10 s");
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
}
