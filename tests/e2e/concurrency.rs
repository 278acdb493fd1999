//! R5 under concurrency: Managers demoting or removing each other at the same
//! moment never leave an organization without a Manager, on either backend.

use crate::both_backends;
use crate::support::*;
use kiops_proto::v1::*;

both_backends!(two_managers_demote_or_remove_each_other, many_managers_race);

const ROUNDS: usize = 8;

async fn two_managers_demote_or_remove_each_other(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let mut both_won = 0;
    for round in 0..ROUNDS {
        let org = s.create_org(&admin, "Race", &format!("race-{round}")).await;
        let (a_id, a) = s.user(&format!("a{round}@race.io")).await;
        let (b_id, b) = s.user(&format!("b{round}@race.io")).await;
        s.add_member(&admin, &org, &a_id, Role::Manager).await;
        s.add_member(&admin, &org, &b_id, Role::Manager).await;
        // Separate connections, so the two requests really run in parallel.
        let mut ma = s.members().await;
        let mut mb = s.members().await;
        let remove = round % 2 == 1;
        let (ra, rb) = if remove {
            tokio::join!(
                ma.remove_member(authed(
                    RemoveMemberRequest {
                        organization_id: org.clone(),
                        user_id: b_id.clone()
                    },
                    &a
                )),
                mb.remove_member(authed(
                    RemoveMemberRequest {
                        organization_id: org.clone(),
                        user_id: a_id.clone()
                    },
                    &b
                )),
            )
        } else {
            let (x, y) = tokio::join!(
                ma.change_role(authed(
                    ChangeRoleRequest {
                        organization_id: org.clone(),
                        user_id: b_id.clone(),
                        role: Role::Member as i32
                    },
                    &a
                )),
                mb.change_role(authed(
                    ChangeRoleRequest {
                        organization_id: org.clone(),
                        user_id: a_id.clone(),
                        role: Role::Member as i32
                    },
                    &b
                )),
            );
            (
                x.map(|_| tonic::Response::new(RemoveMemberResponse {})),
                y.map(|_| tonic::Response::new(RemoveMemberResponse {})),
            )
        };
        let wins = [ra.is_ok(), rb.is_ok()].iter().filter(|w| **w).count();
        if wins != 1 {
            both_won += 1;
        }
        for r in [&ra, &rb] {
            if let Err(e) = r {
                // The loser sees either that it is no longer a Manager (demoted
                // or removed first) or that the organization would lose its
                // last Manager.
                assert!(
                    matches!(
                        e.code(),
                        tonic::Code::PermissionDenied
                            | tonic::Code::NotFound
                            | tonic::Code::FailedPrecondition
                    ),
                    "round {round}: unexpected {e:?}"
                );
            }
        }
        assert_eq!(
            s.manager_count(&admin, &org).await,
            1,
            "round {round} ({})",
            if remove { "remove" } else { "demote" }
        );
    }
    assert_eq!(
        both_won, 0,
        "exactly one of the two requests wins every round"
    );
    println!(
        "R5 race ({backend:?}): {ROUNDS} rounds, exactly one winner each, one Manager left each"
    );
}

async fn many_managers_race(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let org = s.create_org(&admin, "Crowd", "crowd").await;
    let mut managers = vec![];
    for i in 0..5 {
        let (id, token) = s.user(&format!("m{i}@crowd.io")).await;
        s.add_member(&admin, &org, &id, Role::Manager).await;
        managers.push((id, token));
    }
    let mut calls = vec![];
    for (i, (_, token)) in managers.iter().enumerate() {
        for (j, (target, _)) in managers.iter().enumerate() {
            if i == j {
                continue;
            }
            let mut client = s.members().await;
            let (org, target, token) = (org.clone(), target.clone(), token.clone());
            calls.push(tokio::spawn(async move {
                if (i + j) % 2 == 0 {
                    client
                        .remove_member(authed(
                            RemoveMemberRequest {
                                organization_id: org,
                                user_id: target,
                            },
                            &token,
                        ))
                        .await
                        .map(|_| ())
                } else {
                    client
                        .change_role(authed(
                            ChangeRoleRequest {
                                organization_id: org,
                                user_id: target,
                                role: Role::Member as i32,
                            },
                            &token,
                        ))
                        .await
                        .map(|_| ())
                }
            }));
        }
    }
    let n = calls.len();
    for c in calls {
        if let Err(e) = c.await.expect("join") {
            assert_ne!(e.code(), tonic::Code::Internal, "{e:?}");
            assert_ne!(e.code(), tonic::Code::Unknown, "{e:?}");
        }
    }
    let managers_left = s.manager_count(&admin, &org).await;
    assert!(managers_left >= 1, "organization lost all its Managers");
    println!("R5 crowd ({backend:?}): {n} concurrent demotions/removals, {managers_left} Manager(s) left");
}
