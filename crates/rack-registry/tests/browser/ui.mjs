// The /ui pages in a real browser: Debian's Chromium driven by playwright-core.
//
// Run by tests/ui_browser.rs, which starts the real server and passes:
//   RACK_UI_BASE     the server's base URL (http://127.0.0.1:port)
//   RACK_CHROMIUM    the Chromium executable (/usr/bin/chromium)
//   RACK_UI_MODE     "e2e" (walk the catalogue, sign in and out, CSP) or "screenshots"
//   RACK_UI_TOKEN    e2e: a token that opens the gated namespace @company
//   RACK_UI_OUT      screenshots: the directory the PNGs go to
// Exits non-zero (with the failed check on stderr) when anything is wrong.

import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const base = process.env.RACK_UI_BASE;
const executablePath = process.env.RACK_CHROMIUM || "/usr/bin/chromium";
const mode = process.env.RACK_UI_MODE || "e2e";
assert.ok(base, "RACK_UI_BASE is not set");

// A fresh profile every run, so no cookie or cache from an earlier run leaks in.
const userDataDir = mkdtempSync(join(tmpdir(), "rack-ui-chromium-"));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath,
  headless: true,
  chromiumSandbox: false,
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
  viewport: { width: 1024, height: 720 },
  // The machine is shared and slow: waits are generous, nothing asserts on time.
  timeout: 120_000,
});
context.setDefaultTimeout(60_000);
context.setDefaultNavigationTimeout(60_000);

try {
  const page = context.pages()[0] ?? (await context.newPage());
  if (mode === "screenshots") {
    await screenshots(page, process.env.RACK_UI_OUT);
  } else {
    await e2e(page, process.env.RACK_UI_TOKEN);
  }
} finally {
  await context.close();
  rmSync(userDataDir, { recursive: true, force: true });
}

async function e2e(page, token) {
  assert.ok(token, "RACK_UI_TOKEN is not set");
  // Any dialog (alert, confirm) means stored content ran as script.
  const dialogs = [];
  page.on("dialog", (d) => {
    dialogs.push(d.message());
    d.dismiss();
  });
  const console = [];
  page.on("console", (m) => console.push(`${m.type()}: ${m.text()}`));
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));

  // Home, then links down to a file.
  let res = await page.goto(`${base}/ui`);
  assert.equal(res.status(), 200);
  assert.match(await page.title(), /Catalogue/);
  assert.equal(await page.locator('a[href="/ui/@company"]').count(), 0, "gated namespace hidden");
  await page.click('a[href="/ui/@rack"]');
  await page.waitForURL(`${base}/ui/@rack`);
  assert.match(await page.locator("h1").innerText(), /@rack/);
  await page.click('a[href="/ui/@rack/quality/lint-staged"]');
  await page.waitForURL(`${base}/ui/@rack/quality/lint-staged`);
  assert.match(await page.locator("main").innerText(), /rk add @rack\/quality\/lint-staged/);
  await page.click('a[href="/ui/@rack/quality/lint-staged/1.0.0"]');
  await page.waitForURL(`${base}/ui/@rack/quality/lint-staged/1.0.0`);
  assert.match(await page.locator("main").innerText(), /rk add @rack\/quality\/lint-staged@1\.0\.0/);
  const file = "/ui/@rack/quality/lint-staged/1.0.0/files/templates/.husky/pre-commit";
  await page.click(`a[href="${file}"]`);
  await page.waitForURL(`${base}${file}`);
  assert.equal(await page.locator("td.n").first().innerText(), "1", "line numbers");
  assert.equal(
    await page.locator('a[href="/registries/@rack/quality/lint-staged/1.0.0/files/templates/.husky/pre-commit"]').count(),
    1,
    "raw API link",
  );
  // The stylesheet loaded under the CSP: the dark theme applies when the system asks for it.
  await page.emulateMedia({ colorScheme: "dark" });
  assert.equal(await bodyBackground(page), "rgb(15, 18, 22)", "dark theme");
  await page.emulateMedia({ colorScheme: "light" });
  assert.equal(await bodyBackground(page), "rgb(255, 255, 255)", "light theme");

  // Sign in with a token: the gated namespace appears; sign out: it is gone.
  await page.click('a[href="/ui/login"]');
  await page.waitForURL(`${base}/ui/login`);
  await page.fill("#token", token);
  await page.click('main button[type="submit"]');
  await page.waitForURL(`${base}/ui`);
  const cookies = await page.context().cookies(`${base}/ui`);
  const session = cookies.find((c) => c.name === "rack_ui");
  assert.ok(session, "session cookie set");
  assert.ok(session.httpOnly && session.sameSite === "Strict", JSON.stringify(session));
  assert.ok(!session.value.includes(token), "the cookie is not the token");
  assert.equal(await page.evaluate(() => document.cookie.includes("rack_ui")), false, "HttpOnly");
  await page.click('a[href="/ui/@company"]');
  await page.waitForURL(`${base}/ui/@company`);
  await page.click('a[href="/ui/@company/ui/button"]');
  await page.waitForURL(`${base}/ui/@company/ui/button`);
  assert.match(await page.locator("main").innerText(), /rk add @company\/ui\/button/);

  // Signed in, the viewer opens an HTML template of an anonymous namespace at its raw API URL
  // (the file view links to it). Its script would read a gated file through /ui with the
  // viewer's cookie and leak it (a title, a request). The file's sandbox CSP keeps it inert.
  const gated = "/ui/@company/ui/button/2.0.0/files/templates/button.js";
  // Control: with the viewer's cookie (the context's request client shares the browser's
  // cookies) the script's request reads the gated file, so what follows proves the sandbox,
  // not a broken payload.
  const control = await page.context().request.get(`${base}${gated}`);
  assert.equal(control.status(), 200, "the viewer's cookie opens the gated file");
  assert.match(await control.text(), /export function button/);
  const seen = [];
  const onRequest = (r) => seen.push(r.url());
  page.on("request", onRequest);
  const steal = "/registries/@anon/evil/1.0.0/files/steal.html";
  res = await page.goto(`${base}${steal}`);
  assert.equal(res.status(), 200);
  // `goto` returns after the load event, so an inline script would have set the title.
  assert.equal(await page.title(), "template", "the template's script ran");
  assert.equal(res.headers()["content-security-policy"], "default-src 'none'; sandbox");
  assert.equal(res.headers()["x-content-type-options"], "nosniff");
  page.off("request", onRequest);
  assert.deepEqual(
    seen.filter((u) => !u.endsWith(steal)),
    [],
    "the template made requests (it read or leaked the gated file)",
  );
  // The same for scripts in SVG and HTML templates opened raw: none of them runs.
  for (const path of ["/registries/@anon/evil/1.0.0/files/logo.svg", "/registries/@anon/evil/1.0.0/files/page.html"]) {
    res = await page.goto(`${base}${path}`);
    assert.equal(res.status(), 200, path);
    assert.equal(res.headers()["content-security-policy"], "default-src 'none'; sandbox", path);
    assert.equal(await page.evaluate(() => window.__pwned), undefined, `${path}: its script ran`);
  }
  await page.goto(`${base}/ui/@company/ui/button`);
  // A cross-site style GET of /ui/logout no longer signs out: it shows the button.
  res = await page.goto(`${base}/ui/logout`);
  assert.equal(res.status(), 200);
  assert.ok(
    (await page.context().cookies(`${base}/ui`)).some((c) => c.name === "rack_ui"),
    "GET /ui/logout signed the viewer out",
  );
  await page.click('header form.signout button[type="submit"]');
  await page.waitForURL(`${base}/ui`);
  assert.equal(await page.locator('a[href="/ui/@company"]').count(), 0, "signed out");
  assert.equal(await page.locator('a[href="/ui/login"]').count(), 1);
  assert.ok(!(await page.context().cookies(`${base}/ui`)).some((c) => c.name === "rack_ui"), "cookie cleared");
  res = await page.goto(`${base}/ui/@company`);
  assert.equal(res.status(), 401);
  assert.match(await page.locator("main").innerText(), /UNAUTHORIZED/);

  // Stored scripts are inert: a registry whose description, tags, file names and files carry
  // scripts (seeded by the Rust side) shows them as text, and nothing runs.
  for (const path of ["/ui/@anon/evil", "/ui/@anon", "/ui/@anon/evil/1.0.0/files/page.html", "/ui/@anon/evil/1.0.0/files/logo.svg"]) {
    res = await page.goto(`${base}${path}`);
    assert.equal(res.status(), 200, path);
    assert.equal(await page.evaluate(() => window.__pwned), undefined, `${path}: stored script ran`);
    assert.equal(await page.locator("main script, main img, main svg").count(), 0, path);
    if (path.endsWith("page.html")) {
      assert.match(await page.locator("main").innerText(), /<script>window\.__pwned = 4<\/script>/);
    }
  }

  // The CSP refuses an injected inline script and inline handler (as an XSS would add them),
  // and the browser reports the violation.
  res = await page.goto(`${base}/ui/@anon/evil`);
  const violations = await page.evaluate(async () => {
    // Resolves once both injections have been refused (no clock: a hang is the test's timeout).
    const seen = [];
    const both = new Promise((resolve) =>
      document.addEventListener("securitypolicyviolation", (e) => {
        seen.push(e.effectiveDirective);
        if (seen.length === 2) resolve();
      }),
    );
    const s = document.createElement("script");
    s.textContent = "window.__pwned = 'inline'";
    document.body.appendChild(s);
    const img = document.createElement("img");
    img.setAttribute("onerror", "window.__pwned = 'handler'");
    const failed = new Promise((r) => img.addEventListener("error", r));
    img.src = "/ui/no-such-image";
    document.body.appendChild(img);
    await failed;
    await both;
    return seen.sort();
  });
  assert.equal(await page.evaluate(() => window.__pwned), undefined, "an inline script ran");
  assert.deepEqual(violations, ["script-src-attr", "script-src-elem"]);
  assert.ok(
    console.some((l) => l.includes("Content Security Policy") && l.includes("script-src")),
    `no CSP violation in the console:\n${console.join("\n")}`,
  );
  assert.deepEqual(dialogs, [], "a dialog opened");
  assert.deepEqual(errors, [], "page errors");
  process.stdout.write(`browser e2e ok (${console.length} console lines)\n`);
}

async function bodyBackground(page) {
  return page.evaluate(() => getComputedStyle(document.body).backgroundColor);
}

async function screenshots(page, out) {
  assert.ok(out, "RACK_UI_OUT is not set");
  const shots = [
    ["home", "/ui"],
    ["registry", "/ui/@rack/quality/commitlint"],
    ["file", "/ui/@rack/quality/commitlint/1.0.0/files/templates/.commitlintrc"],
  ];
  for (const scheme of ["light", "dark"]) {
    await page.emulateMedia({ colorScheme: scheme });
    for (const [name, path] of shots) {
      const res = await page.goto(`${base}${path}`);
      assert.equal(res.status(), 200, path);
      const file = join(out, `${name}-${scheme}.png`);
      await page.screenshot({ path: file });
      process.stdout.write(`${file}\n`);
    }
  }
}
