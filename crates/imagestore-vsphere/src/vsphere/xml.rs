//! The bits of XML the SOAP client needs: escaping text for requests, and reading responses
//! with real namespace resolution (vCenter and vcsim spell `xsi:type` with different
//! prefixes: `xsi:`, `XMLSchema-instance:`).

use roxmltree::{Document, Node};

/// The XML Schema instance namespace (`xsi:type`).
pub const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// `s` escaped as XML character data or an attribute value.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// `<name>text</name>` with `text` escaped.
pub fn el(name: &str, text: &str) -> String {
    format!("<{name}>{}</{name}>", escape(text))
}

/// A managed object reference element: `<name type="Type">value</name>`.
pub fn moref(name: &str, r: &MoRef) -> String {
    format!(
        "<{name} type=\"{}\">{}</{name}>",
        escape(&r.kind),
        escape(&r.value)
    )
}

/// A managed object reference: a type and an opaque value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MoRef {
    /// Its type (`Datacenter`, `Task`, ...).
    pub kind: String,
    /// Its value (opaque: vcsim's contain `/`, `@`, `[`).
    pub value: String,
}

impl MoRef {
    /// A reference of type `kind` with value `value`.
    pub fn new(kind: &str, value: &str) -> MoRef {
        MoRef {
            kind: kind.to_owned(),
            value: value.to_owned(),
        }
    }

    /// The reference an element holds (its `type` attribute and text).
    pub fn of(node: Node<'_, '_>) -> Option<MoRef> {
        // The plain `type` attribute, not `xsi:type` (a moref value carries both).
        let kind = node
            .attributes()
            .find(|a| a.name() == "type" && a.namespace().is_none())?
            .value();
        Some(MoRef {
            kind: kind.to_owned(),
            value: text(node),
        })
    }
}

/// The element's text, trimmed.
pub fn text(node: Node<'_, '_>) -> String {
    node.text().unwrap_or_default().trim().to_owned()
}

/// The first child element with local name `name`.
pub fn child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    node.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
}

/// Every child element with local name `name`.
pub fn children<'a, 'i>(node: Node<'a, 'i>, name: &'a str) -> impl Iterator<Item = Node<'a, 'i>> {
    node.children()
        .filter(move |c| c.is_element() && c.tag_name().name() == name)
}

/// The text of the first child element named `name`.
pub fn child_text(node: Node<'_, '_>, name: &str) -> Option<String> {
    child(node, name).map(text)
}

/// The first descendant element with local name `name` (the node itself included).
pub fn find<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    node.descendants()
        .find(|c| c.is_element() && c.tag_name().name() == name)
}

/// The element's `xsi:type`, without any namespace prefix of its value.
pub fn xsi_type<'a>(node: Node<'a, '_>) -> Option<&'a str> {
    let t = node.attribute((XSI, "type"))?;
    Some(t.rsplit_once(':').map_or(t, |(_, local)| local))
}

/// Parses a response body.
pub fn parse(body: &str) -> Result<Document<'_>, roxmltree::Error> {
    Document::parse(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_resolve_whatever_the_prefix() -> Result<(), roxmltree::Error> {
        let doc = parse(
            r#"<r xmlns:XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance" xmlns:x="http://www.w3.org/2001/XMLSchema-instance"><a XMLSchema-instance:type="TaskInfo"/><b x:type="vim25:FileNotFound"/><c type="Task">task-1</c><d XMLSchema-instance:type="ManagedObjectReference" type="HostDatastoreBrowser">b-1</d></r>"#,
        )?;
        let root = doc.root_element();
        assert_eq!(child(root, "a").and_then(xsi_type), Some("TaskInfo"));
        assert_eq!(child(root, "b").and_then(xsi_type), Some("FileNotFound"));
        assert_eq!(
            child(root, "c").and_then(MoRef::of),
            Some(MoRef::new("Task", "task-1"))
        );
        assert_eq!(
            child(root, "d").and_then(MoRef::of),
            Some(MoRef::new("HostDatastoreBrowser", "b-1"))
        );
        assert_eq!(escape("a<&>\"'"), "a&lt;&amp;&gt;&quot;&apos;");
        Ok(())
    }
}
