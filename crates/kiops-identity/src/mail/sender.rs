//! The background sender: drains the outbox, with a lease per message and
//! exponential backoff on failure (1 s, 2 s, 4 s … capped at 1 hour). Each
//! message carries `Message-ID: <outbox id@kiops-identity>`, so a receiver
//! can drop the rare duplicate after a crash between sending and recording.

use super::MailSettings;
use crate::clock::Clock;
use crate::domain::DomainError;
use crate::metrics::Metrics;
use crate::store::outbox::{self, OutboxEmail};
use crate::store::Store;
use lettre::message::header::ContentType;
use lettre::message::{Body, Mailbox};
use lettre::transport::smtp::AsyncSmtpTransport;
use lettre::{AsyncTransport, Message, Tokio1Executor};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// How long a claimed message is reserved for one delivery attempt.
const LEASE_MS: i64 = 60_000;
const BATCH: u64 = 20;
const MAX_BACKOFF_MS: i64 = 3_600_000;

/// What the sender uses of the running service.
pub struct Sender {
    pub store: Store,
    pub clock: Clock,
    pub settings: MailSettings,
    pub transport: Transport,
    /// Notified after a commit that queued a message.
    pub wakeup: Arc<Notify>,
    pub metrics: Metrics,
}

pub enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Log,
}

impl Transport {
    pub fn from_settings(settings: &MailSettings) -> anyhow::Result<Self> {
        match &settings.smtp_url {
            None => Ok(Transport::Log),
            Some(url) => Ok(Transport::Smtp(
                AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .map_err(|e| anyhow::anyhow!("invalid SMTP URL: {e}"))?
                    .timeout(Some(Duration::from_secs(20)))
                    .build(),
            )),
        }
    }
}

fn build(settings: &MailSettings, m: &OutboxEmail, text: &str) -> Result<Message, String> {
    let from: Mailbox = settings
        .from
        .parse()
        .map_err(|e| format!("from address: {e}"))?;
    let to: Mailbox = m
        .to_address
        .parse()
        .map_err(|e| format!("to address: {e}"))?;
    // 7bit keeps links intact for simple clients; fall back to automatic
    // encoding if the text does not allow it.
    let crlf = text.replace("\r\n", "\n").replace('\n', "\r\n");
    let body = Body::new_with_encoding(
        crlf,
        lettre::message::header::ContentTransferEncoding::SevenBit,
    )
    .unwrap_or_else(Body::new);
    Message::builder()
        .from(from)
        .to(to)
        .subject(m.subject.clone())
        .message_id(Some(format!("<{}@kiops-identity>", m.id)))
        .header(ContentType::TEXT_PLAIN)
        .body(body)
        .map_err(|e| format!("message: {e}"))
}

/// A failed delivery: its error text, and whether the SMTP server refused
/// it for good (5xx), so another attempt would not help (R32).
struct Failure {
    error: String,
    permanent: bool,
}

impl From<String> for Failure {
    fn from(error: String) -> Self {
        Failure {
            error,
            permanent: false,
        }
    }
}

/// Longest error text kept for ListInvitations.
const MAX_ERROR_CHARS: usize = 300;

/// The error as stored and shown: printable ASCII on one line, bounded,
/// without the message's single-use token: an SMTP server may quote the
/// message (a content filter's refusal), and the error is shown to
/// ListInvitations and logged (R32).
fn printable(e: &str, secret: Option<&str>) -> String {
    let e = match secret {
        Some(t) if !t.is_empty() => e.replace(t, "[token]"),
        _ => e.to_string(),
    };
    let one_line: String = e
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { ' ' })
        .collect();
    one_line
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(MAX_ERROR_CHARS)
        .collect()
}

async fn deliver(
    settings: &MailSettings,
    transport: &Transport,
    m: &OutboxEmail,
    text: &str,
    secret: Option<&str>,
) -> Result<(), Failure> {
    match transport {
        Transport::Log => {
            // Embedded default only (no SMTP configured): the log is the
            // mailbox, so the message, link included, goes there.
            tracing::info!(
                target: "kiops_identity::mail::log_delivery",
                to = %m.to_address,
                subject = %m.subject,
                "email (no SMTP configured):\n{}",
                text
            );
            Ok(())
        }
        Transport::Smtp(smtp) => {
            let msg = build(settings, m, text)?;
            smtp.send(msg).await.map(|_| ()).map_err(|e| Failure {
                permanent: e.is_permanent(),
                error: printable(&e.to_string(), secret),
            })
        }
    }
}

/// One pass over the due messages; returns how many were delivered, and
/// whether a token was erased (then `Store::scrub_wal` should run).
pub async fn drain_once(s: &Sender) -> Result<(usize, bool), DomainError> {
    let conn = s.store.writer();
    let now = s.clock.now_ms();
    let mut delivered = 0;
    let abandoned = outbox::abandon_expired(conn, now).await?;
    let mut erased = abandoned > 0;
    if abandoned > 0 {
        tracing::warn!(
            count = abandoned,
            "emails given up: their single-use link expired before delivery"
        );
    }
    for m in outbox::due(conn, now, BATCH).await? {
        if !outbox::claim(conn, &m.id, now, LEASE_MS).await? {
            continue;
        }
        // A sealed token is opened just before use (`seal`); one this
        // server's key cannot open is given up like a text that cannot render.
        let opened = m
            .secret
            .as_deref()
            .map(|secret| s.settings.seal.open(secret, &m.to_address))
            .transpose();
        let secret = opened.as_ref().ok().cloned().flatten();
        let text = match opened
            .and_then(|secret| crate::mail::messages::render(&m.body_text, secret.as_deref()))
        {
            Ok(t) => t,
            Err(e) => {
                outbox::abandon(conn, &m.id, &e).await?;
                erased |= m.secret.is_some();
                tracing::warn!(email_id = %m.id, error = %e, "email given up");
                continue;
            }
        };
        match deliver(&s.settings, &s.transport, &m, &text, secret.as_deref()).await {
            Ok(()) => {
                let legacy = outbox::mark_sent(conn, &m.id, s.clock.now_ms()).await?;
                delivered += 1;
                erased |= legacy || m.secret.is_some();
            }
            Err(Failure {
                error: e,
                permanent: true,
            }) => {
                // Refused for good (e.g. 550 unknown recipient): retrying
                // would only be refused again.
                outbox::abandon(conn, &m.id, &e).await?;
                erased |= m.secret.is_some();
                tracing::warn!(email_id = %m.id, attempts = m.attempts + 1, error = %e, "email refused by the SMTP server; given up");
            }
            Err(Failure { error: e, .. }) => {
                let backoff = (1000i64 << m.attempts.clamp(0, 22)).min(MAX_BACKOFF_MS);
                outbox::mark_failed(conn, &m.id, s.clock.now_ms() + backoff, &e).await?;
                // Logged after the failure is recorded, so the line means the
                // retry is scheduled (operators and tests rely on that).
                tracing::warn!(email_id = %m.id, attempts = m.attempts + 1, error = %e, "email delivery failed; will retry");
            }
        }
    }
    Ok((delivered, erased))
}

/// The outbox sender: runs until `shutdown` turns true. Woken at once by
/// `Sender::wakeup` after a commit that queued a message, and every second
/// otherwise (for retries and messages queued by other replicas).
pub async fn run(s: Sender, mut shutdown: watch::Receiver<bool>) {
    // A token was erased but an older copy may still be in SQLite's WAL.
    let mut scrub = false;
    loop {
        match drain_once(&s).await {
            Ok((_, erased)) => scrub |= erased,
            Err(e) => tracing::warn!(error = %e, "outbox pass failed"),
        }
        if scrub {
            match s.store.scrub_wal().await {
                Ok(done) => scrub = !done,
                Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed; will retry"),
            }
        }
        if let Ok(n) = outbox::backlog(s.store.conn()).await {
            s.metrics.outbox_backlog.set(n as i64);
        }
        tokio::select! {
            _ = s.wakeup.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.wait_for(|v| *v) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn the_error_text_never_keeps_the_token() {
        let e = "550 5.7.1 refused: https://x.test/accept?token=ki_AbC-d_9\r\nbye";
        let shown = printable(e, Some("ki_AbC-d_9"));
        assert_eq!(
            shown,
            "550 5.7.1 refused: https://x.test/accept?token=[token] bye"
        );
        assert_eq!(printable("451 later", None), "451 later");
    }
}
