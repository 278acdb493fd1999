// The browser's way in to kiops-identity: gRPC-Web (binary) on the server's
// gRPC port, with clients generated from proto/ by protoc-gen-es.

import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { ErrorInfoSchema } from "@gen/google/rpc/error_details_pb";
import { ApprovalService } from "@gen/kiops/identity/v1/approval_pb";
import { AuthService } from "@gen/kiops/identity/v1/auth_pb";
import { MembershipService } from "@gen/kiops/identity/v1/membership_pb";
import { UserService } from "@gen/kiops/identity/v1/user_pb";

// The session lives in this module's memory only: not in localStorage or
// sessionStorage (readable by any script injected into the page) and not in
// a cookie (the browser would attach it to requests other sites trigger,
// which is what CSRF abuses). The token is sent only by our own code, in the
// authorization header. The price: a reload signs you out. (The example
// does not refresh the access token, valid 5 minutes by default; a real
// console calls AuthService.Refresh before it expires, as crates/kiops-client
// does.)
let session: { accessToken: string; refreshToken: string } | null = null;

export function setSession(s: typeof session): void {
  session = s;
}

export function refreshToken(): string {
  return session?.refreshToken ?? "";
}

const bearer: Interceptor = (next) => (req) => {
  if (session) {
    req.header.set("authorization", `Bearer ${session.accessToken}`);
  }
  return next(req);
};

export type Api = {
  auth: Client<typeof AuthService>;
  users: Client<typeof UserService>;
  members: Client<typeof MembershipService>;
  approvals: Client<typeof ApprovalService>;
};

// Clients of the services the page uses, all on one gRPC-Web transport.
export function connect(baseUrl: string): Api {
  const transport = createGrpcWebTransport({
    baseUrl,
    // gRPC-Web's binary mode (application/grpc-web+proto); connect-web's
    // other mode is JSON, which kiops-identity does not speak.
    useBinaryFormat: true,
    interceptors: [bearer],
  });
  return {
    auth: createClient(AuthService, transport),
    users: createClient(UserService, transport),
    members: createClient(MembershipService, transport),
    approvals: createClient(ApprovalService, transport),
  };
}

// What a failed call says: the gRPC code (e.g. PERMISSION_DENIED), the
// machine-readable google.rpc.ErrorInfo reason (e.g. MANAGER_REQUIRED) that
// the server puts in grpc-status-details-bin, and the message for people.
export function describeError(err: unknown): { code: string; reason: string; message: string } {
  const e = ConnectError.from(err);
  const info = e.findDetails(ErrorInfoSchema)[0];
  return {
    // Code.PermissionDenied → "PERMISSION_DENIED", as gRPC spells it.
    code: Code[e.code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase(),
    reason: info?.reason ?? "",
    message: e.rawMessage,
  };
}
