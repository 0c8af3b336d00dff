//! Downloads: the index (bounded), and the archive into a staging file, hashed with SHA-512 as it
//! is written, with a progress bar when stderr is a terminal.

use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

use reqwest::{Response, Url};
use sha2::{Digest as _, Sha512};

use super::{EnvtestError, Index, Release};
use crate::debian::fetch::{CONNECT_TIMEOUT, IDLE_READ_TIMEOUT, redirect_refusal};
use crate::text::redact_url;

/// Largest index accepted (the published one is about 30 KiB).
pub const MAX_INDEX_BYTES: u64 = 4 << 20;
/// Largest archive accepted (Kubernetes 1.32 for linux/amd64 is about 70 MiB).
pub const MAX_ARCHIVE_BYTES: u64 = 1 << 30;

/// One HTTP client: rustls with the system roots, proxies from the environment, bounded
/// redirects (GitHub's release links redirect once), a connect and an idle read timeout.
#[derive(Clone, Debug)]
pub struct Downloader {
    client: reqwest::Client,
}

impl Downloader {
    /// Builds the client.
    pub fn new() -> Result<Downloader, EnvtestError> {
        let policy = reqwest::redirect::Policy::custom(|attempt| {
            match redirect_refusal(attempt.previous(), attempt.url()) {
                None => attempt.follow(),
                Some(reason) => attempt.error(reason),
            }
        });
        let client = reqwest::Client::builder()
            .redirect(policy)
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(IDLE_READ_TIMEOUT)
            .user_agent(concat!("kubernetes-upgrader/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| EnvtestError::Fetch {
                url: "(client setup)".to_owned(),
                message: crate::debian::fetch::chain(&e),
            })?;
        Ok(Downloader { client })
    }

    /// Fetches and parses the index at `url`.
    pub async fn index(&self, url: &Url) -> Result<Index, EnvtestError> {
        let mut response = self.get(url).await?;
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| fetch_error(url, &e))? {
            body.extend_from_slice(&chunk);
            if body.len() as u64 > MAX_INDEX_BYTES {
                return Err(EnvtestError::TooLarge {
                    url: redact_url(url.as_str()),
                    limit: MAX_INDEX_BYTES,
                });
            }
        }
        let text = String::from_utf8(body).map_err(|_| EnvtestError::IndexFormat {
            url: redact_url(url.as_str()),
            message: "it is not UTF-8 text".to_owned(),
        })?;
        Index::parse(&text, url.as_str())
    }

    /// Downloads `release` into `out`, and checks its SHA-512 against the index's.
    pub async fn archive(
        &self,
        release: &Release,
        out: &mut std::fs::File,
        path: &std::path::Path,
    ) -> Result<(), EnvtestError> {
        let url = &release.url;
        let mut response = self.get(url).await?;
        let total = response.content_length();
        if total.is_some_and(|t| t > MAX_ARCHIVE_BYTES) {
            return Err(too_large(url));
        }
        let mut progress = Progress::new(&release.archive, total);
        let mut hasher = Sha512::new();
        let mut written: u64 = 0;
        let mut writer = std::io::BufWriter::with_capacity(1 << 20, out);
        while let Some(chunk) = response.chunk().await.map_err(|e| fetch_error(url, &e))? {
            written += chunk.len() as u64;
            if written > MAX_ARCHIVE_BYTES {
                return Err(too_large(url));
            }
            hasher.update(&chunk);
            writer.write_all(&chunk).map_err(EnvtestError::io(path))?;
            progress.advance(written);
        }
        writer.flush().map_err(EnvtestError::io(path))?;
        progress.finish(written);
        let actual = hex::encode(hasher.finalize());
        if actual != release.sha512 {
            return Err(EnvtestError::HashMismatch {
                archive: release.archive.clone(),
                expected: release.sha512.clone(),
                actual,
            });
        }
        Ok(())
    }

    async fn get(&self, url: &Url) -> Result<Response, EnvtestError> {
        let response = self
            .client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| fetch_error(url, &e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(EnvtestError::Fetch {
                url: redact_url(url.as_str()),
                message: format!("HTTP {status}"),
            });
        }
        Ok(response)
    }
}

fn fetch_error(url: &Url, error: &reqwest::Error) -> EnvtestError {
    EnvtestError::Fetch {
        url: redact_url(url.as_str()),
        message: crate::debian::fetch::chain(error),
    }
}

fn too_large(url: &Url) -> EnvtestError {
    EnvtestError::TooLarge {
        url: redact_url(url.as_str()),
        limit: MAX_ARCHIVE_BYTES,
    }
}

/// A one-line progress bar on stderr, redrawn at most ten times a second; nothing when stderr
/// is not a terminal.
struct Progress {
    label: String,
    total: Option<u64>,
    last_draw: Option<Instant>,
    terminal: bool,
}

impl Progress {
    fn new(label: &str, total: Option<u64>) -> Progress {
        Progress {
            label: label.to_owned(),
            total,
            last_draw: None,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    fn advance(&mut self, done: u64) {
        if !self.terminal
            || self
                .last_draw
                .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        self.last_draw = Some(Instant::now());
        let _ = write!(
            std::io::stderr(),
            "\r{}",
            render(&self.label, done, self.total)
        );
    }

    fn finish(&mut self, done: u64) {
        if self.terminal {
            let _ = writeln!(
                std::io::stderr(),
                "\r{}",
                render(&self.label, done, self.total)
            );
        }
    }
}

/// `label [#######.......]  42%  29.4/70.0 MiB`, or `label  29.4 MiB` without a length.
fn render(label: &str, done: u64, total: Option<u64>) -> String {
    const WIDTH: u64 = 30;
    #[allow(clippy::cast_precision_loss)]
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    match total.filter(|t| *t > 0) {
        Some(total) => {
            let done = done.min(total);
            let filled = done * WIDTH / total;
            format!(
                "{label} [{}{}] {:>3}%  {:.1}/{:.1} MiB",
                "#".repeat(usize::try_from(filled).unwrap_or(0)),
                ".".repeat(usize::try_from(WIDTH - filled).unwrap_or(0)),
                done * 100 / total,
                mib(done),
                mib(total)
            )
        }
        None => format!("{label}  {:.1} MiB", mib(done)),
    }
}

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn the_progress_line_shows_share_and_sizes() {
        assert_eq!(
            render("a.tar.gz", 35 << 20, Some(70 << 20)),
            "a.tar.gz [###############...............]  50%  35.0/70.0 MiB"
        );
        assert_eq!(
            render("a.tar.gz", 70 << 20, Some(70 << 20)),
            format!("a.tar.gz [{}] 100%  70.0/70.0 MiB", "#".repeat(30))
        );
        assert_eq!(render("a.tar.gz", 3 << 19, None), "a.tar.gz  1.5 MiB");
        assert_eq!(render("a.tar.gz", 5, Some(0)), "a.tar.gz  0.0 MiB");
    }
}
