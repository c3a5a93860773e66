//! Asking a responder: which certificate and where (`Target`: the leaf, its issuer from the
//! chain, the responder URL from `ocsp_responder` or the leaf's Authority Information Access
//! extension), the OCSP request (RFC 6960, a SHA-1 CertID as every public responder
//! expects), and the HTTP/1.1 POST that carries it.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use rustls_pki_types::CertificateDer;
use x509_cert::der::asn1::{Null, OctetString};
use x509_cert::der::Encode;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::AlgorithmIdentifierOwned;
use x509_ocsp::{CertId, OcspRequest, Request, TbsRequest};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::OcspError;

/// id-sha1 (1.3.14.3.2.26).
const SHA1: x509_cert::der::oid::ObjectIdentifier =
    x509_cert::der::oid::ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
/// How long one request may take, connection included.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The largest response read (real ones are 1-3 KB).
const MAX_RESPONSE: usize = 64 * 1024;

/// One served certificate to staple.
pub struct Target {
    pub leaf: CertificateDer<'static>,
    pub issuer: CertificateDer<'static>,
    pub url: String,
    pub cert_id: CertId,
    /// The leaf's first DNS name (or subject CN), for logs and metric labels.
    pub name: String,
}

/// The target for `chain` (leaf first, then its issuer), asking `responder` if set, else the
/// leaf's AIA OCSP URL.
pub fn target(
    chain: &[CertificateDer<'static>],
    responder: Option<&str>,
) -> Result<Target, OcspError> {
    let bad = |e: &dyn std::fmt::Display| OcspError::Certificate(e.to_string());
    let leaf_der = chain.first().ok_or(OcspError::NoIssuer)?;
    let issuer_der = chain.get(1).ok_or(OcspError::NoIssuer)?;
    let (_, leaf) = X509Certificate::from_der(leaf_der).map_err(|e| bad(&e))?;
    let (_, issuer) = X509Certificate::from_der(issuer_der).map_err(|e| bad(&e))?;
    let url = match responder {
        Some(url) => url.to_string(),
        None => aia_url(&leaf).ok_or(OcspError::NoResponder)?,
    };
    if !url.starts_with("http://") {
        return Err(OcspError::Url(url));
    }
    let sha1 = |data: &[u8]| {
        OctetString::new(
            ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, data)
                .as_ref()
                .to_vec(),
        )
    };
    let der_err = |e: x509_cert::der::Error| OcspError::Der(e.to_string());
    let cert_id = CertId {
        hash_algorithm: AlgorithmIdentifierOwned {
            oid: SHA1,
            parameters: Some(Null.into()),
        },
        issuer_name_hash: sha1(issuer.subject().as_raw()).map_err(der_err)?,
        issuer_key_hash: sha1(&issuer.public_key().subject_public_key.data).map_err(der_err)?,
        serial_number: SerialNumber::new(leaf.raw_serial()).map_err(der_err)?,
    };
    Ok(Target {
        leaf: leaf_der.clone(),
        issuer: issuer_der.clone(),
        url,
        cert_id,
        name: leaf_name(&leaf),
    })
}

fn aia_url(leaf: &X509Certificate<'_>) -> Option<String> {
    leaf.extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::AuthorityInfoAccess(aia) => Some(aia),
            _ => None,
        })?
        .accessdescs
        .iter()
        .filter(|d| d.access_method == x509_parser::oid_registry::OID_PKIX_ACCESS_DESCRIPTOR_OCSP)
        .find_map(|d| match &d.access_location {
            GeneralName::URI(uri) => Some(uri.to_string()),
            _ => None,
        })
}

fn leaf_name(leaf: &X509Certificate<'_>) -> String {
    if let Ok(Some(san)) = leaf.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                return d.to_string();
            }
        }
    }
    leaf.subject()
        .iter_common_name()
        .find_map(|cn| cn.as_str().ok())
        .unwrap_or("unnamed")
        .to_string()
}

/// The DER OCSP request for `target` (no nonce: most responders serve cached responses).
pub fn request(target: &Target) -> Result<Vec<u8>, OcspError> {
    OcspRequest {
        tbs_request: TbsRequest {
            request_list: vec![Request {
                req_cert: target.cert_id.clone(),
                single_request_extensions: None,
            }],
            ..TbsRequest::default()
        },
        optional_signature: None,
    }
    .to_der()
    .map_err(|e| OcspError::Der(e.to_string()))
}

pub type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// The HTTP client of the OCSP service (plain HTTP, as responders are).
pub fn client() -> Client {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// POST `body` to `url` and return the response's bytes.
pub async fn post(client: &Client, url: &str, body: Vec<u8>) -> Result<Vec<u8>, OcspError> {
    let unreachable = |e: &dyn std::fmt::Display| OcspError::Unreachable(e.to_string());
    let request = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/ocsp-request")
        .header(http::header::ACCEPT, "application/ocsp-response")
        .body(Full::new(Bytes::from(body)))
        .map_err(|_| OcspError::Url(url.to_string()))?;
    let exchange = async {
        let response = client.request(request).await.map_err(|e| unreachable(&e))?;
        if response.status() != http::StatusCode::OK {
            return Err(OcspError::HttpStatus(response.status().as_u16()));
        }
        let body = Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| unreachable(&e))?;
        Ok(body.to_bytes().to_vec())
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| OcspError::Unreachable(format!("no answer within {TIMEOUT:?}")))?
}
