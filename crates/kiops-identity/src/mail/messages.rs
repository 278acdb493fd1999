//! The texts of the emails. Plain text only; every link also shows the bare
//! token so it can be used from grpcurl.

use super::MailSettings;
use crate::store::outbox::NewEmail;

pub const INVITATION_TTL_DAYS: i64 = 7;

fn link(settings: &MailSettings, path: &str, token: &str) -> String {
    format!(
        "{}/{path}?token={token}",
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
) -> NewEmail {
    NewEmail {
        to: to.to_string(),
        subject: format!("You are invited to join {org_name} on KIOPS"),
        body: format!(
            "Hello,\n\n{inviter} invited you to join the organization \"{org_name}\" on KIOPS as {role}.\n\n\
             Accept the invitation:\n{}\n\n\
             Invitation token: {token}\n\n\
             The invitation is valid for {INVITATION_TTL_DAYS} days and can be used once.\n\
             If you do not want to join, decline it or ignore this email.\n",
            link(settings, "invitations/accept", token)
        ),
        kind: "invitation",
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
    }
}

pub const RESET_TTL_MINUTES: i64 = 60;

pub fn password_reset(
    settings: &MailSettings,
    to: &str,
    token: &str,
    by_manager: bool,
) -> NewEmail {
    NewEmail {
        to: to.to_string(),
        subject: "Reset your KIOPS password".into(),
        body: format!(
            "Hello,\n\n{}\n\nSet a new password:\n{}\n\nReset token: {token}\n\n\
             The link is valid for {RESET_TTL_MINUTES} minutes and can be used once. \
             If you did not ask for this, ignore this email: your password stays as it is.\n",
            if by_manager {
                "A Manager of your organization sent you a link to reset your KIOPS password."
            } else {
                "Someone (hopefully you) asked to reset the password of your KIOPS account."
            },
            link(settings, "reset-password", token)
        ),
        kind: "password_reset",
    }
}
