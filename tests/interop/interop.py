"""Interop test: the generated Python client (grpcio) against a real server.

Proves the contract works from another language: login, a member added and
listed, refused calls whose google.rpc.ErrorInfo reason and BadRequest field
violations are read through grpcio-status, and a service account that
exchanges assertions built with PyJWT (EdDSA, via `cryptography`) for tokens
and calls CheckPermission with them. Run by tests/e2e/interop.rs with
KIOPS_GRPC (host:port), KIOPS_ISSUER, KIOPS_ADMIN_EMAIL and
KIOPS_ADMIN_PASSWORD set, and PYTHONPATH=target/sdk/python (made by
tests/interop/generate).
"""

import base64
import json
import os
import sys
import time
import uuid

import grpc
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from kiops.identity.v1 import (auth_pb2, auth_pb2_grpc, invitation_pb2,
                               invitation_pb2_grpc, membership_pb2,
                               membership_pb2_grpc, organization_pb2,
                               organization_pb2_grpc, service_account_pb2,
                               service_account_pb2_grpc, types_pb2, user_pb2,
                               user_pb2_grpc)

checks = 0


def check(ok, what):
    global checks
    if not ok:
        print(f"FAIL: {what}")
        sys.exit(1)
    checks += 1
    print(f"ok: {what}")


def details(err):
    """(ErrorInfo, BadRequest or None) of a failed call."""
    status = rpc_status.from_call(err)
    info, bad = None, None
    for any_ in status.details if status else []:
        if any_.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            any_.Unpack(info)
        elif any_.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            any_.Unpack(bad)
    return info, bad


def refused(call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except grpc.RpcError as err:
        return err
    return None


def main():
    channel = grpc.insecure_channel(os.environ["KIOPS_GRPC"])
    auth = auth_pb2_grpc.AuthServiceStub(channel)
    users = user_pb2_grpc.UserServiceStub(channel)
    orgs = organization_pb2_grpc.OrganizationServiceStub(channel)
    members = membership_pb2_grpc.MembershipServiceStub(channel)
    invitations = invitation_pb2_grpc.InvitationServiceStub(channel)

    login = auth.Login(auth_pb2.LoginRequest(
        email=os.environ["KIOPS_ADMIN_EMAIL"], password=os.environ["KIOPS_ADMIN_PASSWORD"]))
    check(login.token_type == "Bearer" and login.access_token.count(".") == 2,
          "admin login returns a JWT")
    admin = [("authorization", f"Bearer {login.access_token}")]

    me = users.GetMe(user_pb2.GetMeRequest(), metadata=admin).user
    check(me.platform_admin, "GetMe: the admin is a PlatformAdmin")

    member = users.CreateUser(user_pb2.CreateUserRequest(
        email="py-member@example.com", name="Py Member",
        password="a long python password"), metadata=admin).user
    org = orgs.CreateOrganization(organization_pb2.CreateOrganizationRequest(
        name="Interop", code="interop"), metadata=admin).organization
    other = orgs.CreateOrganization(organization_pb2.CreateOrganizationRequest(
        name="Elsewhere", code="elsewhere"), metadata=admin).organization
    members.AddMember(membership_pb2.AddMemberRequest(
        organization_id=org.organization_id, user_id=member.user_id,
        role=types_pb2.ROLE_MEMBER), metadata=admin)

    listed = members.ListMembers(membership_pb2.ListMembersRequest(
        organization_id=org.organization_id, query="py-member"), metadata=admin)
    check(listed.total_size == 1 and listed.members[0].email == "py-member@example.com"
          and listed.members[0].role == types_pb2.ROLE_MEMBER,
          "ListMembers finds the member with ROLE_MEMBER")

    mlogin = auth.Login(auth_pb2.LoginRequest(
        email="py-member@example.com", password="a long python password"))
    as_member = [("authorization", f"Bearer {mlogin.access_token}")]

    # R1: a Member has no user management in their own organization.
    err = refused(invitations.CreateInvitation, invitation_pb2.CreateInvitationRequest(
        organization_id=org.organization_id, email="x@example.com",
        role=types_pb2.ROLE_MEMBER), metadata=as_member)
    check(err is not None and err.code() == grpc.StatusCode.PERMISSION_DENIED,
          "a Member inviting is PERMISSION_DENIED")
    info, _ = details(err)
    check(info is not None and info.reason == "MANAGER_REQUIRED"
          and info.domain == "identity.kiops.io",
          "ErrorInfo reason MANAGER_REQUIRED read through grpcio-status")

    # R4: outside your organizations everything is NOT_FOUND.
    err = refused(orgs.GetOrganization, organization_pb2.GetOrganizationRequest(
        organization_id=other.organization_id), metadata=as_member)
    check(err is not None and err.code() == grpc.StatusCode.NOT_FOUND,
          "another organization is NOT_FOUND for the member")
    info, _ = details(err)
    check(info is not None and info.reason == "NOT_FOUND", "ErrorInfo reason NOT_FOUND")

    # Bad input: INVALID_ARGUMENT with BadRequest field violations.
    err = refused(auth.Login, auth_pb2.LoginRequest(email="not-an-email", password=""))
    check(err is not None and err.code() == grpc.StatusCode.INVALID_ARGUMENT,
          "a malformed login is INVALID_ARGUMENT")
    info, bad = details(err)
    fields = sorted(v.field for v in bad.field_violations) if bad else []
    check(info is not None and info.reason == "INVALID_ARGUMENT" and fields == ["email", "password"],
          f"BadRequest names the fields: {fields}")

    # No token at all.
    err = refused(users.GetMe, user_pb2.GetMeRequest())
    info, _ = details(err)
    check(err is not None and err.code() == grpc.StatusCode.UNAUTHENTICATED
          and info.reason == "MISSING_TOKEN", "no token is UNAUTHENTICATED / MISSING_TOKEN")

    service_account(channel, admin, org.organization_id, member.user_id)

    print(f"interop: {checks} checks passed")


def assertion(account_id, credential_id, private_key, audience, **override):
    """An RFC 7523 style assertion signed with PyJWT (EdDSA)."""
    now = int(time.time())
    claims = {"iss": account_id, "sub": account_id, "aud": audience,
              "iat": now, "exp": now + 60, "jti": str(uuid.uuid4())}
    claims.update(override)
    return jwt.encode(claims, private_key, algorithm="EdDSA",
                      headers={"kid": credential_id})


def token_claims(token):
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def service_account(channel, admin, org_id, member_id):
    """A service account of the organization, holding permissions.check only:
    its own Ed25519 key (made here; only the public key is uploaded) signs
    assertions with PyJWT; the tokens they buy answer CheckPermission and
    nothing else; a replayed assertion is refused."""
    auth = auth_pb2_grpc.AuthServiceStub(channel)
    members = membership_pb2_grpc.MembershipServiceStub(channel)
    accounts = service_account_pb2_grpc.ServiceAccountServiceStub(channel)
    issuer = os.environ["KIOPS_ISSUER"]

    members.SetPermissions(membership_pb2.SetPermissionsRequest(
        organization_id=org_id, user_id=member_id,
        permissions=[types_pb2.PERMISSION_DEVICE]), metadata=admin)
    account = accounts.CreateServiceAccount(service_account_pb2.CreateServiceAccountRequest(
        organization_id=org_id, name="py-portal", scopes=["permissions.check"]),
        metadata=admin).service_account
    check(account.organization_id == org_id and list(account.scopes) == ["permissions.check"],
          "CreateServiceAccount: owned by the organization, permissions.check only")

    private_key = Ed25519PrivateKey.generate()
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    added = accounts.AddServiceAccountKey(service_account_pb2.AddServiceAccountKeyRequest(
        service_account_id=account.service_account_id, public_key_pem=public_pem),
        metadata=admin)
    credential = added.credential.credential_id
    check(added.private_key_pem == "" and added.credential.type == service_account_pb2.CREDENTIAL_TYPE_KEY,
          "AddServiceAccountKey: an uploaded public key, no private key returned")

    signed = assertion(account.service_account_id, credential, private_key, issuer)
    issued = auth.IssueServiceAccountToken(
        auth_pb2.IssueServiceAccountTokenRequest(assertion=signed))
    claims = token_claims(issued.access_token)
    check(issued.token_type == "Bearer" and list(issued.scopes) == ["permissions.check"]
          and issued.expires_in > 0,
          "IssueServiceAccountToken: a PyJWT EdDSA assertion buys a Bearer token")
    check(claims.get("kind") == "service" and claims["sub"] == account.service_account_id
          and claims.get("sid") == credential and claims.get("owner_org") == org_id
          and not claims.get("orgs"),
          "the token says service, names its owner and credential, and has no orgs")
    as_service = [("authorization", f"Bearer {issued.access_token}")]

    allowed = members.CheckPermission(membership_pb2.CheckPermissionRequest(
        user_id=member_id, organization_id=org_id,
        permission=types_pb2.PERMISSION_DEVICE), metadata=as_service)
    denied = members.CheckPermission(membership_pb2.CheckPermissionRequest(
        user_id=member_id, organization_id=org_id,
        permission=types_pb2.PERMISSION_VPN), metadata=as_service)
    check(allowed.allowed and not denied.allowed,
          "CheckPermission as the service account: device yes, vpn no")

    err = refused(members.ListMembers, membership_pb2.ListMembersRequest(
        organization_id=org_id), metadata=as_service)
    info, _ = details(err)
    check(err is not None and err.code() == grpc.StatusCode.PERMISSION_DENIED
          and info.reason == "SCOPE_REQUIRED" and info.metadata.get("scope") == "members.read",
          "ListMembers without members.read: SCOPE_REQUIRED naming the scope")

    # The same assertion again: its jti is spent.
    err = refused(auth.IssueServiceAccountToken,
                  auth_pb2.IssueServiceAccountTokenRequest(assertion=signed))
    info, _ = details(err)
    check(err is not None and err.code() == grpc.StatusCode.UNAUTHENTICATED
          and info.reason == "ASSERTION_REPLAYED",
          "a replayed assertion is UNAUTHENTICATED / ASSERTION_REPLAYED")
    for what, bad in [
        ("another audience", assertion(account.service_account_id, credential, private_key,
                                       "https://elsewhere.example")),
        ("an expired assertion", assertion(account.service_account_id, credential, private_key,
                                           issuer, iat=int(time.time()) - 600,
                                           exp=int(time.time()) - 300)),
    ]:
        err = refused(auth.IssueServiceAccountToken,
                      auth_pb2.IssueServiceAccountTokenRequest(assertion=bad))
        info, _ = details(err)
        check(err is not None and err.code() == grpc.StatusCode.UNAUTHENTICATED
              and info.reason == "INVALID_ASSERTION",
              f"{what} is UNAUTHENTICATED / INVALID_ASSERTION")
    err = refused(auth.IssueServiceAccountToken, auth_pb2.IssueServiceAccountTokenRequest(
        assertion=assertion(account.service_account_id, credential,
                            Ed25519PrivateKey.generate(), issuer)))
    info, _ = details(err)
    check(err is not None and err.code() == grpc.StatusCode.UNAUTHENTICATED
          and info.reason == "INVALID_CREDENTIALS",
          "an assertion signed by another key is UNAUTHENTICATED / INVALID_CREDENTIALS")

    # A key generated by the server comes as a key file: PyJWT signs with
    # its PKCS#8 PEM as it is.
    generated = accounts.AddServiceAccountKey(service_account_pb2.AddServiceAccountKeyRequest(
        service_account_id=account.service_account_id), metadata=admin)
    key_file = json.loads(generated.key_file_json)
    check(key_file["type"] == "kiops_service_account_key" and key_file["issuer"] == issuer,
          "AddServiceAccountKey (generated): a key file for this issuer")
    from_file = auth.IssueServiceAccountToken(auth_pb2.IssueServiceAccountTokenRequest(
        assertion=assertion(key_file["service_account_id"], key_file["credential_id"],
                            key_file["private_key_pem"], key_file["issuer"])))
    check(token_claims(from_file.access_token).get("sid") == key_file["credential_id"],
          "the key file's private key signs an assertion the server accepts")

    # Removing the uploaded key revokes the token it bought.
    accounts.RemoveServiceAccountCredential(service_account_pb2.RemoveServiceAccountCredentialRequest(
        service_account_id=account.service_account_id, credential_id=credential), metadata=admin)
    err = refused(members.CheckPermission, membership_pb2.CheckPermissionRequest(
        user_id=member_id, organization_id=org_id,
        permission=types_pb2.PERMISSION_DEVICE), metadata=as_service)
    info, _ = details(err)
    check(err is not None and err.code() == grpc.StatusCode.UNAUTHENTICATED
          and info.reason == "SESSION_REVOKED",
          "after the key is removed its token is UNAUTHENTICATED / SESSION_REVOKED")


if __name__ == "__main__":
    main()
