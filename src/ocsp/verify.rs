//! Checking a responder's answer before it is stapled: a successful basic response, for
//! this certificate, signed by its issuer (or by a responder certificate the issuer signed
//! for OCSP signing), current (thisUpdate not in the future, nextUpdate not past), and
//! `good`. Anything else is refused and never stapled.

use x509_cert::der::{Decode, Encode};
use x509_ocsp::{BasicOcspResponse, CertStatus, OcspResponse, OcspResponseStatus};
use x509_parser::asn1_rs::BitString;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::x509::AlgorithmIdentifier;

use super::fetch::Target;
use super::OcspError;

/// id-pkix-ocsp-basic.
const BASIC: x509_cert::der::oid::ObjectIdentifier =
    x509_cert::der::oid::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.1");
/// Clock skew allowed on thisUpdate.
const SKEW: i64 = 300;

/// A response fit to staple.
#[derive(Debug, Clone)]
pub struct Good {
    pub der: Vec<u8>,
    /// Unix seconds.
    pub this_update: i64,
    pub next_update: Option<i64>,
}

fn der_err(e: x509_cert::der::Error) -> OcspError {
    OcspError::Der(e.to_string())
}

/// Check `der` (the responder's answer) for `target` at `now` (Unix seconds).
pub fn check(der: &[u8], target: &Target, now: i64) -> Result<Good, OcspError> {
    let response = OcspResponse::from_der(der).map_err(der_err)?;
    if response.response_status != OcspResponseStatus::Successful {
        return Err(OcspError::Responder(format!(
            "{:?}",
            response.response_status
        )));
    }
    let bytes = response
        .response_bytes
        .ok_or_else(|| OcspError::Der("successful response without a body".into()))?;
    if bytes.response_type != BASIC {
        return Err(OcspError::Der(format!(
            "response type {} is not basic",
            bytes.response_type
        )));
    }
    let basic = BasicOcspResponse::from_der(bytes.response.as_bytes()).map_err(der_err)?;
    let single = basic
        .tbs_response_data
        .responses
        .iter()
        .find(|s| {
            let (a, b) = (&s.cert_id, &target.cert_id);
            a.hash_algorithm.oid == b.hash_algorithm.oid
                && a.issuer_name_hash == b.issuer_name_hash
                && a.issuer_key_hash == b.issuer_key_hash
                && a.serial_number == b.serial_number
        })
        .ok_or(OcspError::NotThisCertificate)?;
    verify_signature(&basic, &target.issuer)?;
    let this_update = single.this_update.0.to_unix_duration().as_secs() as i64;
    let next_update = single
        .next_update
        .map(|t| t.0.to_unix_duration().as_secs() as i64);
    match single.cert_status {
        CertStatus::Good(_) => {}
        CertStatus::Revoked(info) => {
            return Err(OcspError::Revoked(
                info.revocation_time.0.to_date_time().to_string(),
            ))
        }
        CertStatus::Unknown(_) => return Err(OcspError::Unknown),
    }
    if this_update > now + SKEW {
        return Err(OcspError::NotYetValid);
    }
    if next_update.is_some_and(|n| n <= now) {
        return Err(OcspError::Expired);
    }
    Ok(Good {
        der: der.to_vec(),
        this_update,
        next_update,
    })
}

/// The response is signed by the issuer, or by a certificate it carries that the issuer
/// signed and that has the OCSP-signing extended key usage (a delegated responder).
fn verify_signature(basic: &BasicOcspResponse, issuer_der: &[u8]) -> Result<(), OcspError> {
    let bad = |e: &dyn std::fmt::Display| OcspError::Certificate(e.to_string());
    let (_, issuer) = X509Certificate::from_der(issuer_der).map_err(|e| bad(&e))?;
    let tbs = basic.tbs_response_data.to_der().map_err(der_err)?;
    let alg_der = basic.signature_algorithm.to_der().map_err(der_err)?;
    let (_, alg) = AlgorithmIdentifier::from_der(&alg_der).map_err(|e| bad(&e))?;
    let sig_der = basic.signature.to_der().map_err(der_err)?;
    let (_, signature) = <BitString as x509_parser::asn1_rs::FromDer<'_>>::from_der(&sig_der)
        .map_err(|e| bad(&e))?;
    let signed_by = |signer: &X509Certificate<'_>| {
        x509_parser::verify::verify_signature(signer.public_key(), &alg, &signature, &tbs).is_ok()
    };
    if signed_by(&issuer) {
        return Ok(());
    }
    for cert in basic.certs.iter().flatten() {
        let der = cert.to_der().map_err(der_err)?;
        let Ok((_, delegate)) = X509Certificate::from_der(&der) else {
            continue;
        };
        let ocsp_signing = delegate
            .extended_key_usage()
            .ok()
            .flatten()
            .is_some_and(|eku| eku.value.ocsp_signing);
        let issued = delegate.issuer() == issuer.subject()
            && delegate.verify_signature(Some(issuer.public_key())).is_ok()
            && delegate.validity().is_valid();
        if ocsp_signing && issued && signed_by(&delegate) {
            return Ok(());
        }
    }
    Err(OcspError::BadSignature)
}
