// The dashboard as a person sees it, in headless Chromium (Debian's, through
// playwright-core): run by tests/test_live.c against its running stack.
//   MH_URL, MH_TOKEN        fleet-stats serving the dashboard, and a token
//   MH_SIM_B_PID            motesim with the 100 "lb" devices (we stop it)
//   MH_SHOTS                where screenshots go (test artifacts)
// Prints TAP; exits non-zero when a step fails.
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, "../../dashboard/package.json"));
const { chromium } = require("playwright-core");

const url = process.env.MH_URL, token = process.env.MH_TOKEN, shots = process.env.MH_SHOTS;
const steps = [];
const step = (name, fn) => steps.push({ name, fn });
const text = (page, id) => page.getByTestId(id).innerText();
async function waitText(page, id, want, ms) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    last = await text(page, id).catch(() => null);
    if (last === want) return Date.now();
    await page.waitForTimeout(25);
  }
  throw new Error(`${id} shows ${JSON.stringify(last)}, not ${JSON.stringify(want)}, after ${ms} ms`);
}

const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", headless: true, args: ["--no-sandbox"] });
const page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
const errors = [];
page.on("pageerror", (e) => errors.push(e.message));

step("the overview shows the right counts", async () => {
  await page.goto(`${url}/#token=${token}`);
  await waitText(page, "count-total", "250", 10000);
  await waitText(page, "count-online", "250", 10000);
  await waitText(page, "count-offline", "0", 2000);
  const fw = await page.getByTestId("firmware-table").innerText();
  if (!/1\.0\.0\s+150/.test(fw) || !/2\.0\.0\s+100/.test(fw)) throw new Error(`firmware table: ${fw}`);
  if ((await page.locator(".map-cell").count()) < 1) throw new Error("no device on the map");
  await page.waitForTimeout(1500); // let the charts draw
  await page.screenshot({ path: `${shots}/overview.png`, fullPage: true });
});

step("taking 100 devices offline changes the counter within 2 s, without a reload", async () => {
  await page.evaluate(() => { window.__sameDocument = true; });
  const t0 = Date.now();
  process.kill(Number(process.env.MH_SIM_B_PID), "SIGINT");
  const seen = await waitText(page, "count-online", "150", 2000);
  await waitText(page, "count-offline", "100", 500);
  if (!(await page.evaluate(() => window.__sameDocument === true))) throw new Error("the page reloaded");
  console.log(`# online counter changed ${seen - t0} ms after the devices were told to go`);
  await page.screenshot({ path: `${shots}/overview-100-offline.png`, fullPage: true });
});

step("devices: search, filter and a device's twin edited with the version check", async () => {
  await page.getByRole("link", { name: "Devices" }).click();
  await page.getByLabel("search").fill("lb-");
  await page.getByLabel("status").selectOption("offline");
  await page.waitForFunction(() => document.querySelectorAll("[data-testid=devices-table] tbody tr").length === 100, null, { timeout: 5000 });
  await page.screenshot({ path: `${shots}/devices.png` });
  await page.getByLabel("search").fill("la-0007");
  await page.getByLabel("status").selectOption("");
  await page.getByRole("link", { name: "la-0007" }).click();
  await page.getByText(/^version \d+$/).waitFor({ timeout: 5000 }); // the twin is in
  await page.getByLabel("desired").fill('{"interval": 30, "led": "on"}');
  await page.getByRole("button", { name: "save" }).click();
  await page.getByText(/saved: version/).waitFor({ timeout: 5000 });
  await page.getByLabel("command name").fill("blink");
  await page.getByRole("button", { name: "send" }).click();
  await page.getByText(/command blink (sent|queued)/).waitFor({ timeout: 5000 });
  await page.getByText("tier: raw").waitFor({ timeout: 5000 });
  await page.waitForTimeout(1000);
  await page.screenshot({ path: `${shots}/device.png`, fullPage: true });
});

step("a rollout created from the page shows wave progress", async () => {
  await page.getByRole("link", { name: "Firmware & rollouts" }).click();
  const image = Buffer.alloc(64 * 1024, 7);
  await page.locator("input[type=file]").setInputFiles({ name: "b-2.0.bin", mimeType: "application/octet-stream", buffer: image });
  await page.locator("input[name=version]").fill("b-2.0");
  await page.locator("input[name=hardware]").fill("sim");
  await page.getByRole("button", { name: "Upload and sign" }).click();
  await page.getByText(/uploaded b-2.0/).waitFor({ timeout: 10000 });
  const form = page.getByTestId("rollout-form");
  await form.locator("select[name=firmware]").selectOption("b-2.0");
  await form.locator("input[name=waves]").fill("10, 100");
  await form.locator("input[name=from]").fill("1.0.0");
  await form.locator("input[name=soak]").fill("1");
  await form.locator("input[name=success]").fill("0.9");
  await form.getByRole("button", { name: "Create rollout" }).click();
  await page.getByText(/rollout \w+ created/).waitFor({ timeout: 10000 });
  // the waves fill in live, from the feed
  await page.waitForFunction(() => {
    const c = [...document.querySelectorAll("[data-testid=wave-count]")].map((e) => e.textContent);
    return c.length >= 2 && c[0] === "15/15" && Number(c[1].split("/")[0]) > 0;
  }, null, { timeout: 60000 });
  await page.screenshot({ path: `${shots}/rollout.png`, fullPage: true });
  await page.getByTestId("rollout-state").first().filter({ hasText: "completed" }).waitFor({ timeout: 60000 });
});

step("light theme", async () => {
  await page.getByRole("link", { name: "Overview" }).click();
  await page.getByLabel("theme").click();
  await page.waitForTimeout(800);
  await page.screenshot({ path: `${shots}/overview-light.png`, fullPage: true });
  if (errors.length) throw new Error(`page errors: ${errors.join("; ")}`);
});

console.log(`1..${steps.length}`);
let failed = 0;
for (const [i, s] of steps.entries()) {
  try {
    await s.fn();
    console.log(`ok ${i + 1} - ${s.name}`);
  } catch (e) {
    failed++;
    console.log(`not ok ${i + 1} - ${s.name}\n# ${String(e.message).split("\n").join("\n# ")}`);
    await page.screenshot({ path: `${shots}/failed-${i + 1}.png`, fullPage: true }).catch(() => {});
  }
}
await browser.close();
process.exit(failed ? 1 : 0);
