//! PlatformService.SendTestEmail's one message: sent at once over its own
//! SMTP connection, never through the outbox, and its outcome returned.

use super::MailSettings;
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::AsyncSmtpTransport;
use lettre::{AsyncTransport, Message, Tokio1Executor};
use std::time::Duration;

/// How long the SMTP exchange may take, in all.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// What became of the test message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestOutcome {
    pub delivered: bool,
    pub smtp_configured: bool,
    /// The reply code of a refusal.
    pub smtp_code: Option<u16>,
    /// What went wrong; empty when delivered.
    pub error: String,
}

impl TestOutcome {
    fn failed(smtp_code: Option<u16>, error: String) -> Self {
        TestOutcome {
            delivered: false,
            smtp_configured: true,
            smtp_code,
            error,
        }
    }
}

/// Sends the test message to `to` (a validated address).
pub async fn send(settings: &MailSettings, to: &str) -> TestOutcome {
    let Some(url) = &settings.smtp_url else {
        tracing::info!(
            target: "kiops_identity::mail::log_delivery",
            to = %to,
            "test email (no SMTP configured)"
        );
        return TestOutcome {
            delivered: false,
            smtp_configured: false,
            smtp_code: None,
            error: "no SMTP server is configured; emails are written to the log".into(),
        };
    };
    let transport = match AsyncSmtpTransport::<Tokio1Executor>::from_url(url) {
        Ok(t) => t.timeout(Some(TIMEOUT)).build(),
        Err(e) => return TestOutcome::failed(None, format!("invalid SMTP URL: {e}")),
    };
    let message = match build(settings, to) {
        Ok(m) => m,
        Err(e) => return TestOutcome::failed(None, e),
    };
    match tokio::time::timeout(TIMEOUT, transport.send(message)).await {
        Ok(Ok(_)) => TestOutcome {
            delivered: true,
            smtp_configured: true,
            smtp_code: None,
            error: String::new(),
        },
        Ok(Err(e)) => {
            let code = e.status().and_then(|c| c.to_string().parse::<u16>().ok());
            TestOutcome::failed(code, e.to_string())
        }
        Err(_) => TestOutcome::failed(None, "the SMTP server did not answer in time".into()),
    }
}

fn build(settings: &MailSettings, to: &str) -> Result<Message, String> {
    let from: Mailbox = settings
        .from
        .parse()
        .map_err(|e| format!("from address: {e}"))?;
    let to: Mailbox = to.parse().map_err(|e| format!("to address: {e}"))?;
    Message::builder()
        .from(from)
        .to(to)
        .subject("KIOPS test email")
        .header(ContentType::TEXT_PLAIN)
        .body("This is a test message from KIOPS identity: the mail settings work.\r\n".to_string())
        .map_err(|e| format!("message: {e}"))
}
