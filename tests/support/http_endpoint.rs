//! A hostile metrics endpoint for tests: a real HTTP/1.1 server on 127.0.0.1 whose answer to
//! each request the test decides (echo the request in an error page, answer a huge vector,
//! …), and which counts the connections it accepted, so a test can show that a refused
//! address was never contacted.
//!
//! Include it with `#[path = "support/http_endpoint.rs"] mod http_endpoint;`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A request as the endpoint received it.
#[derive(Clone, Debug)]
pub struct Received {
    /// The request line and the headers, as sent.
    pub head: String,
    pub body: String,
}

type Answer = dyn Fn(&Received) -> Vec<u8> + Send + Sync;

/// The running endpoint. Its threads live as long as the test process.
pub struct Endpoint {
    url: String,
    connections: Arc<AtomicUsize>,
}

impl Endpoint {
    /// Serves every request with `answer` (the raw bytes of an HTTP response).
    pub fn start(answer: impl Fn(&Received) -> Vec<u8> + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let answer: Arc<Answer> = Arc::new(answer);
        let counted = connections.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                counted.fetch_add(1, Ordering::SeqCst);
                let answer = answer.clone();
                std::thread::spawn(move || serve(stream, &*answer));
            }
        });
        Self { url, connections }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// How many connections it accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

fn serve(mut stream: TcpStream, answer: &Answer) {
    let mut received = Vec::new();
    let mut buffer = [0u8; 8192];
    let request = loop {
        let Ok(n) = stream.read(&mut buffer) else {
            return;
        };
        if n == 0 {
            return;
        }
        received.extend_from_slice(&buffer[..n]);
        let text = String::from_utf8_lossy(&received).into_owned();
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let length = text[..end]
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        if received.len() >= end + 4 + length {
            break Received {
                head: text[..end].to_string(),
                body: text[end + 4..].to_string(),
            };
        }
    };
    let response = answer(&request);
    // The client may stop reading early (an answer over its limit): that is not an error.
    let _ = stream.write_all(&response);
    let _ = stream.shutdown(Shutdown::Both);
}

/// An HTTP response: with `Content-Length`, or (`announce_length` false) delimited by the
/// end of the connection, so a client cannot know its size before reading it.
pub fn response(status: &str, content_type: &str, body: &[u8], announce_length: bool) -> Vec<u8> {
    let length = if announce_length {
        format!("Content-Length: {}\r\n", body.len())
    } else {
        String::new()
    };
    let mut bytes = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n{length}Connection: close\r\n\r\n"
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// A valid Prometheus instant-vector answer with `series` series, one per pod.
pub fn vector_answer(series: usize) -> Vec<u8> {
    let mut body = String::from(r#"{"status":"success","data":{"resultType":"vector","result":["#);
    for i in 0..series {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!(
            r#"{{"metric":{{"__name__":"http_requests_total","namespace":"shop","pod":"web-{i:06}"}},"value":[1700000000,"{}"]}}"#,
            i % 97
        ));
    }
    body.push_str("]}}");
    body.into_bytes()
}
