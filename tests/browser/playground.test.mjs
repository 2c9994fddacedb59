// The playground (GET /) and the Swagger UI (/docs) in a real browser:
// Debian's headless Chromium (/usr/bin/chromium) driven by playwright-core,
// which downloads no browser of its own. The gateway is the debug binary
// (`cargo build -p chatgate` first) with its bundled mock upstream, on a
// free loopback port, in a temporary directory, with a quota of 3 messages
// per session per minute so that the fourth message is refused.
//
// Run: npm ci --prefix tests/browser && node --test tests/browser/
// Screenshots: target/playground.png and target/docs.png.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const binary = process.env.CHATGATE_BIN || join(root, "target/debug/chatgate");
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
const QUOTA = 3;

const SECRET_KEY = "browser-test-secret-key-of-at-least-32-bytes";

let context;
let page;
let gateway; // the one in auth.mode = "none"
const gateways = [];
const requests = [];
const problems = [];

function freePort() {
  return new Promise((ok, fail) => {
    const server = net.createServer();
    server.once("error", fail);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => ok(port));
    });
  });
}

function run(args, dir, env) {
  return new Promise((ok, fail) => {
    const child = spawn(binary, args, { cwd: dir, env, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (err += d));
    child.once("error", fail);
    child.once("exit", (code) =>
      code === 0 ? ok(out) : fail(new Error("chatgate " + args.join(" ") + ": " + code + " " + err)),
    );
  });
}

// A gateway with its mock upstream on a free loopback port, in its own
// temporary directory; `extraEnv` chooses its access-control mode.
async function startGateway(extraEnv = {}) {
  const dir = mkdtempSync(join(tmpdir(), "chatgate-browser-"));
  const port = await freePort();
  const env = {
    ...process.env,
    CHATGATE_SERVER__BIND: "127.0.0.1:" + port,
    CHATGATE_RATE_LIMIT__MESSAGES_PER_MINUTE: String(QUOTA),
    CHATGATE_LOG__STDERR: "off",
    ...extraEnv,
  };
  const child = spawn(binary, ["--mock-upstream"], { cwd: dir, env, stdio: ["ignore", "pipe", "pipe"] });
  const gw = { base: "http://127.0.0.1:" + port, child, dir, env, log: "" };
  child.stdout.on("data", (d) => (gw.log += d));
  child.stderr.on("data", (d) => (gw.log += d));
  gateways.push(gw);
  const until = Date.now() + 15_000;
  for (;;) {
    try {
      if ((await fetch(gw.base + "/healthz")).ok) return gw;
    } catch (_) {
      // not listening yet
    }
    if (child.exitCode !== null) throw new Error("chatgate exited with " + child.exitCode + ":\n" + gw.log);
    if (Date.now() > until) throw new Error("chatgate did not answer /healthz:\n" + gw.log);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function watch(p) {
  p.on("pageerror", (e) => problems.push("page error: " + e.message));
  p.on("console", (m) => {
    // Refusals the tests provoke (429, 401) are expected; nothing else is.
    if (m.type() === "error" && !/status of (429|401) /.test(m.text())) {
      problems.push("console error on " + p.url() + ": " + m.text());
    }
  });
}

before(async () => {
  gateway = await startGateway();
  const profile = mkdtempSync(join(tmpdir(), "chatgate-chromium-"));
  gateways.push({ dir: profile });
  context = await chromium.launchPersistentContext(profile, {
    executablePath: chromiumPath,
    headless: true,
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
    viewport: { width: 1280, height: 900 },
  });
  context.on("request", (req) => requests.push(req.url()));
  page = context.pages()[0] || (await context.newPage());
  watch(page);
});

after(async () => {
  if (context) await context.close();
  for (const gw of gateways) {
    if (gw.child && gw.child.exitCode === null) {
      gw.child.kill("SIGTERM");
      await new Promise((r) => gw.child.once("exit", r));
    }
    rmSync(gw.dir, { recursive: true, force: true });
  }
});

// The text of the newest assistant reply.
const lastReply = () => page.locator("#transcript .msg.assistant .content").last();

async function send(text) {
  await page.fill("#message", text);
  await page.click("#send");
}

async function sendAndWaitForReply(text) {
  const before = await page.locator("#transcript .msg.assistant").count();
  await send(text);
  await page.waitForFunction(
    (n) => {
      const all = document.querySelectorAll("#transcript .msg.assistant .content");
      return all.length > n && all[all.length - 1].dataset.state === "done";
    },
    before,
  );
}

test("a session is created and a reply streams in, delta by delta", async (t) => {
  await page.goto(gateway.base + "/");
  await page.waitForSelector("body[data-ready=true]");
  assert.equal(await page.title(), "chatgate playground");

  await page.fill("#system-prompt", "You are a helpful test assistant.");
  await page.click("#new-session");
  await page.waitForSelector("#session-status[data-state=active]");
  const sessionId = await page.getAttribute("body", "data-session");
  assert.match(sessionId, /^[0-9a-f-]{36}$/);

  // Every text the reply shows, as the page changes it.
  await page.evaluate(() => {
    window.seen = [];
    new MutationObserver(() => {
      const all = document.querySelectorAll("#transcript .msg.assistant .content");
      const text = all.length ? all[all.length - 1].textContent : "";
      if (window.seen[window.seen.length - 1] !== text) window.seen.push(text);
    }).observe(document.getElementById("transcript"), {
      subtree: true,
      childList: true,
      characterData: true,
    });
  });

  const message = "Hello from a real browser, please stream this";
  await sendAndWaitForReply(message);
  const reply = lastReply();
  assert.equal(await reply.textContent(), "Echo: " + message);
  // The mock sends one chunk per word: the page rendered each as a delta.
  const deltas = Number(await reply.getAttribute("data-deltas"));
  assert.ok(deltas >= 2, "only " + deltas + " delta events rendered");
  assert.equal(deltas, ("Echo: " + message).split(" ").length);
  const seen = await page.evaluate(() => window.seen);
  assert.equal(seen[seen.length - 1], "Echo: " + message);
  // What was shown on the way only ever grew towards the final text (how
  // many steps were seen depends on how the network coalesced the frames).
  for (const text of seen) assert.ok(("Echo: " + message).startsWith(text), text);
  t.diagnostic("reply texts observed while streaming: " + seen.length);

  // The quota headers of the turn.
  const limits = page.locator("#limits");
  assert.equal(await limits.getAttribute("data-limit"), String(QUOTA));
  assert.equal(await limits.getAttribute("data-remaining"), String(QUOTA - 1));
  assert.match(await limits.textContent(), /X-RateLimit-Remaining: 2/);

  // The stored history: the message and its reply.
  await page.click("#show-history");
  await page.waitForSelector("#history-status[data-state=ok]");
  assert.equal(await page.getAttribute("#history", "data-count"), "2");
  const stored = await page.locator("#history .content").allTextContents();
  assert.deepEqual(stored, [message, "Echo: " + message]);
});

test("the fourth message in a minute is refused and the page explains the limit", async () => {
  await sendAndWaitForReply("second message");
  await sendAndWaitForReply("third message");
  assert.equal(await page.getAttribute("#limits", "data-remaining"), "0");

  await send("fourth message");
  const notice = page.locator("#notice[data-kind=rate-limit]");
  await notice.waitFor({ state: "visible" });
  const text = await notice.textContent();
  assert.match(text, /rate limit/i);
  assert.match(text, new RegExp(QUOTA + " messages per minute"));
  assert.match(text, /Try again in \d+ s \(at .+; Retry-After: \d+\)/);
  assert.ok(Number(await notice.getAttribute("data-retry-after")) >= 1);
  // The refused message got no reply bubble.
  assert.equal(await page.locator("#transcript .msg.assistant").count(), 3);
  assert.equal(await page.locator("#transcript .msg.user.refused").count(), 1);
});

test("feedback with a rating is confirmed", async () => {
  await page.check("input[name=rating][value='4']");
  await page.fill("#feedback-text", "Streaming looked great.");
  await page.click("#send-feedback");
  const status = page.locator("#feedback-status[data-state=ok]");
  await status.waitFor();
  const text = await status.textContent();
  assert.match(text, /Feedback received/);
  assert.match(text, /rating 4 of 5/);

  mkdirSync(join(root, "target"), { recursive: true });
  await page.screenshot({ path: join(root, "target/playground.png"), fullPage: true });
  assert.deepEqual(problems, [], "the playground reported errors");
});

test("/docs is Swagger UI, served by the gateway, and can call it", async () => {
  await page.goto(gateway.base + "/docs");
  await page.waitForSelector(".swagger-ui .opblock");
  assert.equal(await page.title(), "chatgate API docs");
  const chat = page.locator('.opblock-summary-path[data-path="/chat/"]');
  await chat.waitFor();
  assert.ok(await chat.isVisible());
  mkdirSync(join(root, "target"), { recursive: true });
  await page.screenshot({ path: join(root, "target/docs.png") });

  // The document's header parameter (X-Session-Id) is offered.
  await page.click('.opblock-summary-path[data-path="/v1/chat/completions"]');
  await page.locator(".parameters [data-param-name='X-Session-Id']").first().waitFor();

  // A bearer scheme in the document gives an "Authorize" button.
  const doc = await (await fetch(gateway.base + "/openapi.json")).json();
  const schemes = (doc.components && doc.components.securitySchemes) || {};
  if (Object.values(schemes).some((s) => s.type === "http" && s.scheme === "bearer")) {
    await page.locator(".swagger-ui .auth-wrapper .authorize").waitFor();
  }

  // "Try it out" reaches the gateway under the page's CSP.
  const init = page.locator(".opblock:has([data-path='/session/initialize_session'])").first();
  await init.locator(".opblock-summary").click();
  await init.locator("button.try-out__btn").click();
  await init.locator("button.execute").click();
  const status = init.locator(".live-responses-table tr.response .response-col_status").first();
  await status.waitFor();
  assert.equal((await status.textContent()).trim(), "200");
  assert.deepEqual(problems, [], "/docs reported errors (a CSP violation?)");
});

test("session_token mode: the page sends the session's token on every call", async () => {
  const gw = await startGateway({ CHATGATE_AUTH__MODE: "session_token", SECRET_KEY });
  const p = await context.newPage();
  watch(p);
  try {
    await p.goto(gw.base + "/");
    await p.waitForSelector("body[data-ready=true]");
    await p.click("#new-session");
    await p.waitForSelector("#session-status[data-state=active]");
    assert.match(await p.textContent("#session-status"), /session token/);
    const id = await p.getAttribute("body", "data-session");
    // Without the token the session is closed to anyone else.
    assert.equal((await fetch(gw.base + "/session/" + id)).status, 401);

    await p.fill("#message", "token please");
    await p.click("#send");
    await p.waitForSelector("#transcript .msg.assistant .content[data-state=done]");
    assert.equal(await p.textContent("#transcript .msg.assistant .content"), "Echo: token please");
    await p.click("#show-history");
    await p.waitForSelector("#history-status[data-state=ok]");
    assert.equal(await p.getAttribute("#history", "data-count"), "2");
    await p.fill("#feedback-text", "fine");
    await p.click("#send-feedback");
    await p.waitForSelector("#feedback-status[data-state=ok]");

    // Delete asks for a second press, then deletes.
    await p.click("#delete-session");
    assert.equal(await p.textContent("#delete-session"), "Press again to delete");
    await p.click("#delete-session");
    await p.waitForSelector("#session-status[data-state=deleted]");
    assert.ok(await p.isDisabled("#send"));
    assert.deepEqual(problems, []);
  } finally {
    await p.close();
  }
});

test("required mode: a missing credential is explained; a pasted API key works", async () => {
  const env = { CHATGATE_AUTH__MODE: "required", SECRET_KEY };
  const gw = await startGateway(env);
  // The CLI opens the gateway's database; it calls no upstream, but the
  // config must name one that needs no key.
  const cli = { ...gw.env, CHATGATE_OPENAI__BASE_URL: "http://127.0.0.1:9/v1" };
  const key = (await run(["keys", "create", "--name", "browser"], gw.dir, cli)).trim();
  assert.match(key, /^cgk_/);
  const p = await context.newPage();
  watch(p);
  try {
    await p.goto(gw.base + "/");
    await p.waitForSelector("body[data-ready=true]");
    await p.click("#new-session");
    const notice = p.locator("#notice");
    await notice.waitFor({ state: "visible" });
    assert.match(await notice.textContent(), /needs a credential.*Paste an API key or a JWT/);

    await p.fill("#credential", key);
    await p.click("#new-session");
    await p.waitForSelector("#session-status[data-state=active]");
    assert.ok(await notice.isHidden());
    await p.fill("#message", "with a key");
    await p.click("#send");
    await p.waitForSelector("#transcript .msg.assistant .content[data-state=done]");
    await p.click("#show-history");
    await p.waitForSelector("#history-status[data-state=ok]");
    assert.equal(await p.getAttribute("#history", "data-count"), "2");

    // The key lives in the page's memory only.
    const kept = await p.evaluate(
      () => JSON.stringify({ ...localStorage }) + JSON.stringify({ ...sessionStorage }) + document.cookie,
    );
    assert.ok(!kept.includes(key), "the key was stored by the page");
    assert.deepEqual(problems, []);
  } finally {
    await p.close();
  }
});

test("the browser asked nothing of any host but the gateway", () => {
  assert.ok(requests.length > 10, "requests were not observed");
  const elsewhere = requests.filter((u) => {
    const url = new URL(u);
    if (url.protocol === "data:" || url.protocol === "blob:") return false;
    return url.hostname !== "127.0.0.1";
  });
  assert.deepEqual(elsewhere, []);
});
