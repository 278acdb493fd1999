//! Organizations (R18): the tenants that memberships, invitations, join
//! requests and templates belong to.

/// An organization as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Organization {
    pub id: String,
    pub name: String,
    pub code: String,
    pub description: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// R31: members need a second factor to act in it.
    pub second_factor_required: bool,
}

/// Fields to change; None leaves a field as it is.
#[derive(Debug, Default)]
pub struct OrganizationChanges {
    pub name: Option<String>,
    pub code: Option<String>,
    pub description: Option<String>,
    /// R31; applied by `store::second_factor::set_org`.
    pub second_factor_required: Option<bool>,
}

/// A new organization's fields, validated.
#[derive(Debug)]
pub struct NewOrganization {
    pub name: String,
    pub code: String,
    pub description: String,
}
