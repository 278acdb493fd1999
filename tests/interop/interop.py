"""Interop test: the generated Python client (grpcio) against a real server.

Proves the contract works from another language: login, a member added and
listed, refused calls whose google.rpc.ErrorInfo reason and BadRequest field
violations are read through grpcio-status. Run by tests/e2e/interop.rs with
KIOPS_GRPC (host:port), KIOPS_ADMIN_EMAIL and KIOPS_ADMIN_PASSWORD set, and
PYTHONPATH=target/sdk/python (made by tests/interop/generate).
"""

import os
import sys

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from kiops.identity.v1 import (auth_pb2, auth_pb2_grpc, invitation_pb2,
                               invitation_pb2_grpc, membership_pb2,
                               membership_pb2_grpc, organization_pb2,
                               organization_pb2_grpc, types_pb2, user_pb2,
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

    print(f"interop: {checks} checks passed")


if __name__ == "__main__":
    main()
