//! Email (R20): messages are written to the outbox inside the transaction of
//! the change that causes them (`store::outbox`), then delivered by
//! [`sender`] over SMTP when configured, or written to the log in the
//! embedded default.

pub mod messages;
pub mod seal;
pub mod sender;
pub mod test_email;

/// Where links in emails point, and who sends them.
#[derive(Debug, Clone)]
pub struct MailSettings {
    /// Base URL of the KIOPS console that handles `/invitations/accept` and
    /// `/reset-password` links.
    pub public_url: String,
    /// `From:` header.
    pub from: String,
    /// `smtp://host:port`, `smtp://user:pass@host:587?tls=required` or
    /// `smtps://…`; None writes emails to the log.
    pub smtp_url: Option<String>,
    /// Seals the single-use tokens queued in the outbox (`seal`).
    pub seal: seal::SecretSeal,
}
