//! OrganizationService (R18) and R4 visibility.

use crate::both_backends;
use crate::support::*;
use kiops_proto::v1::*;
use tonic::Code;

both_backends!(
    create_validate_and_uniqueness,
    visibility_update_and_delete,
    list_paginates,
);

async fn create_validate_and_uniqueness(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let mut orgs = s.orgs().await;
    let req = |name: &str, code: &str| CreateOrganizationRequest {
        name: name.into(),
        code: code.into(),
        description: "Seoul office".into(),
    };
    let created = orgs
        .create_organization(authed(req("Acme Corp", "acme"), &admin))
        .await
        .expect("create")
        .into_inner()
        .organization
        .expect("org");
    assert_eq!(created.code, "acme");
    assert_eq!(created.description, "Seoul office");
    assert!(created.create_time.is_some());
    assert_status(
        orgs.create_organization(authed(req("Other", "acme"), &admin))
            .await,
        Code::AlreadyExists,
        "ORGANIZATION_CODE_TAKEN",
    );
    for bad in ["A", "-acme", "Acme", "acme_corp", "a", &"a".repeat(33)] {
        assert_invalid(
            orgs.create_organization(authed(req("X", bad), &admin))
                .await,
            "code",
        );
    }
    assert_invalid(
        orgs.create_organization(authed(req("  ", "ok-code"), &admin))
            .await,
        "name",
    );
    let (_, kim) = s.user("kim@example.com").await;
    assert_status(
        orgs.create_organization(authed(req("Kim's", "kims"), &kim))
            .await,
        Code::PermissionDenied,
        "PLATFORM_ADMIN_REQUIRED",
    );
}

async fn visibility_update_and_delete(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let a = s.create_org(&admin, "Alpha", "alpha").await;
    let b = s.create_org(&admin, "Beta", "beta").await;
    let (mgr_id, mgr) = s.user("mgr@example.com").await;
    let (mem_id, mem) = s.user("mem@example.com").await;
    s.add_member(&admin, &a, &mgr_id, Role::Manager).await;
    s.add_member(&admin, &a, &mem_id, Role::Member).await;
    let mut orgs = s.orgs().await;

    // Members see their organization; an outsider gets NOT_FOUND (R4), the
    // same as for an organization that does not exist.
    let get = |id: &str, t: &str| {
        authed(
            GetOrganizationRequest {
                organization_id: id.into(),
            },
            t,
        )
    };
    orgs.get_organization(get(&a, &mem))
        .await
        .expect("member reads own org");
    assert_status(
        orgs.get_organization(get(&b, &mem)).await,
        Code::NotFound,
        "NOT_FOUND",
    );
    let ghost = uuid::Uuid::now_v7().to_string();
    assert_status(
        orgs.get_organization(get(&ghost, &mem)).await,
        Code::NotFound,
        "NOT_FOUND",
    );
    assert_status(
        orgs.get_organization(get(&ghost, &admin)).await,
        Code::NotFound,
        "NOT_FOUND",
    );
    orgs.get_organization(get(&b, &admin))
        .await
        .expect("PlatformAdmin reads any");

    let update = |id: &str, name: &str, code: &str, paths: &[&str], t: &str| {
        authed(
            UpdateOrganizationRequest {
                organization: Some(Organization {
                    organization_id: id.into(),
                    name: name.into(),
                    code: code.into(),
                    description: "new description".into(),
                    create_time: None,
                    second_factor_required: false,
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: paths.iter().map(|p| p.to_string()).collect(),
                }),
            },
            t,
        )
    };
    let updated = orgs
        .update_organization(update(&a, "Alpha Team", "", &["name", "description"], &mgr))
        .await
        .expect("manager updates name/description")
        .into_inner()
        .organization
        .expect("org");
    assert_eq!(updated.name, "Alpha Team");
    assert_eq!(updated.description, "new description");
    assert_eq!(updated.code, "alpha");
    assert_status(
        orgs.update_organization(update(&a, "", "alpha2", &["code"], &mgr))
            .await,
        Code::PermissionDenied,
        "PLATFORM_ADMIN_REQUIRED",
    );
    assert_status(
        orgs.update_organization(update(&a, "Mine", "", &["name"], &mem))
            .await,
        Code::PermissionDenied,
        "MANAGER_REQUIRED",
    );
    assert_status(
        orgs.update_organization(update(&b, "Mine", "", &["name"], &mgr))
            .await,
        Code::NotFound,
        "NOT_FOUND",
    );
    assert_invalid(
        orgs.update_organization(update(&a, "x", "", &["owner"], &admin))
            .await,
        "update_mask",
    );
    let recoded = orgs
        .update_organization(update(&a, "", "alpha-2", &["code"], &admin))
        .await
        .expect("admin changes code")
        .into_inner()
        .organization
        .expect("org");
    assert_eq!(recoded.code, "alpha-2");
    assert_status(
        orgs.update_organization(update(&a, "", "beta", &["code"], &admin))
            .await,
        Code::AlreadyExists,
        "ORGANIZATION_CODE_TAKEN",
    );

    // Delete: PlatformAdmin only; memberships go with it.
    let del = |id: &str, t: &str| {
        authed(
            DeleteOrganizationRequest {
                organization_id: id.into(),
            },
            t,
        )
    };
    assert_status(
        orgs.delete_organization(del(&a, &mgr)).await,
        Code::PermissionDenied,
        "PLATFORM_ADMIN_REQUIRED",
    );
    orgs.delete_organization(del(&a, &admin))
        .await
        .expect("delete");
    assert_status(
        orgs.get_organization(get(&a, &admin)).await,
        Code::NotFound,
        "NOT_FOUND",
    );
    let mine = s
        .members()
        .await
        .list_my_memberships(authed(ListMyMembershipsRequest::default(), &mem))
        .await
        .expect("my memberships")
        .into_inner();
    assert_eq!(mine.total_size, 0);
    assert_status(
        orgs.delete_organization(del(&a, &admin)).await,
        Code::NotFound,
        "NOT_FOUND",
    );
}

async fn list_paginates(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let (uid, user) = s.user("kim@example.com").await;
    let mut ids = vec![];
    for code in ["delta", "alpha", "echo", "bravo", "charlie"] {
        let id = s.create_org(&admin, &code.to_uppercase(), code).await;
        if code != "echo" {
            s.add_member(&admin, &id, &uid, Role::Member).await;
        }
        ids.push(id);
    }
    let mut orgs = s.orgs().await;
    let list = |t: &str, size: i32, page: &str, q: &str| {
        authed(
            ListOrganizationsRequest {
                page_size: size,
                page_token: page.into(),
                query: q.into(),
            },
            t,
        )
    };
    // The user sees their four, in code order, two per page.
    let mut seen = vec![];
    let mut token = String::new();
    loop {
        let page = orgs
            .list_organizations(list(&user, 2, &token, ""))
            .await
            .expect("list")
            .into_inner();
        assert_eq!(page.total_size, 4);
        seen.extend(page.organizations.into_iter().map(|o| o.code));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, vec!["alpha", "bravo", "charlie", "delta"]);
    // The PlatformAdmin sees all five; search is a case-insensitive substring.
    let all = orgs
        .list_organizations(list(&admin, 0, "", ""))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(all.total_size, 5);
    let found = orgs
        .list_organizations(list(&admin, 0, "", "HAR"))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(found.organizations.len(), 1);
    assert_eq!(found.organizations[0].code, "charlie");
    // A page token is bound to the caller and the query.
    let first = orgs
        .list_organizations(list(&user, 1, "", ""))
        .await
        .expect("list")
        .into_inner();
    assert_invalid(
        orgs.list_organizations(list(&admin, 1, &first.next_page_token, ""))
            .await,
        "page_token",
    );
    assert_invalid(
        orgs.list_organizations(list(&user, 1, "garbage", "")).await,
        "page_token",
    );
    assert_invalid(
        orgs.list_organizations(list(&user, 501, "", "")).await,
        "page_size",
    );
    assert_invalid(
        orgs.list_organizations(list(&user, -1, "", "")).await,
        "page_size",
    );
}
