//! A small pooled request helper for publishing events and calling admin
//! endpoints from tests and the load generator. Unlike [`Connection`], it
//! shares keep-alive connections, so it is the right tool for many short
//! requests and the wrong one for streams.
//!
//! [`Connection`]: crate::Connection

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::error::Error;

/// A cheap-to-clone HTTP client over a shared connection pool.
#[derive(Debug, Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
    http2: bool,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

/// A fully read response.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Response {
    /// The body as text, with invalid UTF-8 replaced.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header value as a string, if present and valid visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

fn connector() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(10)));
    connector
}

impl HttpClient {
    /// An HTTP/1.1 client.
    pub fn new() -> Self {
        Self {
            inner: Client::builder(TokioExecutor::new()).build(connector()),
            http2: false,
        }
    }

    /// A client speaking HTTP/2 with prior knowledge (h2c) only.
    pub fn http2_only() -> Self {
        Self {
            inner: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(connector()),
            http2: true,
        }
    }

    /// Sends one request and reads the whole response.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Response, Error> {
        let uri: Uri = url
            .parse()
            .map_err(|e| Error::InvalidUrl(format!("{url:?}: {e}")))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(Error::InvalidUrl(format!("{url:?}: need http://host/...")));
        }
        let mut builder = Request::builder().method(method).uri(uri);
        if self.http2 {
            builder = builder.version(Version::HTTP_2);
        }
        for &(name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| Error::InvalidHeader(name.to_owned()))?;
            let value = HeaderValue::from_bytes(value.as_bytes())
                .map_err(|_| Error::InvalidHeader(name.to_string()))?;
            builder = builder.header(name, value);
        }
        let response = self.inner.request(builder.body(Full::new(body))?).await?;
        let (parts, body) = response.into_parts();
        Ok(Response {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await?.to_bytes(),
        })
    }

    /// `GET url`.
    pub async fn get(&self, url: &str) -> Result<Response, Error> {
        self.request(Method::GET, url, &[], Bytes::new()).await
    }

    /// `POST url` with the given content type and body.
    pub async fn post(
        &self,
        url: &str,
        content_type: &str,
        body: impl Into<Bytes>,
    ) -> Result<Response, Error> {
        let headers = [(CONTENT_TYPE.as_str(), content_type)];
        self.request(Method::POST, url, &headers, body.into()).await
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;

    use super::*;

    /// Serves an echo of method, path, a header and the body, on both HTTP
    /// versions (`auto` is not enabled here, so pick one per server).
    async fn echo_server(http2: bool) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let service = service_fn(|req: http::Request<Incoming>| async move {
                    let head = format!(
                        "{} {} {:?} {}|",
                        req.method(),
                        req.uri().path(),
                        req.version(),
                        req.headers()
                            .get(CONTENT_TYPE)
                            .map_or("-", |v| v.to_str().unwrap()),
                    );
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let mut out = head.into_bytes();
                    out.extend_from_slice(&body);
                    let response = http::Response::builder()
                        .status(201)
                        .header("x-echo", "yes")
                        .body(Full::new(Bytes::from(out)))
                        .unwrap();
                    Ok::<_, Infallible>(response)
                });
                let io = TokioIo::new(stream);
                tokio::spawn(async move {
                    if http2 {
                        let builder =
                            hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                        let _ = builder.serve_connection(io, service).await;
                    } else {
                        let builder = hyper::server::conn::http1::Builder::new();
                        let _ = builder.serve_connection(io, service).await;
                    }
                });
            }
        });
        base
    }

    #[tokio::test]
    async fn post_and_get_http1() {
        let base = echo_server(false).await;
        let client = HttpClient::default();
        let resp = client
            .post(&format!("{base}/publish"), "application/json", r#"{"a":1}"#)
            .await
            .unwrap();
        assert_eq!(resp.status, StatusCode::CREATED);
        assert_eq!(resp.header("x-echo"), Some("yes"));
        assert_eq!(
            resp.text(),
            r#"POST /publish HTTP/1.1 application/json|{"a":1}"#
        );
        let resp = client.clone().get(&format!("{base}/x")).await.unwrap();
        assert_eq!(resp.text(), "GET /x HTTP/1.1 -|");
    }

    #[tokio::test]
    async fn http2_prior_knowledge() {
        let base = echo_server(true).await;
        let client = HttpClient::http2_only();
        let resp = client
            .request(
                Method::PUT,
                &format!("{base}/t"),
                &[("content-type", "text/plain")],
                Bytes::from_static(b"hi"),
            )
            .await
            .unwrap();
        assert_eq!(resp.text(), "PUT /t HTTP/2.0 text/plain|hi");
    }

    #[tokio::test]
    async fn bad_input_is_rejected() {
        let client = HttpClient::new();
        let err = client.get("https://example.test/").await.unwrap_err();
        assert!(matches!(err, Error::InvalidUrl(_)), "{err:?}");
        let err = client
            .request(
                Method::GET,
                "http://127.0.0.1:1/",
                &[("a b", "c")],
                Bytes::new(),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidHeader(_)), "{err:?}");
    }
}
