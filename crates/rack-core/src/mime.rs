//! The content-type table of SPEC §4, keyed by file extension (case-insensitive).
//!
//! Written out by hand because the SPEC fixes the exact answers (a general MIME database would
//! disagree, e.g. on `.ts`). Text types carry `; charset=utf-8`.

/// Content type for a stored file path.
pub fn content_type(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or(path);
    let ext = match name.rsplit_once('.') {
        Some((_, ext)) => ext.to_ascii_lowercase(),
        None => return "application/octet-stream",
    };
    match ext.as_str() {
        "js" | "cjs" | "mjs" | "jsx" => "text/javascript; charset=utf-8",
        "ts" | "tsx" => "text/typescript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "scss" => "text/x-scss; charset=utf-8",
        "less" => "text/x-less; charset=utf-8",
        "html" => "text/html; charset=utf-8",
        "svg" => "image/svg+xml",
        "json" => "application/json",
        "yaml" | "yml" => "text/yaml; charset=utf-8",
        "toml" => "text/toml; charset=utf-8",
        "xml" => "application/xml",
        "md" => "text/markdown; charset=utf-8",
        "txt" => "text/plain; charset=utf-8",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "jpg" | "jpeg" => "image/jpeg",
        "ico" => "image/x-icon",
        _ => "application/octet-stream",
    }
}

/// Whether a content type is worth compressing (text-like, not already compressed).
pub fn is_compressible(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
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
