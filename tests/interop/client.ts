// The generated TypeScript client in use (type-checked by
// tests/interop/generate; run it with ts-node or after tsc to try it).
import { credentials, Metadata } from "@grpc/grpc-js";
import { AuthServiceClient } from "../../target/sdk/typescript/kiops/identity/v1/auth";
import { MembershipServiceClient } from "../../target/sdk/typescript/kiops/identity/v1/membership";
import { Permission } from "../../target/sdk/typescript/kiops/identity/v1/types";

export function checkDevicePermission(address: string, email: string, password: string, organizationId: string): void {
  const auth = new AuthServiceClient(address, credentials.createInsecure());
  auth.login({ email, password, organizationId: undefined }, (err, res) => {
    if (err || !res) {
      console.error("login failed", err?.code, err?.details);
      return;
    }
    const md = new Metadata();
    md.set("authorization", `Bearer ${res.accessToken}`);
    const memberships = new MembershipServiceClient(address, credentials.createInsecure());
    memberships.checkPermission(
      { organizationId, userId: "", permission: Permission.PERMISSION_DEVICE },
      md,
      (e, r) => console.log(e ? e.details : `allowed=${r?.allowed}`),
    );
  });
}
