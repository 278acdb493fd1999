//! Service accounts (R25 of docs/rules.md): machine identities owned by one
//! organization or by the platform, holding scopes instead of roles. Who
//! manages them, what a service caller may reach, and the caller of a
//! service token from current state.

use super::error::{reason, DomainError, FieldViolation};
use super::model::{Caller, Role};
use kiops_token::scope;

type Result<T = ()> = std::result::Result<T, DomainError>;

/// At most this many credentials per account: enough to rotate, few enough
/// that a secret is compared with each of them.
pub const MAX_CREDENTIALS: usize = 10;

/// What a service token may ask this server (`kiops_token::scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    PermissionsCheck,
    RevocationsWatch,
    MembersRead,
    UsersRead,
    AuditRead,
}

impl Scope {
    pub const ALL: [Scope; 5] = [
        Scope::PermissionsCheck,
        Scope::RevocationsWatch,
        Scope::MembersRead,
        Scope::UsersRead,
        Scope::AuditRead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::PermissionsCheck => scope::PERMISSIONS_CHECK,
            Scope::RevocationsWatch => scope::REVOCATIONS_WATCH,
            Scope::MembersRead => scope::MEMBERS_READ,
            Scope::UsersRead => scope::USERS_READ,
            Scope::AuditRead => scope::AUDIT_READ,
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Sorted, without duplicates; an unknown name is a field violation.
    pub fn parse_list(
        field: &str,
        names: &[String],
    ) -> std::result::Result<Vec<Scope>, FieldViolation> {
        let mut out = Vec::with_capacity(names.len());
        for (i, n) in names.iter().enumerate() {
            let s = Scope::parse(n).ok_or_else(|| {
                FieldViolation::new(
                    format!("{field}[{i}]"),
                    format!(
                        "unknown scope; one of {}",
                        Scope::ALL.map(Scope::as_str).join(", ")
                    ),
                )
            })?;
            out.push(s);
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Stored and in tokens: space-separated names.
    pub fn join(scopes: &[Scope]) -> String {
        scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Lenient reading of the stored list: unknown names are dropped, so a
    /// scope removed from the code grants nothing.
    pub fn split(stored: &str) -> Vec<Scope> {
        let mut v: Vec<Scope> = stored
            .split_ascii_whitespace()
            .filter_map(Scope::parse)
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// Who owns a service account: it acts only inside its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    Platform,
    Organization(String),
}

impl Owner {
    /// From the stored/proto form: empty is the platform.
    pub fn from_org_id(org: Option<&str>) -> Owner {
        match org {
            Some(o) if !o.is_empty() => Owner::Organization(o.to_string()),
            _ => Owner::Platform,
        }
    }

    pub fn org_id(&self) -> Option<&str> {
        match self {
            Owner::Platform => None,
            Owner::Organization(o) => Some(o),
        }
    }

    /// Whether an account of this owner may act in `organization_id`.
    pub fn covers(&self, organization_id: &str) -> bool {
        match self {
            Owner::Platform => true,
            Owner::Organization(o) => o == organization_id,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountStatus {
    Active,
    Disabled,
}

impl AccountStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountStatus::Active => "active",
            AccountStatus::Disabled => "disabled",
        }
    }

    /// Strict: an unknown stored status is a bug, not an active account.
    pub fn parse(s: &str) -> Result<AccountStatus> {
        match s {
            "active" => Ok(AccountStatus::Active),
            "disabled" => Ok(AccountStatus::Disabled),
            other => Err(DomainError::internal(format!(
                "unknown service account status {other:?}"
            ))),
        }
    }
}

/// A service account as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    pub id: String,
    pub name: String,
    pub description: String,
    pub owner: Owner,
    pub scopes: Vec<Scope>,
    pub status: AccountStatus,
    /// URI or DNS SAN a token exchange must present, when set.
    pub certificate_identity: Option<String>,
    pub created_by: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    Key,
    Secret,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Key => "key",
            CredentialKind::Secret => "secret",
        }
    }

    pub fn parse(s: &str) -> Result<CredentialKind> {
        match s {
            "key" => Ok(CredentialKind::Key),
            "secret" => Ok(CredentialKind::Secret),
            other => Err(DomainError::internal(format!(
                "unknown credential kind {other:?}"
            ))),
        }
    }
}

/// A credential as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub id: String,
    pub service_account_id: String,
    pub kind: CredentialKind,
    pub fingerprint: String,
    pub created_at_ms: i64,
    pub last_used_at_ms: Option<i64>,
}

/// What an authenticated service caller may do, from current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceCaller {
    pub name: String,
    pub owner: Owner,
    pub scopes: Vec<Scope>,
}

/// A service account and the credential of its token, as stored now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceCallerState {
    pub name: String,
    pub owner: Owner,
    pub scopes: Vec<Scope>,
    pub status: AccountStatus,
    /// The token's credential still exists on this account.
    pub credential_found: bool,
    /// When its access was last narrowed: older tokens are refused.
    pub tokens_not_before_ms: i64,
}

/// R25: the caller of a verified service token, from current state: a
/// deleted account's token is invalid, a disabled one refused, a removed
/// credential's tokens refused, and the scopes are those both the token and
/// the account hold now (narrowing takes effect at once, widening needs a
/// new token).
pub fn service_caller_from_state(
    account_id: String,
    credential_id: Option<String>,
    token: (&[Scope], u64),
    state: Option<ServiceCallerState>,
) -> Result<Caller> {
    let (token_scopes, issued_at_secs) = token;
    let state = state.ok_or_else(super::membership::invalid_token)?;
    if state.status == AccountStatus::Disabled {
        return Err(DomainError::unauthenticated(
            reason::ACCOUNT_DISABLED,
            "this service account is disabled",
        ));
    }
    if !state.credential_found {
        return Err(DomainError::unauthenticated(
            reason::SESSION_REVOKED,
            "the credential of this access token was removed",
        ));
    }
    // As offline verifiers judge the revocation event: a token of the same
    // second counts as older.
    if (issued_at_secs as i64).saturating_mul(1000) < state.tokens_not_before_ms {
        return Err(DomainError::unauthenticated(
            reason::SESSION_REVOKED,
            "this access token was issued before the account's access was narrowed",
        ));
    }
    let scopes = state
        .scopes
        .iter()
        .copied()
        .filter(|s| token_scopes.contains(s))
        .collect();
    Ok(Caller {
        user_id: account_id,
        email: String::new(),
        platform_admin: false,
        platform_admin_gated: false,
        second_factor: false,
        session_id: credential_id,
        service: Some(ServiceCaller {
            name: state.name,
            owner: state.owner,
            scopes,
        }),
    })
}

/// R25: a service account calls only what one of its scopes reaches; people
/// pass. `None` for RPCs that no scope reaches.
pub fn require_scope(caller: &Caller, needed: Option<Scope>) -> Result {
    let Some(service) = &caller.service else {
        return Ok(());
    };
    match needed {
        Some(s) if service.scopes.contains(&s) => Ok(()),
        _ => Err(DomainError::ScopeRequired {
            scope: needed.map(Scope::as_str),
        }),
    }
}

/// R25 + R4: a service caller sees its owner organization only (all of
/// them for a platform account); others do not exist for it.
pub fn require_service_sees(service: &ServiceCaller, organization_id: &str) -> Result {
    if service.owner.covers(organization_id) {
        Ok(())
    } else {
        Err(DomainError::not_found("organization"))
    }
}

/// R25: who manages accounts of `owner`: a PlatformAdmin any; a Manager of
/// the owner organization that organization's. Everyone else, and every
/// service account, finds no such account (R4).
pub fn check_manage(caller: &Caller, caller_role: Option<Role>, owner: &Owner) -> Result {
    if caller.service.is_some() {
        return Err(DomainError::ScopeRequired { scope: None });
    }
    if caller.platform_admin {
        return Ok(());
    }
    match owner {
        Owner::Organization(_) if caller_role == Some(Role::Manager) => Ok(()),
        _ => Err(DomainError::not_found("service account")),
    }
}

/// R25 for CreateServiceAccount: like `check_manage`, but a caller who may
/// see the organization learns why they cannot create there.
pub fn check_create(caller: &Caller, caller_role: Option<Role>, owner: &Owner) -> Result {
    if caller.service.is_some() {
        return Err(DomainError::ScopeRequired { scope: None });
    }
    match owner {
        Owner::Platform => super::access::require_platform_admin(caller),
        Owner::Organization(_) => super::access::require_manager(caller, caller_role),
    }
}

/// 1–64 of [a-z0-9-], starting with a letter: safe in logs, URLs and
/// Kubernetes object names.
pub fn validate_name(field: &str, name: &str) -> std::result::Result<(), FieldViolation> {
    let ok = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(FieldViolation::new(
            field,
            "1 to 64 characters of a-z, 0-9 and '-', starting with a letter",
        ))
    }
}

/// A URI SAN (`spiffe://…`, `https://…`) or a DNS name, ≤ 255 printable
/// ASCII without spaces; empty means unbound.
pub fn validate_certificate_identity(
    field: &str,
    identity: &str,
) -> std::result::Result<(), FieldViolation> {
    if identity.is_empty() {
        return Ok(());
    }
    let ok = identity.len() <= 255 && identity.chars().all(|c| c.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(FieldViolation::new(
            field,
            "a URI or DNS subject alternative name: at most 255 printable ASCII characters",
        ))
    }
}

// What a service account can reach (R25 in docs/rules.md): the read RPCs
// its scopes open, never beyond what its owner covers. The scope itself is
// checked first (`require_scope`); these rules decide the target.

/// CheckPermission(s) about `user_id` in `organization_id`: a service
/// account about anyone in the organizations its owner covers (NOT_FOUND
/// elsewhere, R4); a person about themself, or as a Manager of the
/// organization, or as a PlatformAdmin (R16).
pub fn check_permission_query(
    caller: &Caller,
    caller_role: Option<Role>,
    organization_id: &str,
    user_id: &str,
) -> Result {
    if let Some(service) = &caller.service {
        return require_service_sees(service, organization_id);
    }
    if caller.platform_admin {
        return Ok(());
    }
    super::access::check_may_query_permission(caller, caller_role, user_id)
}

/// R25: reads across every organization (ListUsers, the whole audit trail,
/// the revocation feed) are for platform accounts; an organization's
/// account holding the scope is refused (its owner could not read them).
pub fn require_platform_account(service: &ServiceCaller) -> Result {
    match service.owner {
        Owner::Platform => Ok(()),
        Owner::Organization(_) => Err(DomainError::denied(
            reason::PLATFORM_ACCOUNT_REQUIRED,
            "only a platform service account reads across organizations",
        )),
    }
}

/// R11 + R25 for platform-wide reads: a PlatformAdmin, or a platform
/// service account (whose scope the handler checked).
pub fn require_platform_reader(caller: &Caller) -> Result {
    match &caller.service {
        Some(s) => require_platform_account(s),
        None => super::access::require_platform_admin(caller),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(status: AccountStatus, credential_found: bool) -> Option<ServiceCallerState> {
        Some(ServiceCallerState {
            name: "device".into(),
            owner: Owner::Organization("o1".into()),
            scopes: vec![Scope::PermissionsCheck, Scope::MembersRead],
            status,
            credential_found,
            tokens_not_before_ms: 5_000,
        })
    }

    fn service(scopes: &[Scope], owner: Owner) -> Caller {
        Caller {
            service: Some(ServiceCaller {
                name: "s".into(),
                owner,
                scopes: scopes.to_vec(),
            }),
            ..Caller::for_test(false)
        }
    }

    #[test]
    fn scopes_are_those_of_both_token_and_account() {
        let c = service_caller_from_state(
            "sa".into(),
            Some("c".into()),
            (&[Scope::PermissionsCheck, Scope::AuditRead], 6),
            state(AccountStatus::Active, true),
        )
        .expect("caller");
        let s = c.service.expect("service");
        assert_eq!(s.scopes, vec![Scope::PermissionsCheck]);
        assert!(!c.platform_admin);
    }

    #[test]
    fn disabled_accounts_removed_credentials_and_missing_accounts_are_refused() {
        let t = [Scope::PermissionsCheck];
        let r = |s| service_caller_from_state("sa".into(), Some("c".into()), (&t, 6), s);
        assert!(matches!(
            r(state(AccountStatus::Disabled, true)),
            Err(DomainError::Unauthenticated {
                reason: reason::ACCOUNT_DISABLED,
                ..
            })
        ));
        assert!(matches!(
            r(state(AccountStatus::Active, false)),
            Err(DomainError::Unauthenticated {
                reason: reason::SESSION_REVOKED,
                ..
            })
        ));
        assert!(matches!(
            r(None),
            Err(DomainError::Unauthenticated {
                reason: reason::INVALID_TOKEN,
                ..
            })
        ));
    }

    #[test]
    fn a_service_reaches_only_its_scopes_and_people_pass() {
        let s = service(&[Scope::MembersRead], Owner::Platform);
        assert!(require_scope(&s, Some(Scope::MembersRead)).is_ok());
        assert!(matches!(
            require_scope(&s, Some(Scope::AuditRead)),
            Err(DomainError::ScopeRequired {
                scope: Some("audit.read")
            })
        ));
        assert!(matches!(
            require_scope(&s, None),
            Err(DomainError::ScopeRequired { scope: None })
        ));
        assert!(require_scope(&Caller::for_test(false), None).is_ok());
    }

    #[test]
    fn an_org_account_sees_its_owner_only() {
        let own = ServiceCaller {
            name: "s".into(),
            owner: Owner::Organization("o1".into()),
            scopes: vec![],
        };
        assert!(require_service_sees(&own, "o1").is_ok());
        assert!(matches!(
            require_service_sees(&own, "o2"),
            Err(DomainError::NotFound { .. })
        ));
        let platform = ServiceCaller {
            owner: Owner::Platform,
            ..own
        };
        assert!(require_service_sees(&platform, "o2").is_ok());
    }

    #[test]
    fn managers_manage_their_organizations_accounts_only() {
        let m = Caller::for_test(false);
        let org = Owner::Organization("o1".into());
        assert!(check_manage(&m, Some(Role::Manager), &org).is_ok());
        assert!(matches!(
            check_manage(&m, Some(Role::Member), &org),
            Err(DomainError::NotFound { .. })
        ));
        assert!(matches!(
            check_manage(&m, Some(Role::Manager), &Owner::Platform),
            Err(DomainError::NotFound { .. })
        ));
        assert!(check_manage(&Caller::for_test(true), None, &Owner::Platform).is_ok());
        assert!(matches!(
            check_create(&m, Some(Role::Member), &org),
            Err(DomainError::PermissionDenied { .. })
        ));
        assert!(matches!(
            check_create(&m, None, &org),
            Err(DomainError::NotFound { .. })
        ));
        let s = service(&Scope::ALL, Owner::Platform);
        assert!(matches!(
            check_manage(&s, None, &org),
            Err(DomainError::ScopeRequired { scope: None })
        ));
    }

    #[test]
    fn scope_lists_parse_strictly_and_read_leniently() {
        let v = Scope::parse_list(
            "scopes",
            &[
                "users.read".into(),
                "permissions.check".into(),
                "users.read".into(),
            ],
        )
        .expect("valid");
        assert_eq!(v, vec![Scope::PermissionsCheck, Scope::UsersRead]);
        assert_eq!(Scope::join(&v), "permissions.check users.read");
        assert!(Scope::parse_list("scopes", &["admin".into()]).is_err());
        assert_eq!(Scope::split("admin users.read"), vec![Scope::UsersRead]);
    }

    #[test]
    fn cross_organization_reads_need_a_platform_account() {
        let org = service(&[Scope::UsersRead], Owner::Organization("o1".into()));
        assert!(matches!(
            require_platform_reader(&org),
            Err(DomainError::PermissionDenied {
                reason: reason::PLATFORM_ACCOUNT_REQUIRED,
                ..
            })
        ));
        assert!(require_platform_reader(&service(&[], Owner::Platform)).is_ok());
        assert!(require_platform_reader(&Caller::for_test(true)).is_ok());
        assert!(require_platform_reader(&Caller::for_test(false)).is_err());
    }

    #[test]
    fn names_are_dns_label_like() {
        assert!(validate_name("n", "device-sync-2").is_ok());
        for bad in ["", "2fa", "Device", "a b", "a_b", &"a".repeat(65)] {
            assert!(validate_name("n", bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod reach_tests {
    use super::*;

    fn service(owner: Owner) -> ServiceCaller {
        ServiceCaller {
            name: "s".into(),
            owner,
            scopes: Scope::ALL.to_vec(),
        }
    }

    fn as_caller(s: ServiceCaller) -> Caller {
        Caller {
            service: Some(s),
            ..Caller::for_test(false)
        }
    }

    fn org(o: &str) -> Owner {
        Owner::Organization(o.into())
    }

    #[test]
    fn a_service_checks_anyone_in_its_owner_only() {
        let own = as_caller(service(org("o1")));
        assert!(check_permission_query(&own, None, "o1", "someone").is_ok());
        assert!(matches!(
            check_permission_query(&own, None, "o2", "someone"),
            Err(DomainError::NotFound {
                resource: "organization"
            })
        ));
        // A role it could never have does not widen it.
        assert!(check_permission_query(&own, Some(Role::Manager), "o2", "x").is_err());
        let platform = as_caller(service(Owner::Platform));
        assert!(check_permission_query(&platform, None, "o2", "someone").is_ok());
    }

    #[test]
    fn people_check_as_before() {
        let me = Caller::for_test(false);
        assert!(check_permission_query(&me, None, "o", "me").is_ok());
        assert!(matches!(
            check_permission_query(&me, None, "o", "x"),
            Err(DomainError::NotFound { .. })
        ));
        assert!(matches!(
            check_permission_query(&me, Some(Role::Member), "o", "x"),
            Err(DomainError::PermissionDenied {
                reason: reason::MANAGER_REQUIRED,
                ..
            })
        ));
        assert!(check_permission_query(&me, Some(Role::Manager), "o", "x").is_ok());
        assert!(check_permission_query(&Caller::for_test(true), None, "o", "x").is_ok());
    }
}
