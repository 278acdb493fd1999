//! The texts of the emails. Plain text only; every link also shows the bare
//! token so it can be used from grpcurl.
//!
//! A text that carries a token is stored with [`SECRET_MARK`] where the token
//! goes, and the token apart (`NewEmail::secret`): the sender puts it in with
//! [`render`] at delivery, then the outbox forgets it (H3).

use super::MailSettings;
use crate::store::outbox::{EmailSecret, NewEmail};

/// Stands for the token in a stored text. Control characters are refused in
/// every name and text a user can set, so no user content can forge it.
pub const SECRET_MARK: &str = "\u{1}kiops-secret\u{1}";

/// The text to send: the stored text with the token put in. Refuses a text
/// that needs a token when there is none (erased: expired or already sent).
pub fn render(body: &str, secret: Option<&str>) -> Result<String, String> {
    match (body.contains(SECRET_MARK), secret) {
        (false, _) => Ok(body.to_string()),
        (true, Some(s)) => Ok(body.replace(SECRET_MARK, s)),
        (true, None) => Err("the message's single-use link is gone (expired or sent)".into()),
    }
}

/// The token as stored: sealed when the server has an outbox key.
fn secret(settings: &MailSettings, to: &str, token: &str, expires_at: i64) -> Option<EmailSecret> {
    Some(EmailSecret {
        token: settings.seal.seal(token, to),
        expires_at,
    })
}

pub const INVITATION_TTL_DAYS: i64 = 7;

fn link(settings: &MailSettings, path: &str) -> String {
    format!(
        "{}/{path}?token={SECRET_MARK}",
        settings.public_url.trim_end_matches('/')
    )
}

pub fn invitation(
    settings: &MailSettings,
    to: &str,
    org_name: &str,
    inviter: &str,
    role: &str,
    token: &str,
    expires_at: i64,
) -> NewEmail {
    NewEmail {
        to: to.to_string(),
        subject: format!("You are invited to join {org_name} on KIOPS"),
        body: format!(
            "Hello,\n\n{inviter} invited you to join the organization \"{org_name}\" on KIOPS as {role}.\n\n\
             Accept the invitation:\n{}\n\n\
             Invitation token: {SECRET_MARK}\n\n\
             The invitation is valid for {INVITATION_TTL_DAYS} days and can be used once.\n\
             If you do not want to join, decline it or ignore this email.\n",
            link(settings, "invitations/accept")
        ),
        kind: "invitation",
        secret: secret(settings, to, token, expires_at),
    }
}

pub fn join_decided(to: &str, org_name: &str, approved: bool, reason: Option<&str>) -> NewEmail {
    let (subject, body) = if approved {
        (
            format!("Your request to join {org_name} was approved"),
            format!("Hello,\n\nYour request to join \"{org_name}\" on KIOPS was approved. You are now a member.\n"),
        )
    } else {
        (
            format!("Your request to join {org_name} was declined"),
            format!(
                "Hello,\n\nYour request to join \"{org_name}\" on KIOPS was declined.{}\n\nYou may request again later.\n",
                reason.map(|r| format!("\nReason: {r}")).unwrap_or_default()
            ),
        )
    };
    NewEmail {
        to: to.to_string(),
        subject,
        body,
        kind: if approved {
            "join_approved"
        } else {
            "join_rejected"
        },
        secret: None,
    }
}

pub const RESET_TTL_MINUTES: i64 = 60;

pub fn password_reset(
    settings: &MailSettings,
    to: &str,
    token: &str,
    expires_at: i64,
    by_manager: bool,
) -> NewEmail {
    NewEmail {
        to: to.to_string(),
        subject: "Reset your KIOPS password".into(),
        body: format!(
            "Hello,\n\n{}\n\nSet a new password:\n{}\n\nReset token: {SECRET_MARK}\n\n\
             The link is valid for {RESET_TTL_MINUTES} minutes and can be used once. \
             If you did not ask for this, ignore this email: your password stays as it is.\n",
            if by_manager {
                "A Manager of your organization sent you a link to reset your KIOPS password."
            } else {
                "Someone (hopefully you) asked to reset the password of your KIOPS account."
            },
            link(settings, "reset-password")
        ),
        kind: "password_reset",
        secret: secret(settings, to, token, expires_at),
    }
}

pub const VERIFICATION_TTL_HOURS: i64 = 24;

pub fn email_verification(
    settings: &MailSettings,
    to: &str,
    token: &str,
    expires_at: i64,
) -> NewEmail {
    NewEmail {
        to: to.to_string(),
        subject: "Confirm your email address for KIOPS".into(),
        body: format!(
            "Hello,\n\nSomeone (hopefully you) signed up to KIOPS with this email address.\n\n\
             Confirm it:\n{}\n\n\
             Verification token: {SECRET_MARK}\n\n\
             The link is valid for {VERIFICATION_TTL_HOURS} hours and can be used once. Until it is \
             used, a Manager cannot approve your request to join an organization. \
             If you did not sign up, ignore this email.\n",
            link(settings, "verify-email")
        ),
        kind: "email_verification",
        secret: secret(settings, to, token, expires_at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> MailSettings {
        MailSettings {
            public_url: "https://console.example/".into(),
            from: "KIOPS <noreply@example>".into(),
            smtp_url: None,
            seal: super::super::seal::SecretSeal::none(),
        }
    }

    #[test]
    fn the_stored_text_never_holds_the_token() {
        let m = password_reset(&settings(), "a@b.c", "kp_SECRET", 5, false);
        assert!(!m.body.contains("kp_SECRET"));
        assert_eq!(
            m.secret.as_ref().map(|s| s.token.as_str()),
            Some("kp_SECRET")
        );
        let sent = render(&m.body, Some("kp_SECRET")).expect("render");
        assert!(sent.contains("https://console.example/reset-password?token=kp_SECRET"));
        assert!(sent.contains("Reset token: kp_SECRET"));
        assert!(!sent.contains(SECRET_MARK));
        assert!(render(&m.body, None).is_err());
        let plain = join_decided("a@b.c", "Org", true, None);
        assert_eq!(
            render(&plain.body, None).as_deref(),
            Ok(plain.body.as_str())
        );
    }
}
