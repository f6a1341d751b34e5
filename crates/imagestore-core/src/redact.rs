//! One rule for showing a store URL anywhere a person or a log can read it (errors, log lines,
//! `Debug`, `Display`): the userinfo password, and the value of every query parameter that is
//! a secret or not known to be harmless, become `***`.
//!
//! * A parameter is a secret when its name holds one of [`SECRET_WORDS`] (any case), unless a
//!   backend documents it as a non-secret option.
//! * [`redact`] / [`redact_url`] apply the secret rule to any URL (for code that does not know
//!   the scheme's options).
//! * A backend shows its own URLs with [`redact_options`], naming its non-secret options: every
//!   other value is hidden too, so an option the backend does not know (a typo, or a secret
//!   put where it does not belong) is named in its error without its value.
//! * A shown value that is itself a URL (an S3 `endpoint`) is redacted by the same rule.

use url::Url;

/// Words that make a query parameter's value a secret, matched case-insensitively anywhere
/// in its name (`secret_access_key`, `X-Amz-Signature`, `session_token`, `password`, ...).
pub const SECRET_WORDS: &[&str] = &[
    "secret",
    "password",
    "passwd",
    "token",
    "key",
    "signature",
    "credential",
    "session",
    "auth",
];

/// What a hidden value reads as.
pub const MASK: &str = "***";

/// True if a query parameter named `name` holds a secret.
pub fn is_secret_option(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|w| lower.contains(w))
}

/// `url` for a message, by the secret rule; a URL that does not parse keeps only its scheme,
/// host and path (userinfo and query become `***`).
pub fn redact(url: &str) -> String {
    match Url::parse(url) {
        Ok(u) => redact_url(&u),
        Err(_) => redact_unparsed(url),
    }
}

/// `url` for a message, by the secret rule.
pub fn redact_url(url: &Url) -> String {
    redact_with(url, |name| !is_secret_option(name))
}

/// `url` for a message from its backend: only the values of `shown` (the backend's
/// documented, non-secret options) stay; every other value is `***`.
pub fn redact_options(url: &Url, shown: &[&str]) -> String {
    redact_with(url, |name| shown.contains(&name) && !is_secret_option(name))
}

/// The value of option `name` for a message from a backend that shows `shown`: the value (a
/// URL in it redacted) if `name` is one of them and not a secret, else `***`.
pub fn option_value(name: &str, value: &str, shown: &[&str]) -> String {
    if shown.contains(&name) && !is_secret_option(name) {
        redact_value(value)
    } else {
        MASK.to_owned()
    }
}

/// A value shown in a message: if it looks like a URL, redacted as one.
fn redact_value(value: &str) -> String {
    if value.contains("://") {
        redact(value)
    } else {
        value.to_owned()
    }
}

fn redact_with(url: &Url, show: impl Fn(&str) -> bool) -> String {
    let mut u = url.clone();
    if u.password().is_some() {
        let _ = u.set_password(Some(MASK));
    }
    if u.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if show(&k) {
                    redact_value(&v)
                } else {
                    MASK.to_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in &pairs {
            q.append_pair(k, v);
        }
        u.set_query(Some(&q.finish()));
    }
    if u.fragment().is_some() {
        u.set_fragment(Some(MASK));
    }
    u.to_string()
}

/// A string that is not a URL: everything between `://` and the last `@` of the authority,
/// and everything after `?` or `#`, is hidden.
fn redact_unparsed(url: &str) -> String {
    let (head, tail) = match url.find(['?', '#']) {
        Some(i) => (&url[..i], Some(MASK)),
        None => (url, None),
    };
    let head = match head.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = match rest.find('/') {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            match authority.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://{MASK}@{host}{path}"),
                None => head.to_owned(),
            }
        }
        None => match head.rsplit_once('@') {
            Some((_, rest)) => format!("{MASK}@{rest}"),
            None => head.to_owned(),
        },
    };
    match tail {
        Some(t) => format!("{head}?{t}"),
        None => head,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &str = "MARKER";

    #[test]
    fn passwords_and_secret_parameters_are_hidden() {
        for url in [
            "s3://user:MARKER@bucket/x",
            "s3://b/p?endpoint=http://h:9000&secret_access_key=MARKER",
            "s3://b/p?X-Amz-Signature=MARKER&region=eu",
            "vsphere://h/dc/ds/f?SESSION=MARKER",
            "vmdk:///srv?password=MARKER",
            "vmdk:///srv?passwd=MARKER&work=/w",
            "s3://b/p?token=MARKER",
            "s3://b/p?credential=MARKER",
            "s3://b/p?endpoint=http://u:MARKER@h:9000",
            "http://u:MARKER@h/x#MARKER",
        ] {
            let shown = redact(url);
            assert!(!shown.contains(M), "{url} -> {shown}");
        }
        assert_eq!(
            redact("s3://user:secret@bucket/x"),
            "s3://user:***@bucket/x"
        );
        assert_eq!(redact("file:///a"), "file:///a");
        assert_eq!(
            redact("s3://b/p?region=eu&secret_access_key=s"),
            "s3://b/p?region=eu&secret_access_key=***"
        );
    }

    #[test]
    fn backends_show_only_their_known_options() -> Result<(), url::ParseError> {
        let u = Url::parse("vmdk:///srv?capacity_kib=65536&foo=MARKER&work=/w")?;
        let shown = redact_options(&u, &["capacity_kib", "work"]);
        assert_eq!(shown, "vmdk:///srv?capacity_kib=65536&foo=***&work=%2Fw");
        assert_eq!(option_value("foo", M, &["work"]), MASK);
        assert_eq!(option_value("work", "/w", &["work"]), "/w");
        assert!(!option_value("endpoint", "http://a:MARKER@h", &["endpoint"]).contains(M));
        Ok(())
    }

    #[test]
    fn strings_that_are_not_urls_keep_only_scheme_host_and_path() {
        for s in [
            "s3://us er:MARKER@bucket/x?token=MARKER",
            "http://u:MARKER@h:99999999/p?z=MARKER",
            "not a url MARKER@host",
            "x://[::1:MARKER@h/p",
        ] {
            let shown = redact(s);
            assert!(!shown.contains(M), "{s} -> {shown}");
        }
    }
}
