//! The first PlatformAdmin.
//!
//! Three ways, in order: `kiops-identity bootstrap-admin --email E` (password
//! on stdin); `KIOPS_BOOTSTRAP_ADMIN_EMAIL` + `KIOPS_BOOTSTRAP_ADMIN_PASSWORD`
//! on `serve`; and, in the embedded default (SQLite) with neither, a generated
//! account whose credentials are written to a file readable only by the
//! owner. The password is never logged (R13): the log names the file.

use crate::app::App;
use crate::config::ServeArgs;
use crate::store::audit::{Actor, RequestMeta};
use crate::store::users;
use anyhow::Context;
use sea_orm::DatabaseBackend;

pub const GENERATED_ADMIN_EMAIL: &str = "admin@kiops.local";

fn meta() -> RequestMeta {
    RequestMeta {
        request_id: "bootstrap".into(),
        peer: String::new(),
        user_agent: String::new(),
    }
}

/// Creates a PlatformAdmin unless one exists. Returns false when skipped.
pub async fn create_first_admin(
    app: &App,
    email: &str,
    name: &str,
    password: &str,
) -> anyhow::Result<bool> {
    if users::platform_admin_exists(app.store.conn())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
    {
        return Ok(false);
    }
    crate::service::users::create_account(app, &meta(), Actor::System, email, name, password, true)
        .await
        .map_err(|e| match e {
            crate::domain::DomainError::InvalidArgument(v) => anyhow::anyhow!(
                "bootstrap admin refused: {}",
                v.iter()
                    .map(|f| format!("{} {}", f.field, f.description))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            other => anyhow::anyhow!("bootstrap admin: {other}"),
        })?;
    Ok(true)
}

pub async fn on_serve(app: &App, args: &ServeArgs) -> anyhow::Result<()> {
    match (&args.bootstrap_admin_email, &args.bootstrap_admin_password) {
        (Some(email), Some(password)) => {
            if create_first_admin(app, email, "Platform Admin", password).await? {
                tracing::info!(email = %email, "created the first PlatformAdmin from KIOPS_BOOTSTRAP_ADMIN_*");
            }
            return Ok(());
        }
        (Some(_), None) | (None, Some(_)) => {
            anyhow::bail!(
                "set both KIOPS_BOOTSTRAP_ADMIN_EMAIL and KIOPS_BOOTSTRAP_ADMIN_PASSWORD, or neither"
            );
        }
        (None, None) => {}
    }
    if users::platform_admin_exists(app.store.conn())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
    {
        return Ok(());
    }
    if app.store.backend() != DatabaseBackend::Sqlite {
        tracing::warn!(
            "no PlatformAdmin exists: run `kiops-identity bootstrap-admin --email E` \
             or set KIOPS_BOOTSTRAP_ADMIN_EMAIL and KIOPS_BOOTSTRAP_ADMIN_PASSWORD"
        );
        return Ok(());
    }
    let password = crate::auth::secrets::random_token("kiops");
    if create_first_admin(app, GENERATED_ADMIN_EMAIL, "Platform Admin", &password).await? {
        write_private_file(
            &args.initial_admin_file,
            &format!(
                "# First PlatformAdmin of this kiops-identity database. Log in, then\n\
                 # change the password (UserService.ChangePassword) and delete this file.\n\
                 email={GENERATED_ADMIN_EMAIL}\npassword={password}\n"
            ),
        )
        .with_context(|| format!("cannot write {}", args.initial_admin_file.display()))?;
        tracing::warn!(
            email = GENERATED_ADMIN_EMAIL,
            credentials_file = %args.initial_admin_file.display(),
            "created the first PlatformAdmin with a generated password; \
             its credentials are in the file named here"
        );
    }
    Ok(())
}

fn write_private_file(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(contents.as_bytes())
}
