//! Ingestion of one index: hash and count the bytes as downloaded, decompress them as they
//! arrive, and scan the decompressed stream, with caps on every size.
//!
//! The digest decides first: when the Release lists a size and SHA256, a mismatch is reported
//! as `ChecksumMismatch` even if decompression or scanning failed earlier (the download goes on,
//! hashing only, so that the verdict is about the bytes the server sent). Results are returned
//! only after the check passed.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

use super::SyncError;
use super::scan::{ScanError, ScanSummary, Scanner};

/// Memory the xz decoder may use. xz's `-9` preset needs 65 MiB; Debian uses the default `-6`
/// (9 MiB).
pub const XZ_MEMORY_LIMIT: u64 = 80 << 20;

/// How an index file is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Compression {
    /// `Packages`.
    None,
    /// `Packages.gz`.
    Gzip,
    /// `Packages.xz`.
    Xz,
}

impl Compression {
    /// Preferred order: gzip first (it decodes about 6 times faster than xz at a quarter of the
    /// memory, and with conditional requests its larger download is paid once per change), then
    /// xz, then plain.
    pub const PREFERRED: [Compression; 3] = [Compression::Gzip, Compression::Xz, Compression::None];

    /// The file-name extension, with its dot.
    pub fn extension(self) -> &'static str {
        match self {
            Self::None => "",
            Self::Gzip => ".gz",
            Self::Xz => ".xz",
        }
    }

    /// The compression of an index path ending in `Packages`, `Packages.gz` or `Packages.xz`.
    pub fn of_index_path(path: &str) -> Option<Compression> {
        let name = path.rsplit('/').next()?;
        Self::PREFERRED
            .into_iter()
            .find(|c| name.strip_prefix("Packages") == Some(c.extension()))
    }
}

/// Size and SHA256 the Release lists for an index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    /// Size in bytes.
    pub size: u64,
    /// SHA256, lower-case hex.
    pub sha256: String,
}

/// What a successful ingestion found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ingested {
    /// SHA256 of the bytes as downloaded, lower-case hex.
    pub sha256: String,
    /// Bytes downloaded.
    pub raw_bytes: u64,
    /// The scan of the decompressed index.
    pub summary: ScanSummary,
}

enum Stopped {
    TooLarge(String),
}

struct ScanSink {
    scanner: Scanner,
    written: u64,
    limit: u64,
    stopped: Option<Stopped>,
}

impl Write for ScanSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.stopped.is_some() {
            return Err(io::Error::other("scan stopped"));
        }
        self.written += buf.len() as u64;
        if self.written > self.limit {
            self.stopped = Some(Stopped::TooLarge(format!(
                "decompresses to more than the {} bytes allowed (maxIndexSize)",
                self.limit
            )));
            return Err(io::Error::other("index too large"));
        }
        if let Err(error) = self.scanner.feed(buf) {
            self.stopped = Some(Stopped::TooLarge(error.to_string()));
            return Err(io::Error::other("scan stopped"));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum Decoder {
    Plain(ScanSink),
    Gzip(flate2::write::MultiGzDecoder<ScanSink>),
    Xz(xz2::write::XzDecoder<ScanSink>),
}

impl Decoder {
    fn sink(&self) -> &ScanSink {
        match self {
            Self::Plain(sink) => sink,
            Self::Gzip(decoder) => decoder.get_ref(),
            Self::Xz(decoder) => decoder.get_ref(),
        }
    }

    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Self::Plain(sink) => sink.write_all(data),
            Self::Gzip(decoder) => decoder.write_all(data),
            Self::Xz(decoder) => decoder.write_all(data),
        }
    }
}

/// Push-based ingestion of one index.
pub struct Ingest {
    url: String,
    compression: Compression,
    decoder: Option<Decoder>,
    hasher: Sha256,
    raw_bytes: u64,
    raw_limit: u64,
    expected: Option<Expected>,
    failure: Option<SyncError>,
}

impl Ingest {
    /// Starts ingesting the index at `url` (used in messages), keeping `package` on
    /// `architecture`, allowing `max_bytes` decompressed (and downloaded) bytes.
    pub fn new(
        url: &str,
        compression: Compression,
        package: &str,
        architecture: &str,
        max_bytes: u64,
        expected: Option<Expected>,
    ) -> Result<Self, SyncError> {
        let sink = ScanSink {
            scanner: Scanner::new(package, architecture),
            written: 0,
            limit: max_bytes,
            stopped: None,
        };
        let decoder = match compression {
            Compression::None => Decoder::Plain(sink),
            Compression::Gzip => Decoder::Gzip(flate2::write::MultiGzDecoder::new(sink)),
            Compression::Xz => {
                let stream = xz2::stream::Stream::new_stream_decoder(
                    XZ_MEMORY_LIMIT,
                    xz2::stream::CONCATENATED,
                )
                .map_err(|e| SyncError::ParseError(format!("{url}: xz decoder: {e}")))?;
                Decoder::Xz(xz2::write::XzDecoder::new_stream(sink, stream))
            }
        };
        Ok(Self {
            url: url.to_owned(),
            compression,
            decoder: Some(decoder),
            hasher: Sha256::new(),
            raw_bytes: 0,
            raw_limit: max_bytes,
            expected,
            failure: None,
        })
    }

    /// Takes the next downloaded bytes. An error means: stop downloading, this is the verdict.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), SyncError> {
        self.raw_bytes += chunk.len() as u64;
        if let Some(expected) = &self.expected {
            if self.raw_bytes > expected.size {
                return Err(SyncError::ChecksumMismatch(format!(
                    "{}: more than the {} bytes the Release lists",
                    self.url, expected.size
                )));
            }
        } else if self.raw_bytes > self.raw_limit {
            return Err(SyncError::IndexTooLarge(format!(
                "{}: download is larger than the {} bytes allowed (maxIndexSize)",
                self.url, self.raw_limit
            )));
        }
        self.hasher.update(chunk);
        if self.failure.is_none()
            && let Some(decoder) = &mut self.decoder
            && let Err(error) = decoder.write_all(chunk)
        {
            let failure = classify(&self.url, self.compression, decoder.sink(), &error);
            self.failure = Some(failure);
        }
        match (&self.failure, &self.expected) {
            // Without a digest to check there is nothing left to learn from the rest.
            (Some(failure), None) => Err(clone_error(failure)),
            _ => Ok(()),
        }
    }

    /// Ends the download: checks size and digest, then finishes decompression and the scan.
    pub fn finish(mut self) -> Result<Ingested, SyncError> {
        let sha256 = hex::encode(std::mem::take(&mut self.hasher).finalize());
        if let Some(expected) = &self.expected {
            if self.raw_bytes != expected.size {
                return Err(SyncError::ChecksumMismatch(format!(
                    "{}: got {} bytes, the Release lists {}",
                    self.url, self.raw_bytes, expected.size
                )));
            }
            if !sha256.eq_ignore_ascii_case(&expected.sha256) {
                return Err(SyncError::ChecksumMismatch(format!(
                    "{}: SHA256 is {sha256}, the Release lists {}",
                    self.url, expected.sha256
                )));
            }
        }
        if let Some(failure) = self.failure.take() {
            return Err(failure);
        }
        let Some(decoder) = self.decoder.take() else {
            return Err(SyncError::ParseError(format!(
                "{}: ingestion already finished",
                self.url
            )));
        };
        let sink = match decoder {
            Decoder::Plain(sink) => sink,
            Decoder::Gzip(mut decoder) => {
                if let Err(error) = decoder.try_finish() {
                    return Err(self.classify(decoder.get_ref(), &error));
                }
                decoder.finish().map_err(|e| self.decompress_error(&e))?
            }
            Decoder::Xz(mut decoder) => match decoder.finish() {
                Ok(sink) => sink,
                Err(error) => return Err(self.classify(decoder.get_ref(), &error)),
            },
        };
        if let Some(stopped) = sink.stopped {
            return Err(self.stopped_error(stopped));
        }
        let summary = sink.scanner.finish().map_err(|e| self.scan_error(&e))?;
        if summary.is_unusable() {
            return Err(SyncError::ParseError(format!(
                "{}: not a Debian Packages index ({} malformed paragraphs, none with a Package field)",
                self.url, summary.malformed
            )));
        }
        Ok(Ingested {
            sha256,
            raw_bytes: self.raw_bytes,
            summary,
        })
    }

    fn classify(&self, sink: &ScanSink, error: &io::Error) -> SyncError {
        classify(&self.url, self.compression, sink, error)
    }

    fn stopped_error(&self, stopped: Stopped) -> SyncError {
        match stopped {
            Stopped::TooLarge(message) => {
                SyncError::IndexTooLarge(format!("{}: {message}", self.url))
            }
        }
    }

    fn scan_error(&self, error: &ScanError) -> SyncError {
        SyncError::IndexTooLarge(format!("{}: {error}", self.url))
    }

    fn decompress_error(&self, error: &io::Error) -> SyncError {
        decompress_error(&self.url, self.compression, error)
    }
}

fn classify(url: &str, compression: Compression, sink: &ScanSink, error: &io::Error) -> SyncError {
    match &sink.stopped {
        Some(Stopped::TooLarge(message)) => SyncError::IndexTooLarge(format!("{url}: {message}")),
        None => decompress_error(url, compression, error),
    }
}

fn decompress_error(url: &str, compression: Compression, error: &io::Error) -> SyncError {
    {
        let memory = error
            .get_ref()
            .and_then(|e| e.downcast_ref::<xz2::stream::Error>())
            .is_some_and(|e| matches!(e, xz2::stream::Error::MemLimit));
        if memory {
            return SyncError::IndexTooLarge(format!(
                "{url}: xz stream needs more than {} MiB of memory to decompress",
                XZ_MEMORY_LIMIT >> 20
            ));
        }
        let kind = match compression {
            Compression::None => "plain",
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
        };
        SyncError::ParseError(format!("{url}: corrupt {kind} data: {error}"))
    }
}

fn clone_error(error: &SyncError) -> SyncError {
    match error {
        SyncError::IndexTooLarge(m) => SyncError::IndexTooLarge(m.clone()),
        SyncError::ChecksumMismatch(m) => SyncError::ChecksumMismatch(m.clone()),
        SyncError::SignatureInvalid(m) => SyncError::SignatureInvalid(m.clone()),
        other => SyncError::ParseError(other.to_string()),
    }
}

/// Ingests a whole reader (a file, in the CLI's tests and the benchmark) in 64 KiB reads.
pub fn ingest_reader(
    mut reader: impl Read,
    url: &str,
    compression: Compression,
    package: &str,
    architecture: &str,
    max_bytes: u64,
    expected: Option<Expected>,
) -> Result<Ingested, SyncError> {
    let mut ingest = Ingest::new(url, compression, package, architecture, max_bytes, expected)?;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => {
                return Err(SyncError::FetchFailed {
                    url: url.to_owned(),
                    message: error.to_string(),
                });
            }
        };
        ingest.push(&buffer[..read])?;
    }
    ingest.finish()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut encoder = xz2::write::XzEncoder::new(Vec::new(), 6);
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn expected(data: &[u8]) -> Expected {
        Expected {
            size: data.len() as u64,
            sha256: hex::encode(Sha256::digest(data)),
        }
    }

    const INDEX: &[u8] = b"Package: kubeadm\nVersion: 1.31.2-1.1\nArchitecture: amd64\n\n\
Package: kubeadm\nVersion: 1.31.3-1.1\nArchitecture: arm64\n";

    fn run(
        data: &[u8],
        compression: Compression,
        max: u64,
        expected: Option<Expected>,
    ) -> Result<Ingested, SyncError> {
        ingest_reader(
            data,
            "http://x/Packages",
            compression,
            "kubeadm",
            "amd64",
            max,
            expected,
        )
    }

    #[test]
    fn all_compressions_read_the_same() {
        for (bytes, compression) in [
            (INDEX.to_vec(), Compression::None),
            (gzip(INDEX), Compression::Gzip),
            (xz(INDEX), Compression::Xz),
        ] {
            let got = run(&bytes, compression, 1 << 20, Some(expected(&bytes))).unwrap();
            assert_eq!(got.summary.versions, ["v1.31.2"]);
            assert_eq!(got.sha256, expected(&bytes).sha256);
        }
    }

    #[test]
    fn concatenated_members_and_streams_are_read() {
        let mut gz = gzip(b"Package: kubeadm\nVersion: 1.1.1-1\n\n");
        gz.extend(gzip(b"Package: kubeadm\nVersion: 1.1.2-1\n"));
        assert_eq!(
            run(&gz, Compression::Gzip, 1 << 20, None)
                .unwrap()
                .summary
                .versions,
            ["v1.1.1", "v1.1.2"]
        );
        let mut x = xz(b"Package: kubeadm\nVersion: 1.1.1-1\n\n");
        x.extend(xz(b"Package: kubeadm\nVersion: 1.1.2-1\n"));
        assert_eq!(
            run(&x, Compression::Xz, 1 << 20, None)
                .unwrap()
                .summary
                .versions,
            ["v1.1.1", "v1.1.2"]
        );
    }

    #[test]
    fn corrupt_data_is_a_parse_error_unless_the_digest_fails() {
        for (mut bytes, compression) in [
            (gzip(INDEX), Compression::Gzip),
            (xz(INDEX), Compression::Xz),
        ] {
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0xff;
            bytes[middle + 1] ^= 0x55;
            let err = run(&bytes, compression, 1 << 20, None).unwrap_err();
            assert_eq!(err.reason(), "ParseError", "{compression:?}: {err}");
            let good = match compression {
                Compression::Gzip => gzip(INDEX),
                _ => xz(INDEX),
            };
            let err = run(&bytes, compression, 1 << 20, Some(expected(&good))).unwrap_err();
            assert_eq!(err.reason(), "ChecksumMismatch", "{compression:?}: {err}");
            // Truncated compressed data, listed as such.
            let truncated = &good[..good.len() - 6];
            let err = run(truncated, compression, 1 << 20, Some(expected(truncated))).unwrap_err();
            assert_eq!(err.reason(), "ParseError", "{compression:?}: {err}");
        }
    }

    #[test]
    fn bombs_stop_at_the_cap() {
        let huge = vec![b'a'; 8 << 20];
        for (bytes, compression) in [
            (gzip(&huge), Compression::Gzip),
            (xz(&huge), Compression::Xz),
        ] {
            assert!(bytes.len() < 100_000);
            let err = run(&bytes, compression, 4 << 20, Some(expected(&bytes))).unwrap_err();
            assert_eq!(err.reason(), "IndexTooLarge", "{err}");
            let err = run(&bytes, compression, 64 << 20, None).unwrap_err();
            // One 8 MiB line.
            assert_eq!(err.reason(), "IndexTooLarge", "{err}");
        }
    }

    #[test]
    fn sizes_are_checked_before_decompressing_further() {
        let bytes = gzip(INDEX);
        let mut listed = expected(&bytes);
        listed.size -= 1;
        assert_eq!(
            run(&bytes, Compression::Gzip, 1 << 20, Some(listed))
                .unwrap_err()
                .reason(),
            "ChecksumMismatch"
        );
        let mut listed = expected(&bytes);
        listed.size += 1;
        assert_eq!(
            run(&bytes, Compression::Gzip, 1 << 20, Some(listed))
                .unwrap_err()
                .reason(),
            "ChecksumMismatch"
        );
        assert_eq!(
            run(INDEX, Compression::None, 10, None)
                .unwrap_err()
                .reason(),
            "IndexTooLarge"
        );
    }

    #[test]
    fn compression_from_path() {
        assert_eq!(
            Compression::of_index_path("main/binary-amd64/Packages.xz"),
            Some(Compression::Xz)
        );
        assert_eq!(
            Compression::of_index_path("Packages.gz"),
            Some(Compression::Gzip)
        );
        assert_eq!(
            Compression::of_index_path("Packages"),
            Some(Compression::None)
        );
        assert_eq!(Compression::of_index_path("Packages.bz2"), None);
        assert_eq!(Compression::of_index_path("Sources"), None);
    }
}
