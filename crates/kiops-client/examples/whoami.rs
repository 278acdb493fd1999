//! Signs in and prints who you are and where you belong.
//!
//! KIOPS_URL=http://127.0.0.1:50051 KIOPS_EMAIL=admin@kiops.local \
//! KIOPS_PASSWORD=... cargo run -p kiops-client --example whoami

use kiops_client::{v1, Client};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("KIOPS_URL").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
    let email = std::env::var("KIOPS_EMAIL")?;
    let password = std::env::var("KIOPS_PASSWORD")?;
    let client = Client::login(&url, &email, &password).await?;

    let me = client
        .users()
        .get_me(v1::GetMeRequest {})
        .await?
        .into_inner();
    if let Some(u) = me.user {
        println!(
            "{} <{}> platform_admin={}",
            u.name, u.email, u.platform_admin
        );
    }
    let mine = client
        .memberships()
        .list_my_memberships(v1::ListMyMembershipsRequest::default())
        .await?
        .into_inner();
    for m in mine.memberships {
        let org = m.organization.clone().unwrap_or_default();
        let perms: Vec<_> = m.permissions().map(|p| p.as_str_name()).collect();
        println!(
            "{} ({}) {} {perms:?}",
            org.name,
            org.code,
            m.role().as_str_name()
        );
    }
    client.logout().await?;
    Ok(())
}
