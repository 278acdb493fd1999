//! Red team, issue 24 invitations that arrive ready (R3, R9, R32): what an
//! SMTP server answers must not carry the invitation's link into
//! ListInvitations, the database or the log.

use crate::invitations_ready::{
    count, delivery, invite, listed, org_with_manager, req, start, wait_state,
};
use crate::support::*;
use kiops_proto::v1::*;

crate::both_backends!(
    an_smtp_answer_quoting_the_link_is_not_kept,
    a_deferral_quoting_the_link_is_not_kept,
);

/// The sink refuses the message after DATA with `code` and an answer that
/// quotes the link: the failure is shown, the link is not.
async fn refused_quoting_the_link(backend: Backend, code: &'static str, state: DeliveryState) {
    let (s, sink) = start(backend).await;
    let (_, org, _, mgr) = org_with_manager(&s, "echo").await;
    sink.refuse_data_quoting_link("victim@echo.test", code);
    let inv = invite(&s, req(&org, "victim@echo.test"), &mgr)
        .await
        .expect("invite");
    let d = wait_state(&s, &org, &mgr, &inv.invitation_id, state).await;
    // The sink's answer is what was kept (the attack reached the store)...
    assert!(
        d.last_error.contains(code) && d.last_error.contains("content refused"),
        "{d:?}"
    );
    // ...but not the link's single-use token.
    assert!(
        !d.last_error.contains("token=ki") && !d.last_error.contains("ki_"),
        "the invitation link is shown to ListInvitations: {d:?}"
    );
    let listed = delivery(&listed(&s, &org, &mgr, &inv.invitation_id).await);
    assert!(!listed.last_error.contains("ki_"), "{listed:?}");
    assert_eq!(
        count(
            &s,
            "SELECT COUNT(*) AS n FROM email_outbox WHERE last_error LIKE '%token=k%'",
        )
        .await,
        0,
        "the invitation link is stored in clear"
    );
    assert!(
        !s.logs().contains("token=ki"),
        "the invitation link is in the server log"
    );
}

async fn an_smtp_answer_quoting_the_link_is_not_kept(backend: Backend) {
    refused_quoting_the_link(backend, "550", DeliveryState::Failed).await;
}

async fn a_deferral_quoting_the_link_is_not_kept(backend: Backend) {
    refused_quoting_the_link(backend, "451", DeliveryState::Failed).await;
}
