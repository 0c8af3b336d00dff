//! Text shown to people (errors, reported URLs, event notes, logs): bounded, printable, and
//! without credentials. The Debian client and every controller's events go through it.
//!
//! A repository URL may carry `user:password@`; the requests send it, nothing we render does.
//! Messages may end up in a status condition, so each is capped at [`MAX_MESSAGE_BYTES`] and
//! stripped of control characters, whatever a mirror sent.

/// Longest message the client renders, in bytes (about 1 KiB, as the Warning events' notes).
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// What replaces the userinfo of a URL.
pub const REDACTED: &str = "redacted";

const ELLIPSIS: &str = "…";

/// `text` with every URL's userinfo redacted, control characters replaced by spaces, and cut to
/// [`MAX_MESSAGE_BYTES`] (on a character boundary, ending in `…` when cut).
pub fn bounded(text: &str) -> String {
    let mut out = String::new();
    let mut cut_at = None;
    // Only the head can be shown: never copy a 16 MiB Release to shorten it.
    let mut end = text.len().min(4 * MAX_MESSAGE_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    for c in redact_text(&text[..end]).chars() {
        let c = if c.is_control() { ' ' } else { c };
        if cut_at.is_none() && out.len() + c.len_utf8() > MAX_MESSAGE_BYTES - ELLIPSIS.len() {
            cut_at = Some(out.len());
        }
        if out.len() + c.len_utf8() > MAX_MESSAGE_BYTES {
            out.truncate(cut_at.unwrap_or(out.len()));
            out.push_str(ELLIPSIS);
            return out;
        }
        out.push(c);
    }
    if end < text.len() {
        out.truncate(cut_at.unwrap_or(out.len()));
        out.push_str(ELLIPSIS);
    }
    out
}

/// A URL for display: its `user:password@` replaced by `redacted@`.
pub fn redact_url(url: &str) -> String {
    redact_text(url)
}

/// Redacts the userinfo of every `scheme://userinfo@host` in free text.
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        // The authority ends at the first '/', '?', '#' or whitespace.
        let end = tail
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace() || c.is_control())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(userinfo_end) => {
                out.push_str(REDACTED);
                out.push_str(&authority[userinfo_end..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_redacted_wherever_a_url_appears() {
        assert_eq!(
            redact_url("https://user:s3cret@mirror.example/deb/InRelease"),
            "https://redacted@mirror.example/deb/InRelease"
        );
        assert_eq!(
            redact_text("fetching http://a:b@h:8080?x=1 and HTTPS://tok@h2#f, then http://h3/p@q"),
            "fetching http://redacted@h:8080?x=1 and HTTPS://redacted@h2#f, then http://h3/p@q"
        );
        assert_eq!(redact_text("no url here: a@b"), "no url here: a@b");
        assert_eq!(
            redact_text("https://u:p@x:y@host/"),
            "https://redacted@host/"
        );
    }

    #[test]
    fn messages_are_bounded_and_printable() {
        let short = bounded("line one\nline two\r\t\u{1b}[31mred\u{7f}");
        assert_eq!(short, "line one line two   [31mred ");
        let long = "é".repeat(4096);
        let cut = bounded(&long);
        assert!(cut.len() <= MAX_MESSAGE_BYTES, "{}", cut.len());
        assert!(cut.ends_with(ELLIPSIS));
        assert!(cut.len() > MAX_MESSAGE_BYTES - 8);
        let exact = "a".repeat(MAX_MESSAGE_BYTES);
        assert_eq!(bounded(&exact), exact);
        let over = "a".repeat(MAX_MESSAGE_BYTES + 1);
        assert_eq!(bounded(&over).len(), MAX_MESSAGE_BYTES - 3 + ELLIPSIS.len());
    }
}
