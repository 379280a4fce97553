//! The content-type table of SPEC §4, keyed by file extension (case-insensitive).
//!
//! Written out by hand because the SPEC fixes the exact answers (a general MIME database would
//! disagree, e.g. on `.ts`). Text types carry `; charset=utf-8`.

/// Content type for a stored file path.
pub fn content_type(path: &str) -> &'static str {
    // Byte scans and a stack buffer: this runs on every file read, where `rsplit` and a
    // lowercased `String` showed in profiles. Every extension in the table is ASCII, at most
    // five bytes.
    let b = path.as_bytes();
    let name = &b[b.iter().rposition(|&c| c == b'/').map_or(0, |i| i + 1)..];
    let Some(dot) = name.iter().rposition(|&c| c == b'.') else {
        return "application/octet-stream";
    };
    let ext = &name[dot + 1..];
    let mut lower = [0u8; 5];
    if ext.len() > lower.len() {
        return "application/octet-stream";
    }
    for (l, c) in lower.iter_mut().zip(ext) {
        *l = c.to_ascii_lowercase();
    }
    match &lower[..ext.len()] {
        b"js" | b"cjs" | b"mjs" | b"jsx" => "text/javascript; charset=utf-8",
        b"ts" | b"tsx" => "text/typescript; charset=utf-8",
        b"css" => "text/css; charset=utf-8",
        b"scss" => "text/x-scss; charset=utf-8",
        b"less" => "text/x-less; charset=utf-8",
        b"html" => "text/html; charset=utf-8",
        b"svg" => "image/svg+xml",
        b"json" => "application/json",
        b"yaml" | b"yml" => "text/yaml; charset=utf-8",
        b"toml" => "text/toml; charset=utf-8",
        b"xml" => "application/xml",
        b"md" => "text/markdown; charset=utf-8",
        b"txt" => "text/plain; charset=utf-8",
        b"woff" => "font/woff",
        b"woff2" => "font/woff2",
        b"ttf" => "font/ttf",
        b"otf" => "font/otf",
        b"png" => "image/png",
        b"gif" => "image/gif",
        b"webp" => "image/webp",
        b"jpg" | b"jpeg" => "image/jpeg",
        b"ico" => "image/x-icon",
        _ => "application/octet-stream",
    }
}

/// Whether a content type is worth compressing (text-like, not already compressed).
pub fn is_compressible(content_type: &str) -> bool {
    let essence = content_type
        .split_once(';')
        .map_or(content_type, |(essence, _)| essence)
        .trim();
    essence.starts_with("text/")
        || matches!(essence, "application/json" | "application/xml" | "image/svg+xml")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases = [
            ("a.js", "text/javascript; charset=utf-8"),
            ("a.CJS", "text/javascript; charset=utf-8"),
            ("a.mjs", "text/javascript; charset=utf-8"),
            ("a.jsx", "text/javascript; charset=utf-8"),
            ("a.ts", "text/typescript; charset=utf-8"),
            ("a.tsx", "text/typescript; charset=utf-8"),
            ("a.css", "text/css; charset=utf-8"),
            ("a.scss", "text/x-scss; charset=utf-8"),
            ("a.less", "text/x-less; charset=utf-8"),
            ("a.html", "text/html; charset=utf-8"),
            ("a.svg", "image/svg+xml"),
            ("a.JSON", "application/json"),
            ("a.yaml", "text/yaml; charset=utf-8"),
            ("a.yml", "text/yaml; charset=utf-8"),
            ("a.toml", "text/toml; charset=utf-8"),
            ("a.xml", "application/xml"),
            ("a.md", "text/markdown; charset=utf-8"),
            ("a.txt", "text/plain; charset=utf-8"),
            ("a.woff", "font/woff"),
            ("a.woff2", "font/woff2"),
            ("a.ttf", "font/ttf"),
            ("a.otf", "font/otf"),
            ("a.png", "image/png"),
            ("a.gif", "image/gif"),
            ("a.webp", "image/webp"),
            ("a.jpg", "image/jpeg"),
            ("a.JPEG", "image/jpeg"),
            ("a.ico", "image/x-icon"),
            ("a.bin", "application/octet-stream"),
            ("Makefile", "application/octet-stream"),
            (".gitignore", "application/octet-stream"),
            ("dir.js/file", "application/octet-stream"),
        ];
        for (path, want) in cases {
            assert_eq!(content_type(path), want, "{path}");
        }
    }
}
