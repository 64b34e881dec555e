// The dashboard the compose stack serves, as a person opens it: headless
// Chromium (Debian's, through playwright-core from dashboard/node_modules).
//   node dashboard-check.mjs URL TOKEN FLEET SHOT.png    prints TAP
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, "../../dashboard/package.json"));
const { chromium } = require("playwright-core");
const [url, token, fleet, shot] = process.argv.slice(2);

const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", headless: true, args: ["--no-sandbox"] });
const page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
const errors = [];
page.on("pageerror", (e) => errors.push(e.message));
let failed = 0;
try {
  await page.goto(`${url}/#token=${token}`);
  const end = Date.now() + 30000;
  let total = null;
  while (Date.now() < end) {
    total = await page.getByTestId("count-total").innerText().catch(() => null);
    if (total && Number(total.replace(/[^0-9]/g, "")) >= Number(fleet)) break;
    await page.waitForTimeout(250);
  }
  await page.screenshot({ path: shot });
  if (!total || Number(total.replace(/[^0-9]/g, "")) < Number(fleet)) throw new Error(`the overview counts ${total}, not ${fleet}`);
  if (errors.length) throw new Error(`page errors: ${errors.join("; ")}`);
  console.log(`ok - the dashboard loads and counts ${total} devices`);
} catch (e) {
  failed = 1;
  console.log(`not ok - the dashboard: ${e.message}`);
}
await browser.close();
process.exit(failed);
