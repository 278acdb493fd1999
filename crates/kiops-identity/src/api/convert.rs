//! Store rows → proto messages.

use crate::domain::model::UserStatus;
use crate::domain::session::SessionInfo;
use crate::domain::user::User;
use kiops_proto::v1;

pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// Sessions as shown to `current_session`'s holder.
pub fn sessions(list: Vec<SessionInfo>, current_session: Option<&str>) -> Vec<v1::Session> {
    list.into_iter()
        .map(|s| v1::Session {
            current: current_session == Some(s.id.as_str()),
            create_time: Some(timestamp(s.created_at)),
            last_use_time: Some(timestamp(s.last_used_at)),
            expire_time: Some(timestamp(s.expires_at)),
            session_id: s.id,
            user_agent: s.user_agent,
            peer_address: s.peer_address,
            amr: s.amr,
        })
        .collect()
}

pub fn user(u: &User, now_ms: i64) -> v1::User {
    v1::User {
        user_id: u.id.clone(),
        email: u.email.clone(),
        name: u.name.clone(),
        phone: u.phone.clone().unwrap_or_default(),
        avatar_url: u.avatar_url.clone().unwrap_or_default(),
        status: u.status_at(now_ms).proto_number(),
        platform_admin: u.platform_admin,
        create_time: Some(timestamp(u.created_at)),
        email_verified: u.email_verified,
    }
}

use crate::domain::membership::{Member, Membership, Template};
use crate::domain::model::{effective_permissions, Role};
use crate::domain::organization::Organization;
use kiops_token::Permission;

pub fn organization(o: &Organization) -> v1::Organization {
    v1::Organization {
        organization_id: o.id.clone(),
        name: o.name.clone(),
        code: o.code.clone(),
        description: o.description.clone(),
        create_time: Some(timestamp(o.created_at_ms)),
        second_factor_required: o.second_factor_required,
    }
}

/// A CheckPermission answer (R31: why a policy said no).
pub fn permission_answer(
    a: crate::domain::membership::PermissionAnswer,
) -> v1::CheckPermissionResponse {
    v1::CheckPermissionResponse {
        allowed: a.allowed,
        denial_reason: a
            .denial_reason
            .and_then(|r| v1::ErrorReason::from_str_name(&format!("ERROR_REASON_{r}")))
            .unwrap_or(v1::ErrorReason::Unspecified) as i32,
    }
}

fn perm_numbers(perms: &[Permission]) -> Vec<i32> {
    perms.iter().map(|p| p.proto_number()).collect()
}

fn role_number(r: Role) -> i32 {
    r.proto_number()
}

pub fn member(m: &Member, now_ms: i64) -> v1::Member {
    let status = UserStatus::derive(m.status, m.locked_until_ms, now_ms);
    v1::Member {
        user_id: m.user_id.clone(),
        email: m.email.clone(),
        name: m.name.clone(),
        role: role_number(m.role),
        platform_admin: m.platform_admin,
        status: status.proto_number(),
        permissions: perm_numbers(&effective_permissions(
            m.platform_admin,
            Some(m.role),
            m.permissions,
        )),
        granted_permissions: perm_numbers(&Permission::from_bits(m.permissions)),
        join_time: Some(timestamp(m.joined_at_ms)),
    }
}

pub fn membership(m: &Membership, org: &Organization, platform_admin: bool) -> v1::Membership {
    v1::Membership {
        organization: Some(organization(org)),
        role: role_number(m.role),
        permissions: perm_numbers(&m.effective(platform_admin)),
        granted_permissions: perm_numbers(&Permission::from_bits(m.permissions)),
        join_time: Some(timestamp(m.joined_at_ms)),
    }
}

pub fn template(t: &Template) -> v1::PermissionTemplate {
    v1::PermissionTemplate {
        template_id: t.id.clone(),
        organization_id: t.organization_id.clone(),
        name: t.name.clone(),
        permissions: perm_numbers(&Permission::from_bits(t.permissions)),
        create_time: Some(timestamp(t.created_at_ms)),
        update_time: Some(timestamp(t.updated_at_ms)),
    }
}

use crate::domain::invitation::{Delivery, DeliveryState, Invitation, InvitationStatus};
use crate::domain::join_request::{JoinRequestStatus, JoinRequestView};

fn invitation_status(s: InvitationStatus) -> v1::InvitationStatus {
    match s {
        InvitationStatus::Pending => v1::InvitationStatus::Pending,
        InvitationStatus::Accepted => v1::InvitationStatus::Accepted,
        InvitationStatus::Expired => v1::InvitationStatus::Expired,
        InvitationStatus::Rejected => v1::InvitationStatus::Rejected,
        InvitationStatus::Revoked => v1::InvitationStatus::Revoked,
    }
}

/// An invitation as the service read it (`Invitation::seen_at`).
pub fn invitation(i: &Invitation) -> v1::Invitation {
    v1::Invitation {
        invitation_id: i.id.clone(),
        organization_id: i.organization_id.clone(),
        email: i.email.clone(),
        role: role_number(i.role),
        status: invitation_status(i.status) as i32,
        inviter_id: i.inviter_id.clone(),
        create_time: Some(timestamp(i.created_at_ms)),
        expire_time: Some(timestamp(i.expires_at_ms)),
        name: i.name.clone().unwrap_or_default(),
        permissions: perm_numbers(&Permission::from_bits(i.permissions)),
        template_id: i.template_id.clone().unwrap_or_default(),
        delivery: i.delivery.as_ref().map(delivery),
    }
}

fn delivery(d: &Delivery) -> v1::InvitationDelivery {
    let state = match d.state {
        DeliveryState::Queued => v1::DeliveryState::Queued,
        DeliveryState::Sent => v1::DeliveryState::Sent,
        DeliveryState::Failed => v1::DeliveryState::Failed,
    };
    v1::InvitationDelivery {
        state: state as i32,
        attempts: d.attempts,
        last_error: d.last_error.clone().unwrap_or_default(),
        last_attempt_time: d.last_attempt_at.map(timestamp),
        next_attempt_time: d.next_attempt_at.map(timestamp),
        sent_time: d.sent_at.map(timestamp),
    }
}

fn join_request_status(s: JoinRequestStatus) -> v1::JoinRequestStatus {
    match s {
        JoinRequestStatus::Pending => v1::JoinRequestStatus::Pending,
        JoinRequestStatus::Approved => v1::JoinRequestStatus::Approved,
        JoinRequestStatus::Rejected => v1::JoinRequestStatus::Rejected,
    }
}

pub fn join_request(r: &JoinRequestView) -> v1::JoinRequest {
    v1::JoinRequest {
        join_request_id: r.id.clone(),
        user_id: r.user_id.clone(),
        email: r.email.clone(),
        name: r.name.clone(),
        organization_id: r.organization_id.clone(),
        status: join_request_status(r.status) as i32,
        request_time: Some(timestamp(r.requested_at_ms)),
        decide_time: r.decided_at_ms.map(timestamp),
        decided_by: r.decided_by.clone().unwrap_or_default(),
        reason: r.reason.clone().unwrap_or_default(),
        email_verified: r.email_verified,
    }
}
