//! HTTPS for the extension: a rustls listener whose certificate and key are read from a folder
//! (`tls.crt`, `tls.key`, controller-runtime's convention) and read again when either file
//! changes, so a renewed cert-manager Secret is served without a restart.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::shutdown::Shutdown;

/// The certificate file in the cert folder.
pub const CERT_FILE: &str = "tls.crt";
/// The key file in the cert folder.
pub const KEY_FILE: &str = "tls.key";
/// How often the files are compared with what is served.
pub const RELOAD_EVERY: Duration = Duration::from_secs(5);
/// The longest a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest certificate or key file read.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// Why the serving certificate cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file cannot be read.
    #[error("reading {0}")]
    Read(PathBuf, #[source] io::Error),
    /// A file is larger than [`MAX_PEM_BYTES`].
    #[error("{0} is larger than {MAX_PEM_BYTES} bytes")]
    TooLarge(PathBuf),
    /// `tls.crt` holds no PEM certificate.
    #[error("{0} holds no PEM certificate")]
    NoCertificate(PathBuf),
    /// `tls.key` holds no usable PEM private key.
    #[error("{0} holds no usable PEM private key: {1}")]
    Key(PathBuf, String),
    /// The key does not match the certificate, or rustls refuses the pair.
    #[error("the certificate in {0} and its key cannot be used together: {1}")]
    Pair(PathBuf, String),
}

fn read_limited(path: &Path) -> Result<Vec<u8>, CertError> {
    let size = std::fs::metadata(path)
        .map_err(|e| CertError::Read(path.to_owned(), e))?
        .len();
    if size > MAX_PEM_BYTES {
        return Err(CertError::TooLarge(path.to_owned()));
    }
    std::fs::read(path).map_err(|e| CertError::Read(path.to_owned(), e))
}

/// The two files' bytes, as last read.
type Files = (Vec<u8>, Vec<u8>);

fn read_files(dir: &Path) -> Result<Files, CertError> {
    Ok((
        read_limited(&dir.join(CERT_FILE))?,
        read_limited(&dir.join(KEY_FILE))?,
    ))
}

/// Parses a PEM certificate chain and its key into what rustls serves.
pub fn certified_key(dir: &Path, cert: &[u8], key: &[u8]) -> Result<CertifiedKey, CertError> {
    let cert_path = dir.join(CERT_FILE);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(CertError::NoCertificate(cert_path));
    }
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| CertError::Key(dir.join(KEY_FILE), e.to_string()))?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider)
        .map_err(|e| CertError::Pair(cert_path, e.to_string()))
}

/// The certificate served now, replaced when the files change.
#[derive(Debug)]
pub struct Certificates {
    dir: PathBuf,
    current: RwLock<(Files, Arc<CertifiedKey>)>,
}

impl Certificates {
    /// Reads the folder once; an unusable certificate is an error at start.
    pub fn load(dir: &Path) -> Result<Self, CertError> {
        let files = read_files(dir)?;
        let key = certified_key(dir, &files.0, &files.1)?;
        Ok(Self {
            dir: dir.to_owned(),
            current: RwLock::new((files, Arc::new(key))),
        })
    }

    /// Reads the files again; returns whether a new certificate is served. An unusable new
    /// pair keeps the last good one.
    pub fn reload(&self) -> Result<bool, CertError> {
        let files = read_files(&self.dir)?;
        if self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            == files
        {
            return Ok(false);
        }
        let key = certified_key(&self.dir, &files.0, &files.1)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = (files, Arc::new(key));
        Ok(true)
    }

    /// The DER of the certificate served now (its leaf).
    pub fn current_leaf(&self) -> Vec<u8> {
        self.served()
            .cert
            .first()
            .map(|c| c.to_vec())
            .unwrap_or_default()
    }

    fn served(&self) -> Arc<CertifiedKey> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .1,
        )
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.served())
    }
}

/// Reloads `certificates` every [`RELOAD_EVERY`] until shutdown.
pub fn keep_reloading(certificates: Arc<Certificates>, shutdown: Shutdown) {
    tokio::spawn(async move {
        loop {
            if tokio::time::timeout(RELOAD_EVERY, shutdown.clone().wait())
                .await
                .is_ok()
            {
                return;
            }
            match certificates.reload() {
                Ok(true) => {
                    tracing::info!(dir = %certificates.dir.display(), "extension serving certificate reloaded");
                }
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(error = %crate::runtime::cause_chain(&err), "extension serving certificate not reloaded; the last good one is served");
                }
            }
        }
    });
}

/// The TLS configuration: TLS 1.2 and 1.3, no client certificate asked for, HTTP/1.1.
pub fn tls_config(certificates: Arc<Certificates>) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_cert_resolver(certificates);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A listener that hands axum connections whose TLS handshake has completed. Handshakes run
/// in their own tasks, so a slow client holds up no other.
pub struct TlsListener {
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts TCP connections on `listener` and shakes hands with `config` until shutdown.
    pub fn new(
        listener: TcpListener,
        config: rustls::ServerConfig,
        shutdown: Shutdown,
    ) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let (tx, accepted) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    () = shutdown.clone().wait() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(pair) => pair,
                        Err(err) => {
                            tracing::warn!(error = %err, "extension: accepting a connection failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(err)) => {
                            tracing::debug!(%peer, error = %err, "extension: TLS handshake failed");
                        }
                        Err(_) => tracing::debug!(%peer, "extension: TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { accepted, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(connection) => connection,
            // The acceptor stopped at shutdown: no connection comes any more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}
