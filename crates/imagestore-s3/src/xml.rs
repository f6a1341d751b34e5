//! S3's XML answers, read with an XML parser: error bodies (`<Error><Code>...`) and the
//! `ListMultipartUploads` result. Callers bound a body's size before it gets here; elements are
//! matched by local name, so a default namespace (AWS sends
//! `xmlns="http://s3.amazonaws.com/doc/2006-03-01/"`) changes nothing; entities and CDATA come
//! out as the text they stand for; documents with a DTD are refused.

use chrono::{DateTime, Utc};
use roxmltree::{Document, Node};

use crate::objects::Upload;

/// The most bytes of an error body that are read and parsed; the rest is dropped.
pub const MAX_ERROR_BODY: usize = 64 << 10;
/// The most bytes of a `ListMultipartUploads` page that are read (a page lists at most 1000
/// uploads of well under 2 KiB each).
pub const MAX_LISTING_PAGE: usize = 8 << 20;

/// An answer that is not the XML document the request calls for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadAnswer {
    /// The request it answered.
    pub request: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl std::fmt::Display for BadAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: unreadable answer: {}", self.request, self.reason)
    }
}

impl std::error::Error for BadAnswer {}

/// What an S3 error body says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorBody {
    /// The S3 error code (`NoSuchKey`, `SlowDown`, ...).
    pub code: Option<String>,
    /// The human-readable message.
    pub message: Option<String>,
}

impl ErrorBody {
    /// Reads an S3 error document (`<Error><Code>..</Code><Message>..</Message></Error>`); `None`
    /// for anything else (an empty body, HTML from a proxy, a truncated or malformed document).
    pub fn parse(xml: &str) -> Option<ErrorBody> {
        let doc = Document::parse(xml).ok()?;
        let root = doc.root_element();
        if root.tag_name().name() != "Error" {
            return None;
        }
        Some(ErrorBody {
            code: child_text(root, "Code").filter(|c| !c.is_empty()),
            message: child_text(root, "Message").filter(|m| !m.is_empty()),
        })
    }
}

/// One page of a `ListMultipartUploads` answer.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct UploadsPage {
    /// The uploads on this page (keys as the server sent them, with the prefix).
    pub uploads: Vec<Upload>,
    /// True when more pages follow.
    pub truncated: bool,
    /// The key marker of the next page.
    pub next_key: Option<String>,
    /// The upload-id marker of the next page.
    pub next_id: Option<String>,
}

const LIST_UPLOADS: &str = "ListMultipartUploads";

/// Reads a `ListMultipartUploadsResult` document.
pub fn parse_uploads(xml: &str) -> Result<UploadsPage, BadAnswer> {
    let bad = |reason: String| BadAnswer {
        request: LIST_UPLOADS,
        reason,
    };
    let doc = Document::parse(xml).map_err(|e| bad(e.to_string()))?;
    let root = doc.root_element();
    if root.tag_name().name() != "ListMultipartUploadsResult" {
        return Err(bad(format!(
            "<{}> instead of <ListMultipartUploadsResult>",
            root.tag_name().name()
        )));
    }
    let mut page = UploadsPage {
        truncated: child_text(root, "IsTruncated").is_some_and(|t| t.trim() == "true"),
        next_key: child_text(root, "NextKeyMarker").filter(|s| !s.is_empty()),
        next_id: child_text(root, "NextUploadIdMarker").filter(|s| !s.is_empty()),
        ..UploadsPage::default()
    };
    for u in root.children().filter(|n| is(*n, "Upload")) {
        let field = |name: &str| {
            child_text(u, name).ok_or_else(|| bad(format!("an <Upload> without <{name}>")))
        };
        page.uploads.push(Upload {
            key: field("Key")?,
            id: field("UploadId")?,
            initiated: child_text(u, "Initiated")
                .and_then(|t| DateTime::parse_from_rfc3339(t.trim()).ok())
                .map(|t| t.with_timezone(&Utc)),
        });
    }
    Ok(page)
}

fn is(n: Node<'_, '_>, name: &str) -> bool {
    n.is_element() && n.tag_name().name() == name
}

/// The text of `parent`'s first child element `name` (entities resolved, CDATA included).
fn child_text(parent: Node<'_, '_>, name: &str) -> Option<String> {
    let el = parent.children().find(|n| is(*n, name))?;
    Some(
        el.children()
            .filter(Node::is_text)
            .filter_map(|t| t.text())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's documented error body (the `GetObject` example of the S3 API reference).
    const NO_SUCH_KEY: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Error>
  <Code>NoSuchKey</Code>
  <Message>The resource you requested does not exist</Message>
  <Resource>/mybucket/myfoto.jpg</Resource>
  <RequestId>4442587FB7D0A2F9</RequestId>
</Error>"#;

    #[test]
    fn reads_error_bodies() {
        assert_eq!(
            ErrorBody::parse(NO_SUCH_KEY),
            Some(ErrorBody {
                code: Some("NoSuchKey".into()),
                message: Some("The resource you requested does not exist".into()),
            })
        );
        // moto's throttling answer shape, with a namespace and an escaped message.
        let slow = r#"<?xml version="1.0" encoding="UTF-8"?>
<Error xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Code>SlowDown</Code><Message>Please reduce your request rate &amp; retry &lt;later&gt;</Message><RequestId>1</RequestId></Error>"#;
        let b = ErrorBody::parse(slow).expect("parses");
        assert_eq!(b.code.as_deref(), Some("SlowDown"));
        assert_eq!(
            b.message.as_deref(),
            Some("Please reduce your request rate & retry <later>")
        );
        // A prefixed namespace and CDATA.
        let cdata = r#"<s3:Error xmlns:s3="http://s3.amazonaws.com/doc/2006-03-01/"><s3:Code><![CDATA[InternalError]]></s3:Code><s3:Message>a<![CDATA[<b>]]>c</s3:Message></s3:Error>"#;
        let b = ErrorBody::parse(cdata).expect("parses");
        assert_eq!(b.code.as_deref(), Some("InternalError"));
        assert_eq!(b.message.as_deref(), Some("a<b>c"));
        // SeaweedFS answers a HEAD-less error without a message.
        let bare = "<Error><Code>AccessDenied</Code></Error>";
        assert_eq!(
            ErrorBody::parse(bare),
            Some(ErrorBody {
                code: Some("AccessDenied".into()),
                message: None,
            })
        );
    }

    #[test]
    fn refuses_what_is_not_an_error_document() {
        for body in [
            "",
            "not xml",
            "<Error><Code>SlowDown</Code>",
            "<Error><Code>SlowDown</Error></Code>",
            "<html><body>502 Bad Gateway</body></html>",
            "<ListBucketResult></ListBucketResult>",
            // No DTDs, hence no entity expansion.
            r#"<!DOCTYPE Error [<!ENTITY x "SlowDown">]><Error><Code>&x;</Code></Error>"#,
        ] {
            assert_eq!(ErrorBody::parse(body), None, "{body}");
        }
        // An unknown entity makes the document malformed.
        assert_eq!(ErrorBody::parse("<Error><Code>&nope;</Code></Error>"), None);
        // Nested elements named like the fields do not count.
        let nested = "<Error><Detail><Code>SlowDown</Code></Detail></Error>";
        assert_eq!(ErrorBody::parse(nested), Some(ErrorBody::default()));
    }

    /// The `ListMultipartUploads` example of the S3 API reference, trimmed.
    const LISTING: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>bucket</Bucket>
  <KeyMarker></KeyMarker>
  <UploadIdMarker></UploadIdMarker>
  <NextKeyMarker>p/my-movie.m2ts</NextKeyMarker>
  <NextUploadIdMarker>YW55IGlkZWEgd2h5IGVsdmluZydzIHVwbG9hZCBmYWlsZWQ</NextUploadIdMarker>
  <MaxUploads>3</MaxUploads>
  <IsTruncated>true</IsTruncated>
  <Upload>
    <Key>p/my-divisor</Key>
    <UploadId>XMgbGlrZSBlbHZpbmcncyBub3QgaGF2aW5nIG11Y2ggbHVjaw</UploadId>
    <Initiator><ID>arn:aws:iam::111122223333:user/user1-11111a31-17b5-4fb7-9df5-b111111f13de</ID></Initiator>
    <StorageClass>STANDARD</StorageClass>
    <Initiated>2010-11-10T20:48:33.000Z</Initiated>
  </Upload>
  <Upload>
    <Key>p/k&amp;<![CDATA[<2>]]></Key>
    <UploadId>a+b/c=</UploadId>
    <Initiated>bad</Initiated>
  </Upload>
  <CommonPrefixes><Prefix>p/sub/</Prefix></CommonPrefixes>
</ListMultipartUploadsResult>"#;

    #[test]
    fn reads_a_listing_page() {
        let p = parse_uploads(LISTING).expect("parses");
        assert!(p.truncated);
        assert_eq!(p.next_key.as_deref(), Some("p/my-movie.m2ts"));
        assert_eq!(
            p.next_id.as_deref(),
            Some("YW55IGlkZWEgd2h5IGVsdmluZydzIHVwbG9hZCBmYWlsZWQ")
        );
        assert_eq!(p.uploads.len(), 2);
        assert_eq!(p.uploads[0].key, "p/my-divisor");
        assert_eq!(
            p.uploads[0].initiated.map(|t| t.to_rfc3339()),
            Some("2010-11-10T20:48:33+00:00".to_owned())
        );
        assert_eq!(p.uploads[1].key, "p/k&<2>");
        assert_eq!(p.uploads[1].id, "a+b/c=");
        assert_eq!(p.uploads[1].initiated, None);
    }

    #[test]
    fn reads_an_empty_last_page() {
        let xml = "<ListMultipartUploadsResult><Bucket>b</Bucket><NextKeyMarker/>\
                   <IsTruncated>false</IsTruncated></ListMultipartUploadsResult>";
        assert_eq!(parse_uploads(xml), Ok(UploadsPage::default()));
    }

    #[test]
    fn refuses_bad_listings() {
        for (xml, reason) in [
            (
                NO_SUCH_KEY,
                "<Error> instead of <ListMultipartUploadsResult>",
            ),
            (
                "<ListMultipartUploadsResult><Upload><Key>k</Key></Upload></ListMultipartUploadsResult>",
                "an <Upload> without <UploadId>",
            ),
        ] {
            assert_eq!(
                parse_uploads(xml),
                Err(BadAnswer {
                    request: LIST_UPLOADS,
                    reason: reason.to_owned()
                })
            );
        }
        let cut = &LISTING[..LISTING.len() / 2];
        assert!(parse_uploads(cut).is_err());
        let e = parse_uploads("").map(|_| ()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("ListMultipartUploads: unreadable answer"),
            "{e}"
        );
    }
}
