// The example console: sign in, the "Organization Users" tab of one of your
// organizations (search, sort, role filter, paging, Pending Approval count)
// and, for a PlatformAdmin, the live feed of revocations (a server stream).
// Plain DOM code on purpose: what matters is the calls.

import { timestampDate } from "@bufbuild/protobuf/wkt";
import { JoinRequestStatus, Role } from "@gen/kiops/identity/v1/types_pb";
import { connect, describeError, refreshToken, setSession, type Api } from "./api";

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const testid = (id: string) => document.querySelector(`[data-testid="${id}"]`) as HTMLElement;

let api: Api;
// page_token of each page shown so far: [0] is the first page (""), the last
// one is the page on screen. Previous pops, Next pushes next_page_token.
let pageTokens = [""];
let nextPageToken = "";
// Answers can arrive out of order (typing in the search box): only the
// latest request's answer is shown.
let listSeq = 0;
let revocationFeed: AbortController | null = null;

function showError(err: unknown): void {
  const { code, reason, message } = describeError(err);
  testid("error-code").textContent = code;
  testid("error-reason").textContent = reason;
  testid("error-message").textContent = message;
  $("error").hidden = false;
}

function clearError(): void {
  $("error").hidden = true;
  for (const id of ["error-code", "error-reason", "error-message"]) testid(id).textContent = "";
}

async function signIn(event: Event): Promise<void> {
  event.preventDefault();
  clearError();
  signOutLocally();
  api = connect($<HTMLInputElement>("server").value.replace(/\/+$/, ""));
  try {
    const r = await api.auth.login({
      email: $<HTMLInputElement>("email").value,
      password: $<HTMLInputElement>("password").value,
    });
    setSession({ accessToken: r.accessToken, refreshToken: r.refreshToken });
    $<HTMLInputElement>("password").value = "";
    const { user } = await api.users.getMe({});
    $("who").textContent = `Signed in as ${user?.email}${user?.platformAdmin ? " (PlatformAdmin)" : ""}`;
    $("who").hidden = false;
    $("sign-out").hidden = false;
    await loadOrganizations();
    if (user?.platformAdmin) watchRevocations();
  } catch (err) {
    showError(err);
  }
}

async function signOut(): Promise<void> {
  clearError();
  try {
    // Ends the session on the server (the refresh token stops working).
    await api.auth.logout({ refreshToken: refreshToken() });
  } catch (err) {
    showError(err);
  }
  signOutLocally();
}

function signOutLocally(): void {
  revocationFeed?.abort();
  revocationFeed = null;
  setSession(null);
  $("who").hidden = true;
  $("sign-out").hidden = true;
  $("users").hidden = true;
  $("revocations").hidden = true;
  $("events").replaceChildren();
  testid("watch-status").textContent = "off";
}

// The organizations the user belongs to, for the picker.
async function loadOrganizations(): Promise<void> {
  const { memberships } = await api.members.listMyMemberships({ pageSize: 100 });
  const select = $<HTMLSelectElement>("org");
  select.replaceChildren(
    ...memberships.map((m) => new Option(m.organization?.name ?? "", m.organization?.organizationId)),
  );
  $("users").hidden = memberships.length === 0;
  if (memberships.length > 0) await showOrganization();
}

async function showOrganization(): Promise<void> {
  clearError();
  await Promise.all([loadPendingCount(), loadMembers(true)]);
}

// "Pending Approval (N)": N is total_size of the pending join requests; one
// item per page is enough to get it.
async function loadPendingCount(): Promise<void> {
  testid("pending-count").textContent = "?";
  try {
    const r = await api.approvals.listJoinRequests({
      organizationId: $<HTMLSelectElement>("org").value,
      status: JoinRequestStatus.PENDING,
      pageSize: 1,
    });
    testid("pending-count").textContent = String(r.totalSize);
  } catch (err) {
    showError(err);
  }
}

// One page of ListMembers with the current search, sort and role filter.
// `fromStart` (a filter changed) goes back to the first page: page tokens
// are only valid for the query they were issued for.
async function loadMembers(fromStart: boolean): Promise<void> {
  if (fromStart) pageTokens = [""];
  const seq = ++listSeq;
  const tbody = $("members");
  tbody.dataset.state = "loading";
  try {
    const r = await api.members.listMembers({
      organizationId: $<HTMLSelectElement>("org").value,
      query: $<HTMLInputElement>("search").value,
      orderBy: $<HTMLSelectElement>("sort").value,
      role: Number($<HTMLSelectElement>("role").value) as Role,
      pageSize: Number($<HTMLSelectElement>("page-size").value),
      pageToken: pageTokens[pageTokens.length - 1],
    });
    if (seq !== listSeq) return;
    tbody.replaceChildren(
      ...r.members.map((m) => {
        const tr = document.createElement("tr");
        const joined = m.joinTime ? timestampDate(m.joinTime).toISOString().slice(0, 10) : "";
        for (const text of [m.email, m.name, Role[m.role].toLowerCase(), joined]) {
          tr.insertCell().textContent = text;
        }
        return tr;
      }),
    );
    nextPageToken = r.nextPageToken;
    testid("total").textContent = String(r.totalSize);
  } catch (err) {
    if (seq !== listSeq) return;
    tbody.replaceChildren();
    nextPageToken = "";
    testid("total").textContent = "?";
    showError(err);
  }
  testid("page").textContent = String(pageTokens.length);
  $<HTMLButtonElement>("prev").disabled = pageTokens.length === 1;
  $<HTMLButtonElement>("next").disabled = nextPageToken === "";
  tbody.dataset.state = "ready";
}

// WatchRevocations: a server stream over gRPC-Web. Each event is appended as
// it arrives; the call stays open until sign-out aborts it.
async function watchRevocations(): Promise<void> {
  const feed = new AbortController();
  revocationFeed = feed;
  const status = testid("watch-status");
  $("revocations").hidden = false;
  status.textContent = "connecting";
  try {
    const stream = api.auth.watchRevocations(
      {},
      {
        signal: feed.signal,
        // The response headers mean the server has started the feed: events
        // from now on will come.
        onHeader: () => (status.textContent = "live"),
      },
    );
    for await (const { event } of stream) {
      if (!event) continue;
      const li = document.createElement("li");
      li.dataset.userId = event.userId;
      li.textContent = `${event.reason} user=${event.userId || "*"} org=${event.organizationId || "*"}`;
      $("events").append(li);
    }
    status.textContent = "ended";
  } catch (err) {
    if (!feed.signal.aborted) {
      status.textContent = "failed";
      showError(err);
    }
  }
}

function main(): void {
  $<HTMLInputElement>("server").value =
    new URLSearchParams(location.search).get("server") ?? "http://127.0.0.1:50051";
  $("login").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", signOut);
  $("org").addEventListener("change", showOrganization);
  $("search").addEventListener("input", () => loadMembers(true));
  for (const id of ["sort", "role", "page-size"]) {
    $(id).addEventListener("change", () => loadMembers(true));
  }
  $("next").addEventListener("click", () => {
    pageTokens.push(nextPageToken);
    loadMembers(false);
  });
  $("prev").addEventListener("click", () => {
    pageTokens.pop();
    loadMembers(false);
  });
  document.body.dataset.ready = "true";
}

main();
