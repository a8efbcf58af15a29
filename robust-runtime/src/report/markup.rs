//! Text for HTML and XML documents (the report page, JUnit files): markup escaped, and the
//! characters XML 1.0 cannot hold dropped.

/// XML character data: markup escaped, and characters XML 1.0 does not allow dropped.
pub(crate) fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out += "&amp;",
            '<' => out += "&lt;",
            '>' => out += "&gt;",
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => {}
            c => out.push(c),
        }
    }
    out
}

/// An attribute value (HTML or XML): [`text`] with quotes and line breaks escaped too.
pub(crate) fn attr(s: &str) -> String {
    text(s)
        .replace('"', "&quot;")
        .replace('\n', "&#10;")
        .replace('\r', "&#13;")
        .replace('\t', "&#9;")
}

#[cfg(test)]
mod should {
    use super::*;

    #[test]
    fn escape_markup_and_drop_what_xml_cannot_hold() {
        assert_eq!(text("a < b && c > d"), "a &lt; b &amp;&amp; c &gt; d");
        assert_eq!(text("bell\u{7}\nok"), "bell\nok");
        assert_eq!(attr("say \"hi\"\nthen"), "say &quot;hi&quot;&#10;then");
    }
}
