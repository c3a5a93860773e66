//! How a client certificate is written in the headers forwarded to backends: its subject
//! (RFC 4514), its subject alternative names, its SHA-256 fingerprint and its URL-encoded
//! PEM. Every output is printable ASCII (a valid header value).

use std::fmt::Write;

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::objects::{oid2abbrev, oid_registry};
use x509_parser::x509::X509Name;

/// `value` escaped for RFC 4514: `, + " \ < > ;` and a leading `#` or space and a trailing
/// space with a backslash; other bytes outside printable ASCII as `\HH` (UTF-8 bytes).
fn escape_value(out: &mut String, value: &[u8]) {
    let last = value.len().saturating_sub(1);
    for (i, &b) in value.iter().enumerate() {
        match b {
            b',' | b'+' | b'"' | b'\\' | b'<' | b'>' | b';' => {
                out.push('\\');
                out.push(b as char);
            }
            b'#' if i == 0 => out.push_str("\\#"),
            b' ' if i == 0 || i == last => out.push_str("\\ "),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\{b:02x}");
            }
        }
    }
}

/// The distinguished name as RFC 4514 writes it: the last RDN first, `,` between RDNs and
/// `+` inside one (`CN=alice,OU=dev,O=Example`), as nginx's `$ssl_client_s_dn`.
pub fn rfc4514(name: &X509Name<'_>) -> String {
    let mut out = String::new();
    let rdns: Vec<_> = name.iter_rdn().collect();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            match oid2abbrev(attr.attr_type(), oid_registry()) {
                Ok(short) => out.push_str(short),
                Err(_) => out.push_str(&attr.attr_type().to_id_string()),
            }
            out.push('=');
            match attr.as_str() {
                Ok(s) => escape_value(&mut out, s.as_bytes()),
                Err(_) => escape_value(&mut out, attr.as_slice()),
            }
        }
    }
    out
}

/// Printable ASCII only (a name from a certificate cannot break a header).
fn printable(out: &mut String, s: &str) {
    for b in s.bytes() {
        match b {
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
}

/// The subject alternative names, OpenSSL's way: `DNS:a.example, IP:10.0.0.1,
/// URI:spiffe://example/alice, email:alice@example.com` (empty: none).
pub fn san(cert: &X509Certificate<'_>) -> String {
    let mut out = String::new();
    let Ok(Some(ext)) = cert.subject_alternative_name() else {
        return out;
    };
    for name in &ext.value.general_names {
        let (kind, text) = match name {
            GeneralName::DNSName(n) => ("DNS", n.to_string()),
            GeneralName::RFC822Name(n) => ("email", n.to_string()),
            GeneralName::URI(n) => ("URI", n.to_string()),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => {
                    let a: [u8; 4] = [bytes[0], bytes[1], bytes[2], bytes[3]];
                    ("IP", std::net::Ipv4Addr::from(a).to_string())
                }
                16 => {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(bytes);
                    ("IP", std::net::Ipv6Addr::from(a).to_string())
                }
                _ => continue,
            },
            _ => continue,
        };
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(kind);
        out.push(':');
        printable(&mut out, &text);
    }
    out
}

/// SHA-256 of `der`, lower-case hex without separators.
pub fn sha256_hex(der: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(der);
    let mut out = String::with_capacity(64);
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The certificate as PEM, URL-encoded (nginx's `$ssl_client_escaped_cert`, Envoy's XFCC
/// `Cert=`): every byte but `A-Z a-z 0-9 - . _ ~` as `%HH`.
pub fn escaped_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    let mut out = String::with_capacity(pem.len() * 3 / 2);
    for b in pem.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_and_names_as_forwarded() {
        let mut params =
            rcgen::CertificateParams::new(vec!["a.example".to_string()]).expect("params");
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::OrganizationName, "Example, Inc");
        dn.push(rcgen::DnType::CommonName, "#alice é");
        params.distinguished_name = dn;
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("10.0.0.1".parse().expect("ip")));
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://example/alice".try_into().expect("uri"),
        ));
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.der()).expect("parse");
        assert_eq!(
            rfc4514(parsed.subject()),
            "CN=\\#alice \\c3\\a9,O=Example\\, Inc"
        );
        assert_eq!(
            san(&parsed),
            "DNS:a.example, IP:10.0.0.1, URI:spiffe://example/alice"
        );
        let fp = sha256_hex(cert.der());
        assert_eq!(fp.len(), 64);
        assert!(fp
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        let pem = escaped_pem(cert.der());
        assert!(pem.starts_with("-----BEGIN%20CERTIFICATE-----%0A"), "{pem}");
        assert!(pem.bytes().all(|b| b.is_ascii_graphic()));
    }
}
