// Drives the example console in headless Chromium (Debian's, through
// playwright-core; no browser is downloaded) against a real kiops-identity.
// Run by tests/e2e/browser.rs, which starts the server and a static server
// for target/console, seeds the data and passes it in KIOPS_CONSOLE_TEST
// (JSON). Every check waits on a condition in the page (no fixed sleeps);
// the first failing step exits 1 with its name.

import { chromium } from "playwright-core";

const t = JSON.parse(process.env.KIOPS_CONSOLE_TEST ?? "{}");
const TIMEOUT_MS = 30_000;

let current = "launch";
const browser = await chromium
  .launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", headless: true })
  .catch(fail);

// Page logs, printed when a step fails.
const logs = [];

async function step(name, body) {
  current = name;
  await body();
  console.log(`ok ${name}`);
}

async function fail(err) {
  console.log(`FAILED step "${current}": ${err?.stack ?? err}`);
  if (logs.length) console.log(`page logs:\n${logs.join("\n")}`);
  await browser?.close().catch(() => {});
  process.exit(1);
}

async function openConsole(url) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT_MS);
  page.on("console", (m) => logs.push(`[${url}] ${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => logs.push(`[${url}] uncaught: ${e}`));
  await page.goto(`${url}?server=${encodeURIComponent(t.server)}`);
  await page.waitForSelector("body[data-ready]", { state: "attached" });
  return page;
}

async function signIn(page, who) {
  await page.getByTestId("email").fill(who.email);
  await page.getByTestId("password").fill(who.password);
  await page.getByTestId("sign-in").click();
}

// What the page shows, read in the page.
function readState() {
  const text = (id) => document.querySelector(`[data-testid="${id}"]`)?.textContent ?? "";
  const tbody = document.querySelector('[data-testid="members"]');
  const rows = [...(tbody?.rows ?? [])];
  return {
    ready: tbody?.dataset.state === "ready",
    emails: rows.map((r) => r.cells[0].textContent),
    roles: rows.map((r) => r.cells[2].textContent),
    total: text("total"),
    page: text("page"),
    pending: text("pending-count"),
    who: document.querySelector('[data-testid="who"]')?.hidden ? "" : text("who"),
    errorCode: text("error-code"),
    errorReason: text("error-reason"),
    watch: text("watch-status"),
    events: [...document.querySelectorAll('[data-testid="events"] li')].map((li) => ({
      userId: li.dataset.userId,
      text: li.textContent,
    })),
  };
}

// Polls until `check(state, arg)` holds for what the page shows (as
// Playwright's expect.poll does); on timeout the error says what was
// expected and what the page showed last.
async function until(page, what, check, arg) {
  let state;
  await poll(what, async () => check((state = await page.evaluate(readState)), arg), () => state);
}

async function poll(what, condition, lastSeen = () => undefined) {
  const deadline = Date.now() + TIMEOUT_MS;
  while (!(await condition())) {
    if (Date.now() > deadline) {
      throw new Error(`${what}: not seen within ${TIMEOUT_MS} ms; last seen: ${JSON.stringify(lastSeen())}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
const sorted = [...t.members].sort();

try {
  const manager = await openConsole(t.page);

  await step("manager signs in and sees the members table", async () => {
    await signIn(manager, t.manager);
    await until(manager, `signed in as ${t.manager.email}`, (s, e) => s.who.includes(e), t.manager.email);
    await until(manager, `all ${sorted.length} members sorted by email`,
      (s, want) => s.ready && same(s.emails, want) && s.total === String(want.length),
      sorted);
  });

  await step("pending approval count", async () => {
    await until(manager, `Pending Approval (${t.pending})`, (s, n) => s.pending === String(n), t.pending);
  });

  await step("search narrows the table", async () => {
    await manager.getByTestId("search").fill(t.search.query);
    await until(manager, `only ${t.search.hits} for "${t.search.query}"`,
      (s, want) => s.ready && same(s.emails, want), t.search.hits);
    await manager.getByTestId("search").fill("");
    await until(manager, "all members again", (s, n) => s.ready && s.emails.length === n, sorted.length);
  });

  await step("sort order changes", async () => {
    await manager.getByTestId("sort").selectOption("email desc");
    await until(manager, "members sorted by email, descending",
      (s, want) => s.ready && same(s.emails, want), [...sorted].reverse());
    await manager.getByTestId("sort").selectOption("email");
    await until(manager, "members sorted by email again",
      (s, want) => s.ready && same(s.emails, want), sorted);
  });

  await step("role filter", async () => {
    await manager.getByTestId("role").selectOption("2");
    await until(manager, `only the Manager ${t.manager.email}`,
      (s, e) => s.ready && same(s.emails, [e]) && s.roles[0] === "manager",
      t.manager.email);
    await manager.getByTestId("role").selectOption("1");
    await until(manager, "only Members",
      (s, n) => s.ready && s.emails.length === n && s.roles.every((r) => r === "member"),
      sorted.length - 1);
    await manager.getByTestId("role").selectOption("0");
    await until(manager, "every role again", (s, n) => s.ready && s.emails.length === n, sorted.length);
  });

  await step("paging to page 2 and back", async () => {
    const size = t.pageSize;
    if (sorted.length <= size) throw new Error(`seed ${sorted.length} members for pages of ${size}`);
    await manager.getByTestId("page-size").selectOption(String(size));
    await until(manager, `page 1: the first ${size}`,
      (s, want) => s.ready && s.page === "1" && same(s.emails, want),
      sorted.slice(0, size));
    await manager.getByTestId("next").click();
    await until(manager, "page 2: the next ones",
      (s, want) => s.ready && s.page === "2" && same(s.emails, want),
      sorted.slice(size, 2 * size));
    await manager.getByTestId("prev").click();
    await until(manager, "page 1 again",
      (s, want) => s.ready && s.page === "1" && same(s.emails, want),
      sorted.slice(0, size));
  });

  // The PlatformAdmin's page follows WatchRevocations from here on.
  const admin = await openConsole(t.page);
  await step("platform admin follows live revocations", async () => {
    await signIn(admin, t.admin);
    await until(admin, "the revocation feed is live", (s) => s.watch === "live");
  });

  const member = await openConsole(t.page);
  await step("member is refused with the server's ErrorInfo reason", async () => {
    await signIn(member, t.member);
    await until(member, `signed in as ${t.member.email}`, (s, e) => s.who.includes(e), t.member.email);
    await until(member, `${t.memberRefusal.code} ${t.memberRefusal.reason}`,
      (s, want) => s.errorCode === want.code && s.errorReason === want.reason, t.memberRefusal);
    await until(member, "no member rows", (s) => s.ready && s.emails.length === 0);
  });

  await step("sign-out shows up in the admin's revocation stream", async () => {
    await member.getByTestId("sign-out").click();
    await until(member, "signed out", (s) => s.who === "");
    await until(admin, `a logout event of ${t.member.userId}`,
      (s, id) => s.events.some((e) => e.userId === id && e.text.startsWith("logout ")), t.member.userId);
    if (await admin.getByTestId("error").isVisible()) throw new Error("the admin's page shows an error");
    await until(admin, "the feed is still live", (s) => s.watch === "live");
  });

  await step("an origin not on the allow-list cannot sign in (CORS)", async () => {
    const other = await openConsole(t.blockedPage);
    const failed = other.waitForEvent("requestfailed", (r) => r.url().startsWith(t.server));
    await signIn(other, t.manager);
    await until(other, "the sign-in to settle", (s) => s.who !== "" || s.errorCode !== "");
    const shown = await other.evaluate(readState);
    if (shown.who !== "") throw new Error(`signed in from ${t.blockedPage}: "${shown.who}"`);
    // The browser itself refused the answer (not the server, which never
    // saw an allowed preflight, nor the page's code).
    const request = await failed;
    const cors = `from origin '${t.blockedPage.replace(/\/$/, "")}' has been blocked by CORS policy`;
    const ours = () => logs.filter((l) => l.startsWith(`[${t.blockedPage}]`));
    await poll(`Chromium's report "${cors}"`, () => ours().some((l) => l.includes(cors)), ours);
    console.log(`   ${request.method()} ${request.url()}: ${request.failure()?.errorText}, page shows ${shown.errorCode}`);
    // Control: the same static server under the allowed origin still works.
    await until(manager, "the allowed origin's page is unaffected", (s) => s.who !== "" && s.ready);
  });

  await browser.close();
  console.log("console: all steps passed");
} catch (err) {
  await fail(err);
}
