//! `GET /`: the status page. One HTML file (`page.html`) compiled into the binary, with
//! its style and script inline: no CDN, no build step, nothing fetched but `/api/status`,
//! so it works on a plant network without internet.
//!
//! It is served with a Content-Security-Policy that allows exactly its own inline script
//! and style (by their SHA-256) and requests to this origin. The page writes every value
//! as text, never as markup; should a change ever slip, injected markup could still not
//! run a script (no inline handler, no other script matches a hash) nor send anything
//! elsewhere.

use std::sync::LazyLock;

pub(super) const PAGE: &str = include_str!("page.html");

/// The `Content-Security-Policy` header for [`PAGE`].
pub(super) fn content_security_policy() -> &'static str {
    static POLICY: LazyLock<String> = LazyLock::new(|| {
        format!(
            "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src data:; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            hash_of(inline(PAGE, "script")),
            hash_of(inline(PAGE, "style")),
        )
    });
    &POLICY
}

/// The text of the page's one `<tag>…</tag>` element ("" when missing, which the tests
/// catch: the policy would then allow nothing).
fn inline<'a>(page: &'a str, tag: &str) -> &'a str {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    page.split_once(&open).and_then(|(_, rest)| rest.split_once(&close)).map_or("", |(text, _)| text)
}

/// A CSP source for `text`: `'sha256-<base64>'`.
fn hash_of(text: &str) -> String {
    format!("'sha256-{}'", openssl::base64::encode_block(&openssl::sha::sha256(text.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_the_pages_own_script_and_style() {
        let script = inline(PAGE, "script");
        let style = inline(PAGE, "style");
        assert!(script.contains("function render") && style.contains("body {"));
        assert_eq!(PAGE.matches("<script").count(), 1, "one inline script, hashed");
        assert_eq!(PAGE.matches("<style").count(), 1, "one inline style, hashed");
        let policy = content_security_policy();
        assert!(policy.contains(&hash_of(script)) && policy.contains(&hash_of(style)), "{policy}");
        assert_eq!(hash_of(""), "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='");
    }

    #[test]
    fn the_page_writes_values_as_text_and_loads_nothing_from_elsewhere() {
        for markup_sink in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("] {
            assert!(!PAGE.contains(markup_sink), "the page uses {markup_sink}");
        }
        assert!(PAGE.contains("textContent"));
        // The only URL is the SVG namespace, an identifier that is never fetched.
        let urls: Vec<&str> =
            PAGE.match_indices("://").map(|(at, _)| &PAGE[at.saturating_sub(4)..at + 22]).collect();
        assert!(urls.iter().all(|url| *url == "http://www.w3.org/2000/svg"), "{urls:?}");
    }
}
