//! R16: a revocation event must date after every token minted from the
//! state it revokes, or an offline verifier accepts such a token for its
//! whole life. Here the revoking call waits behind a lock held from outside
//! while the clock moves on and a Refresh mints from the old state and
//! commits first; the event that follows must still cover that token.

use crate::support::sessions::*;
use crate::support::*;
use kiops_proto::v1::*;
use std::future::Future;
use std::time::Duration;
use tonic::Status;

crate::both_backends!(
    a_refresh_minted_while_a_removal_waits_is_refused_offline_in_that_org,
    a_refresh_minted_while_a_deactivation_waits_is_refused_offline,
);

/// One round: `revoke` is sent while `held` blocks it, the clock moves on
/// 1.5 s, a Refresh of `refresh_token` is sent, then the lock is released.
/// The Refresh's access token, when it got one.
async fn race<F>(s: &TestServer, held: Held, refresh_token: &str, revoke: F) -> Option<String>
where
    F: Future<Output = Result<(), Status>> + Send + 'static,
{
    let revoking = tokio::spawn(revoke);
    tokio::time::sleep(Duration::from_millis(150)).await;
    s.advance_clock(Duration::from_millis(1500));
    let mut auth = s.auth().await;
    let rt = refresh_token.to_string();
    let refreshing = tokio::spawn(async move {
        auth.refresh(RefreshRequest {
            refresh_token: rt,
            organization_id: None,
        })
        .await
        .map(|r| r.into_inner().access_token)
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    release(held).await;
    revoking.await.expect("task").expect("revoke");
    refreshing.await.expect("task").ok()
}

/// RemoveMember waiting for the membership row (PostgreSQL) or the write
/// lock (SQLite): a token minted meanwhile that still names the
/// organization is refused offline for it.
async fn a_refresh_minted_while_a_removal_waits_is_refused_offline_in_that_org(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let mut stream = watch(&s, &admin).await;
    let org = s.create_org(&admin, "Dating", "dating").await;
    let mut minted = Vec::new();
    for round in 0..4 {
        let email = format!("rm{round}@dating.test");
        let (user, _) = s.user(&email).await;
        s.add_member(&admin, &org, &user, Role::Member).await;
        let login = login_as(&s, "dating", &email).await;
        let held = hold_rows(
            &s,
            "SELECT user_id FROM memberships WHERE user_id = $1 FOR UPDATE",
            &user,
        )
        .await;
        let mut members = s.members().await;
        let (a, o, u) = (admin.clone(), org.clone(), user.clone());
        let removal = async move {
            let req = RemoveMemberRequest {
                organization_id: o,
                user_id: u,
            };
            members.remove_member(authed(req, &a)).await.map(|_| ())
        };
        if let Some(t) = race(&s, held, &login.refresh_token, removal).await {
            if token_orgs(&t).get(&org).is_some() {
                minted.push(t);
            }
        }
    }
    let evs = events(&mut stream, 4).await;
    assert_eq!(evs.len(), 4, "one event per removal: {evs:?}");
    // Not vacuous: on PostgreSQL every Refresh reads the membership before
    // the removal commits.
    if backend == Backend::Postgres {
        assert_eq!(minted.len(), 4, "refreshes that named the organization");
    }
    println!(
        "revocation_dating: {} tokens minted in the race",
        minted.len()
    );
    let v = verifier_with(&evs);
    for t in &minted {
        assert!(
            offline_revoked_in(&v, t, Some(&org)),
            "a removed member's token is accepted offline: iat {} s, events {evs:?}",
            token_claims(t)["iat"]
        );
    }
}

/// DeactivateUser waiting for the account's row (PostgreSQL) or the write
/// lock (SQLite): a token minted meanwhile is refused offline.
async fn a_refresh_minted_while_a_deactivation_waits_is_refused_offline(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let mut stream = watch(&s, &admin).await;
    let mut minted = Vec::new();
    for round in 0..4 {
        let email = format!("off{round}@dating.test");
        let (user, _) = s.user(&email).await;
        let login = login_as(&s, "dating", &email).await;
        let held = hold_rows(&s, "SELECT id FROM users WHERE id = $1 FOR UPDATE", &user).await;
        let mut users = s.users().await;
        let (a, u) = (admin.clone(), user.clone());
        let deactivation = async move {
            let req = DeactivateUserRequest { user_id: u };
            users.deactivate_user(authed(req, &a)).await.map(|_| ())
        };
        if let Some(t) = race(&s, held, &login.refresh_token, deactivation).await {
            minted.push(t);
        }
    }
    let evs = events(&mut stream, 4).await;
    assert_eq!(evs.len(), 4, "one event per deactivation: {evs:?}");
    if backend == Backend::Postgres {
        assert_eq!(minted.len(), 4, "refreshes that read the active account");
    }
    println!(
        "revocation_dating: {} tokens minted in the race",
        minted.len()
    );
    let v = verifier_with(&evs);
    for t in &minted {
        assert!(
            offline_revoked(&v, t),
            "a deactivated account's token is accepted offline: iat {} s, events {evs:?}",
            token_claims(t)["iat"]
        );
    }
}
