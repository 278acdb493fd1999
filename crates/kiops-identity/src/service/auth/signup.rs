//! SignUp (R7): the account, and with an organization a PENDING join
//! request, in one transaction.

use super::verification::queue_verification_email;
use crate::app::App;
use crate::domain::audit::{Actor, RequestMeta};
use crate::domain::error::Violations;
use crate::domain::join_request::JoinRequestView;
use crate::domain::{password_policy, validate, DomainError};
use crate::store::join_requests;
use crate::store::logins::actor_of;
use crate::store::organizations;
use crate::store::users::{self, User};
use kiops_proto::v1::SignUpRequest;

/// The new account, its join request if one was asked for, and the time
/// they were made at.
pub struct SignedUp {
    pub user: User,
    pub join_request: Option<JoinRequestView>,
    pub now: i64,
}

/// An unknown organization is refused before anything is created.
pub async fn sign_up(
    app: App,
    meta: RequestMeta,
    r: SignUpRequest,
) -> Result<SignedUp, DomainError> {
    let mut v = Violations::new();
    let email = v.take(validate::email("email", &r.email));
    let name = v.take(validate::name("name", &r.name));
    v.check(password_policy::check("password", &r.password, &email));
    let org = match r.organization_id.as_deref() {
        Some(o) if !o.is_empty() => Some(v.take(validate::id("organization_id", o))),
        _ => None,
    };
    v.into_result()?;
    app.throttle.check(&meta.peer, None)?;
    if let Some(o) = &org {
        if organizations::find(app.store.conn(), o).await?.is_none() {
            return Err(DomainError::not_found("organization"));
        }
    }
    let password_hash = app.hasher.hash(r.password).await?;
    let now = app.clock.now_ms();
    let tx = app.store.begin_write().await?;
    let user = users::create(
        &tx,
        &meta,
        Actor::Anonymous,
        users::NewUser {
            email,
            name,
            password_hash,
            platform_admin: false,
            // Unproven until the emailed link is used (H8).
            email_verified: false,
        },
        now,
    )
    .await?;
    let actor = actor_of(&user);
    queue_verification_email(&app, &tx, &meta, actor.clone(), &user, false, now).await?;
    let join_request = match &org {
        Some(o) => {
            let j = join_requests::create(&tx, &meta, actor, &user.id, o, now).await?;
            join_requests::row(&tx, &j.id).await?
        }
        None => None,
    };
    tx.commit().await?;
    app.mail_wakeup.notify_one();
    Ok(SignedUp {
        user,
        join_request,
        now,
    })
}
