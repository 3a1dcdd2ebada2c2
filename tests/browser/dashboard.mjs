// Drives the dashboard in headless Chromium (Debian's /usr/bin/chromium through playwright-core), one
// browser for both checks, each in a fresh context (its own sessionStorage):
//   node dashboard.mjs URL TOKEN SCREENSHOT
//   1. without a token: the login prompt shows, the dashboard stays hidden, the API answers 401, and a
//      wrong token is refused with a message naming the 401       -> "ok login ..."
//   2. logged in with TOKEN: prints "logged in at round N" (the test starts the clients then), waits
//      until the round counter passes N and the loss chart has two rounds of points (four), saves a
//      full-page screenshot to SCREENSHOT                            -> "ok round ..."
// A failed check prints "FAIL: ..." and the exit status is 1.
import { chromium } from 'playwright-core';

const [url, token, shot] = process.argv.slice(2);
const exe = process.env.LOOM_CHROMIUM || '/usr/bin/chromium';
const fail = (msg) => { console.log('FAIL: ' + msg); process.exitCode = 1; };

const browser = await chromium.launch({
  executablePath: exe,
  headless: true,
  args: ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync',
         '--no-first-run', '--disable-dev-shm-usage', '--disable-gpu'],
});

// the server's self-signed development certificate (loopback only) is accepted in this test
async function open() {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 }, ignoreHTTPSErrors: true });
  const page = await ctx.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(url, { waitUntil: 'load' });
  await page.waitForSelector('#login:not([hidden])', { timeout: 15000 });
  return { ctx, page, errors };
}

async function login() {
  const { ctx, page, errors } = await open();
  const dashHidden = await page.$eval('#dash', (e) => e.hidden);
  const api = await page.evaluate(async () => (await fetch('/v1/dash/status')).status);
  await page.fill('#token', 'not-a-valid-token-at-all-0000000');
  await page.click('#login-button');
  await page.waitForFunction(() => document.querySelector('#login-msg').textContent.includes('401'), null, { timeout: 15000 });
  const msg = await page.$eval('#login-msg', (e) => e.textContent);
  const stillHidden = await page.$eval('#dash', (e) => e.hidden);
  if (!dashHidden || !stillHidden) fail('the dashboard showed without a valid token');
  else if (api !== 401) fail(`the API answered ${api} without a token, not 401`);
  else if (errors.length) fail('page errors: ' + errors.join('; '));
  else console.log(`ok login prompt shown, API ${api} without a token, wrong token: "${msg}"`);
  await ctx.close();
}

async function live() {
  const { page, errors } = await open();
  try {
    await page.fill('#token', token);
    await page.click('#login-button');
    await page.waitForSelector('#dash:not([hidden])', { timeout: 20000 });
    const round = async () => Number(await page.$eval('#round', (e) => e.textContent));
    const first = await round();
    console.log(`logged in at round ${first}`);
    await page.waitForFunction((r0) => Number(document.querySelector('#round').textContent) > r0, first, { timeout: 90000 });
    const later = await round();
    await page.waitForFunction(() => document.querySelectorAll('#chart-loss svg circle.pt').length >= 4, null, { timeout: 90000 });
    const points = await page.$$eval('#chart-loss svg circle.pt', (e) => e.length);
    const clients = await page.$$eval('#clients tbody tr', (e) => e.length);
    const stored = await page.evaluate(() => sessionStorage.getItem('loom.dash.token') !== null);
    await page.screenshot({ path: shot, fullPage: true });
    if (!(later > first)) fail(`the round counter did not advance (${first} -> ${later})`);
    else if (points < 4) fail(`the loss chart has ${points} points`);
    else if (!stored) fail('the token is not kept in sessionStorage');
    else if (errors.length) fail('page errors: ' + errors.join('; '));
    else console.log(`ok round ${first} -> ${later}, ${points} loss points, ${clients} client rows, screenshot ${shot}`);
  } catch (e) {
    await page.screenshot({ path: shot, fullPage: true }).catch(() => {});
    throw e;
  }
}

try {
  await login();
  await live();
} catch (e) {
  fail(String(e && e.message ? e.message : e));
} finally {
  await browser.close();
}
