//! Second red-team pass on issue 20 (items 2, 3, 8, 9, 10a, 10c, 10d):
//! ways into an account. A test that fails here is a break; the comment on
//! each says what it attacks.

use crate::support::smtp::SmtpSink;
use crate::support::*;
use kiops_proto::v1::*;
use std::time::Duration;

crate::both_backends!(change_password_in_flight_cannot_undo_a_password_reset,);

async fn start_with_mail(backend: Backend) -> (TestServer, SmtpSink) {
    let sink = SmtpSink::start().await;
    let s = TestServer::start_with(
        backend,
        ServerOptions {
            extra_args: vec![
                "--smtp-url".into(),
                sink.url(),
                "--public-url".into(),
                "https://console.kiops.test".into(),
            ],
            ..Default::default()
        },
    )
    .await;
    (s, sink)
}

/// Item 2 surroundings (ChangePassword's `verify_current_password`) and the
/// promise "a password reset revokes every session". An attacker holds the
/// victim's password and a session. The victim notices and resets the
/// password by email; the reset revokes the attacker's session. But a
/// ChangePassword the attacker started just before (verify the current
/// password, then hash the new one: two argon2 runs) writes its new hash
/// unconditionally after the reset committed: the attacker's password
/// replaces the one the victim just chose, the victim is locked out and the
/// attacker logs in. Order-free assertion: when the reset succeeded, the
/// attacker's new password must not open the account (a ChangePassword
/// that committed before the reset is overwritten by it; one that comes
/// after must be refused, its session and its verified hash being dead).
async fn change_password_in_flight_cannot_undo_a_password_reset(backend: Backend) {
    const ATTACKER: &str = "the attacker chose this passphrase 7";
    const VICTIM: &str = "the victim chose this new passphrase 9";
    let (s, sink) = start_with_mail(backend).await;
    let mut broke = Vec::new();
    for round in 0..16u64 {
        let email = format!("victim{round}@example.com");
        s.create_user(&email, "Victim", PASSWORD).await;
        // The attacker's session, made with the stolen password.
        let stolen = s.login(&email, PASSWORD).await.expect("attacker login");
        s.auth()
            .await
            .request_password_reset(RequestPasswordResetRequest {
                email: email.clone(),
            })
            .await
            .expect("reset request");
        let token = sink
            .wait_for(&email, 1)
            .await
            .token("kp")
            .expect("reset token");
        let change = async {
            s.users()
                .await
                .change_password(authed(
                    ChangePasswordRequest {
                        current_password: PASSWORD.into(),
                        new_password: ATTACKER.into(),
                    },
                    &stolen.access_token,
                ))
                .await
        };
        let reset = async {
            // From "together" to "while the attacker's new hash is computed".
            tokio::time::sleep(Duration::from_millis(round * 8)).await;
            s.auth()
                .await
                .reset_password(ResetPasswordRequest {
                    token: token.clone(),
                    new_password: VICTIM.into(),
                })
                .await
        };
        let (changed, reset) = tokio::join!(change, reset);
        reset.expect("the victim's reset");
        let attacker_in = s.login(&email, ATTACKER).await.is_ok();
        let victim_in = s.login(&email, VICTIM).await.is_ok();
        if attacker_in || !victim_in {
            broke.push(format!(
                "round {round}: change_password={:?}, attacker logs in={attacker_in}, \
                 victim logs in={victim_in}",
                changed.map(drop).map_err(|e| e.code())
            ));
        }
    }
    assert!(
        broke.is_empty(),
        "a ChangePassword in flight overwrote a completed password reset:\n{}",
        broke.join("\n")
    );
}
