// Drives the gateway's function browser in headless Chromium, as a person
// would: load the page, pick math.add from the list, type arguments and a
// token, press Call, read the result; then a call that fails validation.
// Prints one JSON line with what the page showed; screenshots go to the
// paths given.
//
//   node ui.mjs BASE_URL TOKEN RESULT_PNG ERROR_PNG
//
// CHROMIUM overrides the browser (default /usr/bin/chromium, Debian's).

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { chromium } from "playwright-core";

const [base, token, resultPng, errorPng] = process.argv.slice(2);
if (!base || !token || !resultPng || !errorPng) {
  console.error("usage: node ui.mjs BASE_URL TOKEN RESULT_PNG ERROR_PNG");
  process.exit(2);
}

const profile = mkdtempSync(join(tmpdir(), "fnmesh-chromium-"));
// A fresh profile every run (--user-data-dir), as Playwright passes it.
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1100, height: 720 },
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const out = { console: [] };
try {
  const page = browser.pages()[0] ?? (await browser.newPage());
  page.on("console", (m) => out.console.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => out.console.push(`pageerror: ${e.message}`));
  await page.goto(`${base}/ui/`);

  // The catalog lists math.add: choose it.
  await page.getByRole("button", { name: "math.add" }).click();
  out.prefilled = JSON.parse(await page.getByTestId("args").inputValue());
  await page.getByTestId("args").fill('{"a": 40, "b": 2}');
  await page.getByTestId("token").fill(token);
  await page.getByTestId("call").click();
  await page.getByTestId("result").filter({ hasText: '"value"' }).waitFor({ timeout: 15000 });
  out.status = await page.getByTestId("status").textContent();
  out.result = JSON.parse(await page.getByTestId("result").textContent());
  out.functions = await page.getByTestId("functions").locator("li > button").allTextContents();
  await page.screenshot({ path: resultPng, fullPage: true });

  // A call the function's validation refuses: the page shows the code.
  await page.getByRole("button", { name: "math.div" }).click();
  await page.getByTestId("args").fill('{"a": 1, "b": 0}');
  await page.getByTestId("call").click();
  await page.getByTestId("error-code").filter({ hasText: "invalid_argument" }).waitFor({ timeout: 15000 });
  out.error = {
    status: await page.getByTestId("status").textContent(),
    code: await page.getByTestId("error-code").textContent(),
    message: await page.getByTestId("error-message").textContent(),
    fields: await page.getByTestId("error-fields").locator("li").allTextContents(),
  };
  await page.screenshot({ path: errorPng, fullPage: true });
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
process.stdout.write(JSON.stringify(out) + "\n");
