//! Content sniffing: the first bytes of an upload checked against its declared type, with
//! the `infer` crate's magic-byte matchers.
//!
//! The rules, strict where a wrong type is dangerous and lenient where `infer` cannot be sure:
//! - an executable, HTML, XML or a script is never accepted as an image, audio, video, font
//!   or PDF;
//! - an image or PDF must start like one when `infer` knows its signature (a PNG must start
//!   like a PNG);
//! - a type `infer` has no signature for (`text/plain`, `application/json`, ...) is taken as
//!   declared;
//! - with no declared type, the sniffed type is used, else `application/octet-stream`.

/// How many leading bytes are sniffed: enough for every signature `infer` checks at the
/// start of a file (tar's sits at offset 257), small enough to hold per request.
pub const SNIFF_BYTES: usize = 8 * 1024;

/// The outcome of sniffing an upload's first bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sniffed {
    /// Store with this content type (the declared one, or the sniffed one when none was).
    Accept(Option<&'static str>),
    /// The content contradicts the declared type.
    Mismatch {
        declared: String,
        found: Option<&'static str>,
    },
}

/// Media types that run code or render as documents on an origin.
fn is_dangerous(mime: &str) -> bool {
    matches!(
        mime,
        "application/x-executable"
            | "application/vnd.microsoft.portable-executable"
            | "application/x-mach-binary"
            | "application/x-elf"
            | "application/wasm"
            | "application/x-shockwave-flash"
            | "application/java-archive"
            | "application/x-msdownload"
            | "text/html"
            | "text/xml"
            | "text/x-shellscript"
    )
}

/// Families a viewer trusts to be inert.
fn is_trusted_family(mime: &str) -> bool {
    ["image/", "audio/", "video/", "font/"]
        .iter()
        .any(|p| mime.starts_with(p))
        || mime == "application/pdf"
}

/// Spellings clients use for the same type.
fn canonical(mime: &str) -> &str {
    match mime {
        "image/jpg" | "image/pjpeg" => "image/jpeg",
        "image/x-icon" => "image/vnd.microsoft.icon",
        "image/x-png" => "image/png",
        "image/tif" => "image/tiff",
        "application/x-pdf" => "application/pdf",
        other => other,
    }
}

/// Checks `prefix` (the first up to [`SNIFF_BYTES`] of the body) against `declared`, the
/// lower-case `type/subtype` the client sent, if any.
pub fn sniff(declared: Option<&str>, prefix: &[u8]) -> Sniffed {
    let found = infer::get(prefix).map(|t| t.mime_type());
    let Some(declared) = declared else {
        return Sniffed::Accept(found);
    };
    let declared_c = canonical(declared);
    if found.is_some_and(|f| canonical(f) == declared_c) {
        return Sniffed::Accept(None);
    }
    let mismatch = || Sniffed::Mismatch {
        declared: declared.to_owned(),
        found,
    };
    if let Some(f) = found
        && is_dangerous(f)
        && is_trusted_family(declared_c)
    {
        return mismatch();
    }
    let signature_known = declared_c.starts_with("image/") || declared_c == "application/pdf";
    if signature_known && infer::is_mime_supported(declared_c) && !prefix.is_empty() {
        return mismatch();
    }
    Sniffed::Accept(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0";
    const JPEG: &[u8] = b"\xFF\xD8\xFF\xE0\0\x10JFIF\0";
    /// A 64-byte ELF header (x86-64 executable), as `infer` needs the whole header.
    const ELF: &[u8] = b"\x7FELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0\x3e\0\x01\0\0\0\x40\x10\x40\0\0\0\0\0\x40\0\0\0\0\0\0\0\x00\x20\0\0\0\0\0\0\0\0\0\0\x40\0\x38\0\x01\0\x40\0\x03\0\x02\0";
    const HTML: &[u8] = b"<!DOCTYPE html><html><body>x</body></html>";
    const PDF: &[u8] = b"%PDF-1.7\n%\xE2\xE3\xCF\xD3\n";

    #[test]
    fn matching_types_pass() {
        assert_eq!(sniff(Some("image/png"), PNG), Sniffed::Accept(None));
        assert_eq!(sniff(Some("image/jpeg"), JPEG), Sniffed::Accept(None));
        assert_eq!(sniff(Some("image/jpg"), JPEG), Sniffed::Accept(None));
        assert_eq!(sniff(Some("application/pdf"), PDF), Sniffed::Accept(None));
    }

    #[test]
    fn images_must_start_like_images() {
        assert!(matches!(
            sniff(Some("image/png"), JPEG),
            Sniffed::Mismatch { .. }
        ));
        assert!(matches!(
            sniff(Some("image/png"), b"just some text"),
            Sniffed::Mismatch { .. }
        ));
        assert!(matches!(
            sniff(Some("application/pdf"), b"not a pdf"),
            Sniffed::Mismatch { .. }
        ));
    }

    #[test]
    fn executables_and_pages_are_never_images() {
        for bad in [
            ELF,
            HTML,
            b"#!/bin/sh\nrm -rf /\n".as_slice(),
            b"MZ\x90\0\x03\0\0\0\x04\0\0\0\xff\xff".as_slice(),
        ] {
            for declared in [
                "image/png",
                "image/gif",
                "video/mp4",
                "application/pdf",
                "audio/mpeg",
                "font/woff2",
            ] {
                assert!(
                    matches!(sniff(Some(declared), bad), Sniffed::Mismatch { .. }),
                    "{declared}"
                );
            }
        }
    }

    #[test]
    fn types_without_a_signature_are_taken_as_declared() {
        assert_eq!(sniff(Some("text/plain"), b"hello"), Sniffed::Accept(None));
        assert_eq!(
            sniff(Some("application/json"), b"{}"),
            Sniffed::Accept(None)
        );
        // Storing binaries as octet-stream is a legitimate use.
        assert_eq!(
            sniff(Some("application/octet-stream"), ELF),
            Sniffed::Accept(None)
        );
        // An SVG is XML text infer does not claim; it is served as an attachment anyway.
        assert_eq!(
            sniff(
                Some("image/svg+xml"),
                b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>"
            ),
            Sniffed::Accept(None)
        );
    }

    #[test]
    fn no_declared_type_takes_the_sniffed_one() {
        assert_eq!(sniff(None, PNG), Sniffed::Accept(Some("image/png")));
        assert_eq!(sniff(None, b"plain"), Sniffed::Accept(None));
        assert_eq!(sniff(None, HTML), Sniffed::Accept(Some("text/html")));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(declared in "[a-z]{1,8}/[a-z+.-]{1,12}", bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = sniff(Some(&declared), &bytes);
            let _ = sniff(None, &bytes);
        }
    }
}
