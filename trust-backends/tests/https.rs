//! `https` through rustls: an [`HttpModel`] against a loopback TLS server whose self-signed
//! certificate (generated here by rcgen) is trusted through `ca_cert`, refused without it.
#![cfg(feature = "http")]

use std::sync::Arc;

use axum::Json;
use axum::routing::post;
use trust_backends::http::{HttpModel, HttpOptions};
use trust_core::{DecodingConfig, GenerateRequest, LanguageModel};

/// A TLS server on 127.0.0.1 answering every completion with " over tls"; returns its port and
/// the certificate (PEM).
async fn tls_server() -> (u16, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("certificate");
    let cert_pem = ck.cert.pem();
    let cert = ck.cert.der().clone();
    let key =
        rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let router = axum::Router::new().route(
        "/v1/completions",
        post(|| async {
            Json(serde_json::json!({
                "id": "c1", "object": "text_completion", "model": "m",
                "choices": [{"index": 0, "text": " over tls", "finish_reason": "stop"}],
            }))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let service = hyper_util::service::TowerToHyperService::new(router.clone());
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake: nothing to serve.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (port, cert_pem)
}

fn request() -> GenerateRequest {
    GenerateRequest {
        prompt: "hello".into(),
        config: DecodingConfig::greedy(4),
        seed: 0,
    }
}

#[tokio::test]
async fn https_with_the_servers_certificate_trusted_works_and_is_refused_without() {
    let (port, pem) = tls_server().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pem).unwrap();
    for host in ["localhost", "127.0.0.1"] {
        let spec = format!(
            "https://{host}:{port}/v1#m;retries=0;loglik=off;ca_cert={}",
            ca.display()
        );
        let model = HttpModel::new(HttpOptions::from_spec(&spec).unwrap()).unwrap();
        let out = model.generate(&[request()]).await;
        let resp = out[0].as_ref().unwrap_or_else(|e| panic!("{host}: {e}"));
        assert_eq!(resp.completions[0].text, " over tls", "{host}");
    }
    // Not trusted: the built-in roots do not know a self-signed certificate.
    let spec = format!("https://localhost:{port}/v1#m;retries=0;loglik=off");
    let model = HttpModel::new(HttpOptions::from_spec(&spec).unwrap()).unwrap();
    let out = model.generate(&[request()]).await;
    let e = out[0].as_ref().unwrap_err().to_string();
    assert!(e.contains("certificate"), "{e}");
    // Plain http to a TLS port fails too, and says so.
    let spec = format!("http://127.0.0.1:{port}/v1#m;retries=0;loglik=off;timeout=5");
    let model = HttpModel::new(HttpOptions::from_spec(&spec).unwrap()).unwrap();
    assert!(model.generate(&[request()]).await[0].is_err());
}
