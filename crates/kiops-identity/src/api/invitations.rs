//! `InvitationService` (R9).

use super::context::{self, request_meta};
use super::convert;
use crate::app::App;
use crate::auth::secrets::{hash_token, random_token};
use crate::domain::error::{reason, Violations};
use crate::domain::model::Role;
use crate::domain::page_token;
use crate::domain::{access, password_policy, validate, Caller, DomainError};
use crate::mail::messages::{self, INVITATION_TTL_DAYS};
use crate::store::audit::{Actor, RequestMeta};
use crate::store::invitations::{self, Invitation, NewInvitation, Status};
use crate::store::memberships::{self, parse_role};
use crate::store::users::{self, NewUser};
use crate::store::{organizations, outbox};
use kiops_proto::v1::invitation_service_server::InvitationService;
use kiops_proto::v1::{
    AcceptInvitationRequest, AcceptInvitationResponse, CreateInvitationRequest,
    CreateInvitationResponse, DeclineInvitationRequest, DeclineInvitationResponse,
    ListInvitationsRequest, ListInvitationsResponse, Member, ResendInvitationRequest,
    ResendInvitationResponse, RevokeInvitationRequest, RevokeInvitationResponse,
};
use serde_json::json;
use subtle::ConstantTimeEq;
use tonic::{Request, Response, Status as GrpcStatus};

pub const INVITATION_TOKEN_PREFIX: &str = "ki";
const TTL_MS: i64 = INVITATION_TTL_DAYS * 24 * 3600 * 1000;

pub struct InvitationApi {
    app: App,
}

impl InvitationApi {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

/// Why an invitation cannot be used now.
fn unusable(i: &Invitation, now: i64) -> DomainError {
    match invitations::status_of(i, now) {
        Status::Expired => {
            DomainError::precondition(reason::INVITATION_EXPIRED, "the invitation has expired")
        }
        s => {
            let mut e = DomainError::precondition(
                reason::NOT_PENDING,
                format!("the invitation is {}", s.name()),
            );
            if let DomainError::FailedPrecondition { metadata, .. } = &mut e {
                metadata.insert("status".into(), s.name().to_uppercase());
            }
            e
        }
    }
}

impl App {
    /// Looks up an invitation by its secret token. The database finds the row
    /// by hash; the stored hash is then compared in constant time as well.
    async fn invitation_by_token(&self, token: &str) -> Result<Invitation, DomainError> {
        validate::opaque_token("token", token)
            .map_err(|e| DomainError::InvalidArgument(vec![e]))?;
        let hash = hash_token(token);
        let inv = invitations::find_by_token_hash(self.store.conn(), &hash)
            .await?
            .ok_or_else(|| DomainError::not_found("invitation"))?;
        if !bool::from(inv.token_hash.as_bytes().ct_eq(hash.as_bytes())) {
            return Err(DomainError::not_found("invitation"));
        }
        Ok(inv)
    }

    /// The invitation `id` for a Manager of its organization; NOT_FOUND for
    /// anyone who cannot see that organization (R4).
    async fn invitation_for_manager(
        &self,
        tx: &crate::store::WriteTx,
        caller: &Caller,
        id: &str,
    ) -> Result<Invitation, DomainError> {
        let inv = invitations::find(tx, id)
            .await?
            .ok_or_else(|| DomainError::not_found("invitation"))?;
        organizations::lock(tx, &inv.organization_id).await?;
        // Read again under the lock: a resend that committed while we waited
        // for it has changed the token.
        let inv = invitations::find(tx, id)
            .await?
            .ok_or_else(|| DomainError::not_found("invitation"))?;
        let role = memberships::role_of(tx, &inv.organization_id, &caller.user_id).await?;
        if !caller.platform_admin && role.is_none() {
            return Err(DomainError::not_found("invitation"));
        }
        access::require_manager(caller, role)?;
        Ok(inv)
    }

    async fn create_invitation(
        &self,
        meta: &RequestMeta,
        caller: &Caller,
        r: CreateInvitationRequest,
    ) -> Result<(Invitation, i64), DomainError> {
        let mut v = Violations::new();
        let org = v.take(validate::id("organization_id", &r.organization_id));
        let email = v.take(validate::email("email", &r.email));
        let role = v.take(crate::service::parse::role("role", r.role).map(Some));
        v.into_result()?;
        let role = role.unwrap_or(Role::Member);
        let now = self.clock.now_ms();
        let tx = self.store.begin_write().await?;
        let o = organizations::lock(&tx, &org).await?;
        let caller_role = memberships::role_of(&tx, &org, &caller.user_id).await?;
        access::require_manager(caller, caller_role)?;
        access::require_may_grant(caller, role)?;
        let o = o.ok_or_else(|| DomainError::not_found("organization"))?;
        if let Some(existing) = users::find_by_email(&tx, &email).await? {
            if memberships::find(&tx, &org, &existing.id).await?.is_some() {
                return Err(DomainError::exists(
                    reason::ALREADY_MEMBER,
                    "this person is already a member",
                ));
            }
        }
        if invitations::find_live(&tx, &org, &email, now)
            .await?
            .is_some()
        {
            return Err(DomainError::exists(
                reason::INVITATION_PENDING,
                "a pending invitation for this email exists; resend it instead",
            ));
        }
        let token = random_token(INVITATION_TOKEN_PREFIX);
        let inv = invitations::create(
            &tx,
            meta,
            caller.actor(),
            NewInvitation {
                organization_id: org.clone(),
                email: email.clone(),
                role,
                inviter_id: caller.user_id.clone(),
                token_hash: hash_token(&token),
                ttl_ms: TTL_MS,
            },
            now,
        )
        .await?;
        outbox::enqueue(
            &tx,
            messages::invitation(
                &self.mail,
                &email,
                &o.name,
                &caller.email,
                role.as_str(),
                &token,
                inv.expires_at,
            ),
            now,
        )
        .await?;
        tx.commit().await?;
        self.mail_wakeup.notify_one();
        Ok((inv, now))
    }

    async fn resend_invitation(
        &self,
        meta: &RequestMeta,
        caller: &Caller,
        id: &str,
    ) -> Result<(Invitation, i64), DomainError> {
        let id =
            validate::id("invitation_id", id).map_err(|e| DomainError::InvalidArgument(vec![e]))?;
        let now = self.clock.now_ms();
        let tx = self.store.begin_write().await?;
        let inv = self.invitation_for_manager(&tx, caller, &id).await?;
        access::require_may_grant(caller, parse_role(&inv.role))?;
        if !matches!(
            invitations::status_of(&inv, now),
            Status::Pending | Status::Expired
        ) {
            return Err(unusable(&inv, now));
        }
        let org = organizations::find(&tx, &inv.organization_id)
            .await?
            .ok_or_else(|| DomainError::not_found("invitation"))?;
        let token = random_token(INVITATION_TOKEN_PREFIX);
        let Some(after) = invitations::renew(
            &tx,
            meta,
            caller.actor(),
            &inv,
            hash_token(&token),
            TTL_MS,
            now,
        )
        .await?
        else {
            // An accept or decline committed since the read: it won.
            let current = invitations::find(&tx, &inv.id).await?.unwrap_or(inv);
            return Err(unusable(&current, now));
        };
        outbox::enqueue(
            &tx,
            messages::invitation(
                &self.mail,
                &inv.email,
                &org.name,
                &caller.email,
                &inv.role,
                &token,
                after.expires_at,
            ),
            now,
        )
        .await?;
        tx.commit().await?;
        self.mail_wakeup.notify_one();
        Ok((after, now))
    }

    async fn revoke_invitation(
        &self,
        meta: &RequestMeta,
        caller: &Caller,
        id: &str,
    ) -> Result<(Invitation, i64), DomainError> {
        let id =
            validate::id("invitation_id", id).map_err(|e| DomainError::InvalidArgument(vec![e]))?;
        let now = self.clock.now_ms();
        let tx = self.store.begin_write().await?;
        let inv = self.invitation_for_manager(&tx, caller, &id).await?;
        if !invitations::transition(&tx, &inv.id, Status::Revoked, false, None, now).await? {
            return Err(unusable(&inv, now));
        }
        invitations::audit_transition(
            &tx,
            meta,
            caller.actor(),
            &inv,
            "invitation.revoked",
            Status::Revoked,
            now,
        )
        .await?;
        let after = invitations::find(&tx, &inv.id).await?.unwrap_or(inv);
        tx.commit().await?;
        Ok((after, now))
    }

    async fn list_invitations(
        &self,
        caller: &Caller,
        r: ListInvitationsRequest,
    ) -> Result<ListInvitationsResponse, DomainError> {
        let mut v = Violations::new();
        let org = v.take(validate::id("organization_id", &r.organization_id));
        let size = v.take(validate::page_size("page_size", r.page_size));
        let status = match r.status {
            0 => None,
            n => {
                let s = Status::from_proto_number(n);
                if s.is_none() {
                    v.push(crate::domain::FieldViolation::new(
                        "status",
                        "unknown invitation status",
                    ));
                }
                s
            }
        };
        let fp = page_token::fingerprint(&["invitations", &org, &r.status.to_string()]);
        let key = self.tokens.page_key();
        let after = if r.page_token.is_empty() {
            None
        } else {
            v.take(page_token::decode(&key, &fp, &r.page_token).map(Some))
        };
        v.into_result()?;
        let conn = self.store.conn();
        let role = memberships::role_of(conn, &org, &caller.user_id).await?;
        access::require_manager(caller, role)?;
        let after =
            after.and_then(|k| Some((k.first()?.as_i64()?, k.get(1)?.as_str()?.to_string())));
        let now = self.clock.now_ms();
        let (rows, total) = invitations::list(conn, &org, status, after, size + 1, now).await?;
        let more = rows.len() as u64 > size;
        let rows: Vec<_> = rows.into_iter().take(size as usize).collect();
        let next_page_token = match (more, rows.last()) {
            (true, Some(l)) => {
                page_token::encode(&key, &fp, vec![json!(l.created_at), json!(l.id)])
            }
            _ => String::new(),
        };
        Ok(ListInvitationsResponse {
            invitations: rows.iter().map(|i| convert::invitation(i, now)).collect(),
            next_page_token,
            total_size: total as i64,
        })
    }

    async fn accept_invitation(
        &self,
        meta: &RequestMeta,
        caller: Option<Caller>,
        r: AcceptInvitationRequest,
    ) -> Result<(Member, String), DomainError> {
        self.throttle.check(&meta.peer, None)?;
        let inv = self.invitation_by_token(&r.token).await?;
        let now = self.clock.now_ms();
        if invitations::status_of(&inv, now) != Status::Pending {
            return Err(unusable(&inv, now));
        }
        let existing = users::find_by_email(self.store.conn(), &inv.email).await?;
        // Who accepts: the logged-in owner of the invited email, or, when no
        // account exists yet, an anonymous caller who sets name and password.
        let new_account = match (&existing, &caller) {
            (Some(u), Some(c)) if u.id == c.user_id => None,
            (_, Some(_)) => {
                return Err(DomainError::denied(
                    reason::INVITATION_EMAIL_MISMATCH,
                    "this invitation is for another email address",
                ))
            }
            (Some(_), None) => {
                // The account may be the one a concurrent accept of this
                // same invitation has just created (in the transaction that
                // used the invitation): then the invitation is what is no
                // longer usable, as the loser of that race must hear.
                let current = invitations::find(self.store.conn(), &inv.id).await?;
                if let Some(current) =
                    current.filter(|c| invitations::status_of(c, now) != Status::Pending)
                {
                    return Err(unusable(&current, now));
                }
                return Err(DomainError::unauthenticated(
                    reason::LOGIN_REQUIRED,
                    "an account with the invited email exists: log in as it to accept",
                ));
            }
            (None, None) => {
                let mut v = Violations::new();
                let name = v.take(validate::name("name", r.name.as_deref().unwrap_or("")));
                let password = r.password.clone().unwrap_or_default();
                v.check(password_policy::check("password", &password, &inv.email));
                v.into_result()?;
                let hash = self.hasher.hash(password).await?;
                Some((name, hash))
            }
        };
        let tx = self.store.begin_write().await?;
        // The organization row first, as resend and revoke take it: the
        // membership insert below needs a key-share lock on it, and taking
        // the invitation row before it deadlocked against a resend.
        organizations::lock(&tx, &inv.organization_id).await?;
        if !invitations::transition(
            &tx,
            &inv.id,
            Status::Accepted,
            true,
            Some(&inv.token_hash),
            now,
        )
        .await?
        {
            return Err(self.not_consumed(&tx, inv, now).await);
        }
        let (user_id, actor) = match (new_account, &existing) {
            (Some((name, password_hash)), _) => {
                let u = users::create(
                    &tx,
                    meta,
                    Actor::Anonymous,
                    NewUser {
                        email: inv.email.clone(),
                        name,
                        password_hash,
                        platform_admin: false,
                        // The link reached this address.
                        email_verified: true,
                    },
                    now,
                )
                .await?;
                let actor = Actor::User {
                    id: u.id.clone(),
                    email: u.email.clone(),
                };
                (u.id, actor)
            }
            (None, Some(u)) => {
                let actor = Actor::User {
                    id: u.id.clone(),
                    email: u.email.clone(),
                };
                // Accepting proves the address (issue 20 item 8).
                if users::mark_email_verified(&tx, &u.id, now).await? {
                    crate::store::audit::record(
                        &tx,
                        meta,
                        crate::store::audit::AuditEntry::new(
                            actor.clone(),
                            "user.email_verified",
                            "user",
                            &u.id,
                        )
                        .details(json!({"by": "invitation", "invitation_id": inv.id})),
                        now,
                    )
                    .await?;
                }
                (u.id.clone(), actor)
            }
            (None, None) => return Err(DomainError::internal("accept without account")),
        };
        invitations::audit_transition(
            &tx,
            meta,
            actor.clone(),
            &inv,
            "invitation.accepted",
            Status::Accepted,
            now,
        )
        .await?;
        memberships::add(
            &tx,
            meta,
            actor,
            &inv.organization_id,
            &user_id,
            parse_role(&inv.role),
            now,
        )
        .await?;
        // Read inside the transaction, as for every change's reply.
        let row = memberships::get_member(&tx, &inv.organization_id, &user_id)
            .await?
            .ok_or_else(|| DomainError::internal("membership just created"))?;
        tx.commit().await?;
        Ok((convert::member(&row, now), inv.organization_id))
    }

    /// Why the conditional UPDATE on (id, token hash) changed nothing: the
    /// invitation was decided or expired meanwhile, or a resend replaced the
    /// presented token (then it is unknown, as any dead token is).
    async fn not_consumed(
        &self,
        tx: &crate::store::WriteTx,
        inv: Invitation,
        now: i64,
    ) -> DomainError {
        match invitations::find(tx, &inv.id).await {
            Ok(Some(current)) if current.token_hash != inv.token_hash => {
                DomainError::not_found("invitation")
            }
            Ok(Some(current)) => unusable(&current, now),
            Ok(None) => DomainError::not_found("invitation"),
            Err(e) => e,
        }
    }

    async fn decline_invitation(&self, meta: &RequestMeta, token: &str) -> Result<(), DomainError> {
        let inv = self.invitation_by_token(token).await?;
        let now = self.clock.now_ms();
        let tx = self.store.begin_write().await?;
        if !invitations::transition(
            &tx,
            &inv.id,
            Status::Rejected,
            true,
            Some(&inv.token_hash),
            now,
        )
        .await?
        {
            return Err(self.not_consumed(&tx, inv, now).await);
        }
        invitations::audit_transition(
            &tx,
            meta,
            Actor::Anonymous,
            &inv,
            "invitation.declined",
            Status::Rejected,
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

#[tonic::async_trait]
impl InvitationService for InvitationApi {
    async fn create_invitation(
        &self,
        request: Request<CreateInvitationRequest>,
    ) -> Result<Response<CreateInvitationResponse>, GrpcStatus> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let (inv, now) = self.app.create_invitation(&meta, &caller, r).await?;
        Ok(Response::new(CreateInvitationResponse {
            invitation: Some(convert::invitation(&inv, now)),
        }))
    }

    async fn list_invitations(
        &self,
        request: Request<ListInvitationsRequest>,
    ) -> Result<Response<ListInvitationsResponse>, GrpcStatus> {
        let (_, caller, r) = context::start(&self.app, request).await?;
        Ok(Response::new(self.app.list_invitations(&caller, r).await?))
    }

    async fn resend_invitation(
        &self,
        request: Request<ResendInvitationRequest>,
    ) -> Result<Response<ResendInvitationResponse>, GrpcStatus> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let (inv, now) = self
            .app
            .resend_invitation(&meta, &caller, &r.invitation_id)
            .await?;
        Ok(Response::new(ResendInvitationResponse {
            invitation: Some(convert::invitation(&inv, now)),
        }))
    }

    async fn revoke_invitation(
        &self,
        request: Request<RevokeInvitationRequest>,
    ) -> Result<Response<RevokeInvitationResponse>, GrpcStatus> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let (inv, now) = self
            .app
            .revoke_invitation(&meta, &caller, &r.invitation_id)
            .await?;
        Ok(Response::new(RevokeInvitationResponse {
            invitation: Some(convert::invitation(&inv, now)),
        }))
    }

    async fn accept_invitation(
        &self,
        request: Request<AcceptInvitationRequest>,
    ) -> Result<Response<AcceptInvitationResponse>, GrpcStatus> {
        let meta = request_meta(&request);
        let caller = context::authenticate_optional(&self.app, &request).await?;
        let (member, organization_id) = self
            .app
            .accept_invitation(&meta, caller, request.into_inner())
            .await?;
        Ok(Response::new(AcceptInvitationResponse {
            member: Some(member),
            organization_id,
        }))
    }

    async fn decline_invitation(
        &self,
        request: Request<DeclineInvitationRequest>,
    ) -> Result<Response<DeclineInvitationResponse>, GrpcStatus> {
        let meta = request_meta(&request);
        self.app
            .decline_invitation(&meta, &request.into_inner().token)
            .await?;
        Ok(Response::new(DeclineInvitationResponse {}))
    }
}
