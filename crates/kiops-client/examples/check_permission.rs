//! Signs in as a service account (with `permissions.check`) and asks whether
//! a user holds a permission category in an organization.
//!
//! KIOPS_SERVICE_ACCOUNT_KEY_FILE=key.json \
//!   cargo run -p kiops-client --example check_permission -- USER_ID ORG_ID device
//!
//! or, with a client secret, KIOPS_SERVICE_ACCOUNT_ID and
//! KIOPS_SERVICE_ACCOUNT_SECRET instead of the key file (KIOPS_URL defaults
//! to http://127.0.0.1:50051).

use kiops_client::{v1, Client, ServiceCredentials};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("KIOPS_URL").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
    let credentials = match std::env::var("KIOPS_SERVICE_ACCOUNT_KEY_FILE") {
        Ok(path) => ServiceCredentials::key_file(path)?,
        Err(_) => ServiceCredentials::secret(
            &std::env::var("KIOPS_SERVICE_ACCOUNT_ID")?,
            &std::env::var("KIOPS_SERVICE_ACCOUNT_SECRET")?,
        ),
    };
    let mut args = std::env::args().skip(1);
    let (Some(user_id), Some(organization_id), Some(category)) =
        (args.next(), args.next(), args.next())
    else {
        anyhow::bail!("usage: check_permission USER_ID ORG_ID CATEGORY");
    };
    let permission =
        v1::Permission::from_str_name(&format!("PERMISSION_{}", category.to_ascii_uppercase()))
            .ok_or_else(|| anyhow::anyhow!("unknown category {category}"))?;
    let client = Client::service_account(&url, credentials).await?;
    let allowed = client
        .memberships()
        .check_permission(v1::CheckPermissionRequest {
            user_id,
            organization_id,
            permission: permission as i32,
        })
        .await?
        .into_inner()
        .allowed;
    println!("allowed={allowed}");
    Ok(())
}
