//! Client certificates (mTLS) as principals: the subject compared by structure, not as text,
//! and the subject alternative names.
//!
//! A subject is a sequence of RDNs, each a set of (attribute type, value) pairs. Written as
//! text it can be forged: a single CN whose value is `scanner,O=Example`, or one multi-valued
//! RDN `CN=scanner+O=Example`, both print as `CN=scanner,O=Example` without RFC 4514's
//! escapes. So a configured subject is parsed by RFC 4514's rules (escapes, `+` between the
//! attributes of one RDN) and both sides are reduced to one [`Canonical`] form in which every
//! type is an OID and every value is hex: two subjects have the same form only if they have
//! the same RDNs, types and values, in the same order.
//!
//! The order is the certificate's (issuers write `C`, `O`, `CN` or `CN`, `O`; the config lists
//! the RDNs as the certificate has them), which is how Portcullis has always matched.

use std::fmt::Write as _;

use rustls_pki_types::CertificateDer;

/// A configured or presented identity in its comparable form: `subject:` + the RDNs, or
/// `dns:`, `uri:`, `email:` + a subject alternative name.
pub type Canonical = String;

/// What a client certificate says of its holder, in comparable forms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The subject, `None` when it holds a value that is not a string.
    pub subject: Option<Canonical>,
    /// The DNS, URI and email subject alternative names.
    pub sans: Vec<Canonical>,
}

impl ClientIdentity {
    /// Every comparable form, the subject first.
    pub fn names(&self) -> impl Iterator<Item = &Canonical> {
        self.subject.iter().chain(&self.sans)
    }
}

/// Reads the identity of a DER certificate; `None` when it does not parse.
pub fn identity_of(cert: &CertificateDer<'_>) -> Option<ClientIdentity> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = parsed
        .subject()
        .iter()
        .map(|rdn| {
            rdn.iter()
                .map(|attr| {
                    let value = attr.as_str().ok()?;
                    Some((attr.attr_type().to_id_string(), value.as_bytes().to_vec()))
                })
                .collect::<Option<Vec<_>>>()
        })
        .collect::<Option<Vec<_>>>()
        .map(|rdns| canonical_subject(&rdns));
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = parsed.subject_alternative_name() {
        use x509_parser::extensions::GeneralName;
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(d) => sans.push(format!("dns:{}", d.to_ascii_lowercase())),
                GeneralName::URI(u) => sans.push(format!("uri:{u}")),
                GeneralName::RFC822Name(e) => sans.push(format!("email:{e}")),
                _ => {}
            }
        }
    }
    Some(ClientIdentity { subject, sans })
}

/// One RDN: its attributes as (dotted OID, value bytes).
type Rdn = Vec<(String, Vec<u8>)>;

fn canonical_subject(rdns: &[Rdn]) -> Canonical {
    let mut out = String::from("subject:");
    for (i, rdn) in rdns.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // The attributes of one RDN are a set: their order carries nothing.
        let mut attrs: Vec<String> = rdn
            .iter()
            .map(|(oid, value)| {
                let mut a = format!("{oid}=");
                for b in value {
                    let _ = write!(a, "{b:02x}");
                }
                a
            })
            .collect();
        attrs.sort();
        out.push_str(&attrs.join("+"));
    }
    out
}

/// A configured subject (`client_cert_subjects`), RFC 4514 text in the certificate's RDN
/// order: `CN=scanner, O=Example`, `CN=a\,b`, `CN=x+UID=7`, `2.5.4.3=name`. Spaces around
/// `,`, `+` and `=` are ignored.
pub fn parse_subject(text: &str) -> Result<Canonical, String> {
    let mut rdns: Vec<Rdn> = vec![Vec::new()];
    let mut rest = text.trim_start().as_bytes();
    if rest.is_empty() {
        return Err("is empty".into());
    }
    loop {
        // The attribute type, up to `=`.
        let eq = rest
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| format!("`{text}`: an attribute has no `=`"))?;
        let name = std::str::from_utf8(&rest[..eq]).unwrap_or("").trim();
        let oid = attribute_oid(name)
            .ok_or_else(|| format!("`{text}`: `{name}` is not an attribute type (CN, O, OU, C, L, ST, DC, UID, emailAddress, serialNumber or a dotted OID)"))?;
        rest = &rest[eq + 1..];
        // The value, up to an unescaped `,` or `+`.
        let mut value = Vec::new();
        let mut trailing_spaces = 0;
        let mut leading = true;
        let end = loop {
            match rest.split_first() {
                None => break None,
                Some((&b, tail)) if b == b',' || b == b'+' => {
                    rest = tail;
                    break Some(b);
                }
                Some((b'\\', tail)) => {
                    let (byte, tail) = unescape(tail)
                        .ok_or_else(|| format!("`{text}`: a `\\` escapes nothing it may"))?;
                    value.push(byte);
                    trailing_spaces = 0;
                    leading = false;
                    rest = tail;
                }
                Some((b' ', tail)) if leading => rest = tail,
                Some((&b, tail)) => {
                    if b == b'"' || b == b';' || b == b'<' || b == b'>' || b == b'=' {
                        return Err(format!(
                            "`{text}`: `{}` must be escaped with `\\` in a value",
                            b as char
                        ));
                    }
                    if b == b'#' && leading {
                        return Err(format!(
                            "`{text}`: hex-encoded (`#...`) values are not supported"
                        ));
                    }
                    trailing_spaces = if b == b' ' { trailing_spaces + 1 } else { 0 };
                    leading = false;
                    value.push(b);
                    rest = tail;
                }
            }
        };
        value.truncate(value.len() - trailing_spaces);
        if value.is_empty() {
            return Err(format!("`{text}`: `{name}` has an empty value"));
        }
        if std::str::from_utf8(&value).is_err() {
            return Err(format!("`{text}`: a value is not UTF-8"));
        }
        rdns.last_mut()
            .expect("one RDN at least")
            .push((oid, value));
        match end {
            None => break,
            Some(b',') => rdns.push(Vec::new()),
            Some(_) => {}
        }
        while let [b' ', tail @ ..] = rest {
            rest = tail;
        }
        if rest.is_empty() {
            return Err(format!("`{text}`: ends with a separator"));
        }
    }
    Ok(canonical_subject(&rdns))
}

/// The byte after a `\`: one of RFC 4514's specials, or two hex digits.
fn unescape(tail: &[u8]) -> Option<(u8, &[u8])> {
    match tail {
        [b, rest @ ..] if b" \"#+,;<=>\\".contains(b) => Some((*b, rest)),
        [h, l, rest @ ..] => {
            let hex = std::str::from_utf8(&[*h, *l]).ok()?.to_owned();
            Some((u8::from_str_radix(&hex, 16).ok()?, rest))
        }
        _ => None,
    }
}

fn attribute_oid(name: &str) -> Option<String> {
    let oid = match name.to_ascii_uppercase().as_str() {
        "CN" => "2.5.4.3",
        "SN" => "2.5.4.4",
        "SERIALNUMBER" => "2.5.4.5",
        "C" => "2.5.4.6",
        "L" => "2.5.4.7",
        "ST" => "2.5.4.8",
        "STREET" => "2.5.4.9",
        "O" => "2.5.4.10",
        "OU" => "2.5.4.11",
        "TITLE" => "2.5.4.12",
        "GN" | "GIVENNAME" => "2.5.4.42",
        "DC" => "0.9.2342.19200300.100.1.25",
        "UID" => "0.9.2342.19200300.100.1.1",
        "E" | "EMAILADDRESS" => "1.2.840.113549.1.9.1",
        other => {
            let dotted = !other.is_empty()
                && other.split('.').count() >= 2
                && other
                    .split('.')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
            return dotted.then(|| other.to_owned());
        }
    };
    Some(oid.to_owned())
}

/// A configured subject alternative name (`client_cert_sans`): `dns:host.example.com`,
/// `uri:spiffe://example.org/scanner` or `email:ops@example.com`.
pub fn parse_san(text: &str) -> Result<Canonical, String> {
    let (kind, value) = text
        .split_once(':')
        .ok_or_else(|| format!("`{text}` is not `dns:NAME`, `uri:URI` or `email:ADDRESS`"))?;
    if value.is_empty() || value.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(format!(
            "`{text}`: the name is empty or has spaces or control characters"
        ));
    }
    match kind.to_ascii_lowercase().as_str() {
        "dns" => Ok(format!("dns:{}", value.to_ascii_lowercase())),
        "uri" => Ok(format!("uri:{value}")),
        "email" => Ok(format!("email:{value}")),
        _ => Err(format!("`{text}`: `{kind}` is not dns, uri or email")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(dn: rcgen::DistinguishedName, sans: Vec<rcgen::SanType>) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name = dn;
        p.subject_alt_names = sans;
        p.self_signed(&key).unwrap().der().clone()
    }

    fn dn(pairs: &[(rcgen::DnType, &str)]) -> rcgen::DistinguishedName {
        let mut d = rcgen::DistinguishedName::new();
        for (t, v) in pairs {
            d.push(t.clone(), *v);
        }
        d
    }

    #[test]
    fn the_subject_is_compared_by_its_structure() {
        use rcgen::DnType::{CommonName, OrganizationName};
        let wanted = parse_subject("CN=scanner,O=Example").unwrap();
        let real = identity_of(&cert(
            dn(&[(CommonName, "scanner"), (OrganizationName, "Example")]),
            vec![],
        ))
        .unwrap();
        assert_eq!(real.subject.as_ref(), Some(&wanted));
        // One CN that prints the same is another subject.
        let forged = identity_of(&cert(dn(&[(CommonName, "scanner,O=Example")]), vec![])).unwrap();
        assert_ne!(forged.subject.as_ref(), Some(&wanted));
        assert_eq!(
            forged.subject,
            Some(parse_subject(r"CN=scanner\,O\=Example").unwrap())
        );
        // So is one RDN with two attributes.
        assert_ne!(parse_subject("CN=scanner+O=Example").unwrap(), wanted);
        assert_eq!(
            parse_subject("CN=scanner+O=Example").unwrap(),
            parse_subject("O=Example + CN=scanner").unwrap(),
            "the attributes of one RDN are a set"
        );
    }

    #[test]
    fn configured_subjects_follow_rfc_4514() {
        let same = [
            "CN=dave, O=Example",
            "cn = dave ,o=Example",
            "2.5.4.3=dave,2.5.4.10=Example",
            r"CN=\64ave,O=Example",
        ];
        for s in same {
            assert_eq!(
                parse_subject(s).unwrap(),
                parse_subject(same[0]).unwrap(),
                "{s}"
            );
        }
        assert_ne!(
            parse_subject("CN=dave,O=Example").unwrap(),
            parse_subject("O=Example,CN=dave").unwrap(),
            "RDN order counts"
        );
        assert_ne!(
            parse_subject("CN=dave").unwrap(),
            parse_subject("CN=Dave").unwrap()
        );
        for bad in [
            "", "dave", "XX=dave", "CN=", "CN=a,", "CN=a;b", "CN=#04", r"CN=a\", r"CN=a\zz",
            "CN=a=b",
        ] {
            assert!(parse_subject(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn subject_alternative_names_identify_too() {
        use rcgen::SanType;
        let spiffe = "spiffe://example.org/scanner";
        let c = cert(
            dn(&[(rcgen::DnType::CommonName, "x")]),
            vec![
                SanType::URI(spiffe.try_into().unwrap()),
                SanType::DnsName("Scanner.Example.com".try_into().unwrap()),
                SanType::Rfc822Name("ops@example.com".try_into().unwrap()),
            ],
        );
        let id = identity_of(&c).unwrap();
        for configured in [
            "uri:spiffe://example.org/scanner",
            "dns:scanner.example.com",
            "DNS:SCANNER.example.com",
            "email:ops@example.com",
        ] {
            let want = parse_san(configured).unwrap();
            assert!(id.names().any(|n| *n == want), "{configured}");
        }
        assert!(
            !id.names()
                .any(|n| *n == parse_san("uri:spiffe://example.org/other").unwrap())
        );
        // A SAN never stands for a subject, nor the other way round.
        assert!(
            !id.names()
                .any(|n| n.starts_with("subject:") && n.contains("spiffe"))
        );
        for bad in ["spiffe://x", "ip:1.2.3.4", "dns:", "uri:a b"] {
            assert!(parse_san(bad).is_err(), "{bad}");
        }
    }
}
