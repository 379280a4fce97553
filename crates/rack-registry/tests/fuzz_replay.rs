//! Replays every fuzz target's committed corpus (`fuzz/corpus/<target>/`) and every input that
//! once crashed it (`fuzz/artifacts/<target>/`) through the target's body, on stable, so that
//! a fixed crash stays fixed without a fuzzer (see docs/RELIABILITY.md).

use std::path::{Path, PathBuf};

use rack_registry::fuzzing;

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut files: Vec<PathBuf> = ["corpus", "artifacts"]
        .iter()
        .filter_map(|d| std::fs::read_dir(root.join(d).join(target)).ok())
        .flatten()
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(target: &str, body: fn(&[u8])) {
    let files = inputs(target);
    // A corpus that went missing would make this test pass vacuously.
    assert!(!files.is_empty(), "no corpus for {target}");
    for file in files {
        let data = std::fs::read(&file).expect("read a corpus file");
        if std::panic::catch_unwind(|| body(&data)).is_err() {
            panic!("{target} fails on {}", file.display());
        }
    }
}

#[test]
fn route() {
    replay("route", fuzzing::route);
}

#[test]
fn auth_json() {
    replay("auth_json", fuzzing::auth_json);
}

#[test]
fn webhooks_json() {
    replay("webhooks_json", fuzzing::webhooks_json);
}

#[test]
fn registry_json() {
    replay("registry_json", fuzzing::registry_json);
}

#[test]
fn archive_gz() {
    replay("archive_gz", fuzzing::archive_gz);
}

#[test]
fn archive_tar() {
    replay("archive_tar", fuzzing::archive_tar);
}

#[test]
fn multipart() {
    replay("multipart", fuzzing::multipart);
}

#[test]
fn headers() {
    replay("headers", fuzzing::headers);
}

/// Found by `archive_tar` (fuzz/artifacts/archive_tar/crash-9287...): an entry whose name holds
/// a backslash was extracted, though no storage key can hold one (a directory so named went
/// into the published version on disk). It is now refused at check 6, like a NUL byte.
#[test]
fn an_entry_name_with_a_backslash_is_an_invalid_archive() {
    use rack_registry::upload::{dry, extract};
    for (name, ty) in [
        ("templates\\x/", tar::EntryType::Directory),
        ("a\\b.txt", tar::EntryType::Regular),
    ] {
        let mut builder = tar::Builder::new(Vec::new());
        let manifest = br#"{"name":"x","namespace":"@a","version":"1.0.0"}"#;
        let mut header = tar::Header::new_gnu();
        header.set_size(manifest.len() as u64);
        header.set_cksum();
        builder
            .append_data(&mut header, "registry.json", &manifest[..])
            .unwrap();
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(ty);
        header.set_size(0);
        header.set_cksum();
        builder.append_data(&mut header, name, &[][..]).unwrap();
        let tar = builder.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        let package = gz.finish().unwrap();

        let code = |r: Result<(), extract::ExtractError>| match r {
            Err(extract::ExtractError::Api(e)) => e.code(),
            Err(extract::ExtractError::Io(e)) => panic!("{e}"),
            Ok(()) => "accepted",
        };
        assert_eq!(
            code(dry::judge(&package, fuzzing::LIMITS).map(|_| ())),
            "INVALID_ARCHIVE",
            "{name}"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.tar.gz"), &package).unwrap();
        let extracted = extract::extract(
            &dir.path().join("p.tar.gz"),
            &dir.path().join("t"),
            fuzzing::LIMITS,
        );
        assert_eq!(code(extracted.map(|_| ())), "INVALID_ARCHIVE", "{name}");
    }
}
